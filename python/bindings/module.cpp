#include "bindings.hpp"

#include "flashback/kernels.hpp"
#include "flashback/runtime.hpp"

PYBIND11_MODULE(_C, m) {
  using namespace flashback::python;
  m.doc() = "flashback's C++ core (thin bindings; use the `flashback` package)";
  bind_errors(m);
  m.def("set_num_threads", &flashback::init_threads, py::arg("n") = 0,
        "intra-op threads (0 = FLASHBACK_THREADS or all cores)");
  m.def("cpu_has_avx2_fma", &flashback::kernels::cpu_has_avx2_fma,
        "whether the AVX2 decode kernels can run on this CPU");
  bind_options(m);
  bind_tokenizer(m);
  bind_model(m);
  bind_retrieval(m);
  bind_contexts(m);
  bind_io(m);
}
