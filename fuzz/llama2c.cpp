// llama2.c checkpoints (.bin): the legacy and version-1 headers, the shared-classifier flag and
// every tensor span the config implies.
#include "flashback/formats/llama2c.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(llama2c) {
  const std::string path = fuzz::write_input({reinterpret_cast<const char*>(data), size}, "model.bin");
  fuzz::expect_clean([&] {
    const Llama2cFile f = read_llama2c(path);
    FUZZ_CHECK(f.dim > 0 && f.n_layers > 0 && f.n_heads > 0 && f.vocab_size > 0);
    for (const RawTensor& t : f.tensors) {
      FUZZ_CHECK(t.numel() >= 0 && t.nbytes == static_cast<size_t>(t.numel()) * dtype_size(t.dtype));
      const auto file = std::static_pointer_cast<const MappedFile>(t.owner);
      FUZZ_CHECK(fuzz::inside(t.data, t.nbytes, file->data(), file->size()));
      fuzz::touch(t.data, t.nbytes);
    }
  });
}
