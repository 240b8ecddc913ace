// ggml dequantization of every quantized type on arbitrary blocks: the first byte picks the
// type, the second whether the sizes agree; the rest are the blocks.
#include <vector>

#include "flashback/formats/ggml_types.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(dequantize) {
  static const std::vector<uint32_t> types = [] {
    std::vector<uint32_t> t;
    for (uint32_t id = 0; id < 64; ++id)
      if (ggml_type_dequantizable(id)) t.push_back(id);
    return t;
  }();
  FUZZ_CHECK(types.size() >= 10);  // Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K..Q6_K
  if (size < 2) return;
  const uint32_t type = types[data[0] % types.size()];
  const bool agree = data[1] & 1;
  const GgmlType* t = find_ggml_type(type);
  FUZZ_CHECK(t != nullptr && t->block > 0 && t->bytes > 0);
  const uint8_t* blocks = data + 2;
  const size_t nbytes = size - 2;
  const int64_t extra = agree ? 0 : (data[1] >> 1);  // values past the blocks given
  const int64_t n = static_cast<int64_t>((nbytes / t->bytes) * t->block) + extra;
  std::vector<float> out(static_cast<size_t>(n));
  const bool ok = fuzz::expect_clean([&] { dequantize(type, blocks, nbytes, n, out.data(), "blocks"); });
  // Whole blocks for exactly n values always dequantize; anything else is refused.
  FUZZ_CHECK(ok == (nbytes % t->bytes == 0 && extra == 0));
}
