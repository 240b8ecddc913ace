// safetensors: the 8-byte header length, the JSON header (dtypes, shapes, data_offsets,
// __metadata__) and the tensor spans; what parses must also write and read back the same.
#include "flashback/formats/mapped_file.hpp"
#include "flashback/formats/safetensors.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(safetensors) {
  const std::string path = fuzz::write_input({reinterpret_cast<const char*>(data), size}, "model.safetensors");
  fuzz::expect_clean([&] {
    const SafetensorsFile f = read_safetensors(path);
    for (const RawTensor& t : f.tensors) {
      FUZZ_CHECK(t.numel() >= 0);
      FUZZ_CHECK(t.nbytes == static_cast<size_t>(t.numel()) * dtype_size(t.dtype));
      const auto file = std::static_pointer_cast<const MappedFile>(t.owner);
      FUZZ_CHECK(fuzz::inside(t.data, t.nbytes, file->data(), file->size()));
      fuzz::touch(t.data, t.nbytes);
    }
    const std::string again = fuzz::scratch_dir() + "/again.safetensors";
    write_safetensors(again, f.tensors, f.metadata);
    const SafetensorsFile g = read_safetensors(again);
    FUZZ_CHECK(g.metadata == f.metadata && g.tensors.size() == f.tensors.size());
    for (size_t i = 0; i < f.tensors.size(); ++i) {
      const RawTensor &a = f.tensors[i], &b = g.tensors[i];
      FUZZ_CHECK(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes);
      FUZZ_CHECK(a.nbytes == 0 || std::equal(a.data, a.data + a.nbytes, b.data));
    }
  });
}
