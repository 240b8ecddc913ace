# ctest cli_without_retrieval: the CLI of a build without retrieval runs the paper's runtime test on a tiny
# random model and offers none of the commands that need an index.
execute_process(COMMAND ${CLI} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "flashback --help failed (${rc})")
endif()
foreach(cmd index retrieve ralm eval)
  if(help MATCHES "\n  ${cmd} ")
    message(FATAL_ERROR "a build without retrieval lists '${cmd}':\n${help}")
  endif()
endforeach()
if(NOT help MATCHES "\n  bench ")
  message(FATAL_ERROR "bench is missing:\n${help}")
endif()
execute_process(COMMAND ${CLI} bench ralm --config hidden=64,layers=2,heads=4,kv_heads=2,ffn=128,vocab=300
                        --init 32 --total 192 --json
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT out MATCHES "\"speedup_append_over_prepend\"")
  message(FATAL_ERROR "bench ralm failed (${rc}): ${err}${out}")
endif()
