// GGUF: header counts, typed metadata (nested arrays), tensor infos, alignment, spans; every
// tensor's bytes are read (a bounded prefix dequantized for the quantized types), the typed
// lookups the loaders use are asked, and the embedded tokenizer is built and run.
#include <algorithm>
#include <vector>

#include "flashback/formats/gguf.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/tokenizer.hpp"
#include "harness.hpp"
#include "tokenizer_checks.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(gguf) {
  const std::string path = fuzz::write_input({reinterpret_cast<const char*>(data), size}, "model.gguf");
  fuzz::expect_clean([&] {
    const GgufFile g = read_gguf(path);
    const auto file = std::static_pointer_cast<const MappedFile>(g.owner);
    for (const GgufTensorInfo& info : g.infos) {
      const uint8_t* p = g.tensor_data(info);
      FUZZ_CHECK(fuzz::inside(p, info.nbytes, file->data(), file->size()));
      fuzz::touch(p, info.nbytes);
      if (const GgmlType* t = find_ggml_type(info.ggml_type); t && ggml_type_dequantizable(info.ggml_type)) {
        const uint64_t blocks = std::min<uint64_t>(info.nbytes / t->bytes, 4);
        std::vector<float> out(blocks * t->block);
        fuzz::expect_clean([&] {
          dequantize(info.ggml_type, p, blocks * t->bytes, static_cast<int64_t>(out.size()), out.data(), info.name);
        });
      } else {
        fuzz::expect_clean([&] { fuzz::touch(g.tensor(info).data, g.tensor(info).nbytes); });
      }
    }
    for (const char* key : {"general.architecture", "llama.block_count", "llama.context_length",
                            "llama.embedding_length", "llama.attention.head_count", "general.alignment"}) {
      fuzz::expect_clean([&] { g.get_int(key); });
      fuzz::expect_clean([&] { g.get_int(key, 0); });
      fuzz::expect_clean([&] { g.get_float(key, 0.0); });
      fuzz::expect_clean([&] { g.get_string(key); });
    }
    fuzz::expect_clean([&] { fuzz::check_tokenizer(gguf_tokenizer(g), "Hello world, \xC3\xBC 1234\n"); });
  });
}
