// The file-format parsers on valid, truncated, lying and random input
// (LibTorch-free: these run fast and under the sanitizers).
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "flashback/error.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/formats/llama2c.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/io/atomic_file.hpp"
#include "shared_path.hpp"

using namespace flashback;
using flashback::test::shared;
using Catch::Contains;

namespace {

std::string tmp_path(const std::string& name) {
  static const std::string dir = [] {
    std::string t = "/tmp/flashback-formats-XXXXXX";
    return std::string(::mkdtemp(t.data()));
  }();
  return dir + "/" + name;
}

// A safetensors file from a header string and a data size.
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\x01');
}

std::string write(const std::string& name, const std::string& bytes) {
  std::string p = tmp_path(name);
  write_file_atomic(p, bytes);
  return p;
}

}  // namespace

TEST_CASE("safetensors: a valid file round-trips through the writer", "[safetensors]") {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {7, 8};
  RawTensor ta{"a", DType::F32, {2, 3}, reinterpret_cast<const uint8_t*>(a.data()), 24, nullptr};
  RawTensor tb{"b.weight", DType::BF16, {2}, reinterpret_cast<const uint8_t*>(b.data()), 4, nullptr};
  const std::string p = tmp_path("ok.safetensors");
  write_safetensors(p, {ta, tb}, {{"format", "pt"}});
  SafetensorsFile f = read_safetensors(p);
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.metadata.at("format") == "pt");
  CHECK(f.tensors[0].name == "a");
  CHECK(f.tensors[0].shape == std::vector<int64_t>{2, 3});
  CHECK(std::memcmp(f.tensors[0].data, a.data(), 24) == 0);
  CHECK(f.tensors[1].dtype == DType::BF16);
  CHECK(std::memcmp(f.tensors[1].data, b.data(), 4) == 0);
  CHECK(reinterpret_cast<uintptr_t>(f.tensors[0].data) % 8 == 0);  // header padded to 8 bytes
  // The writer refuses a byte count that disagrees with the shape.
  RawTensor wrong{"w", DType::F32, {3}, reinterpret_cast<const uint8_t*>(a.data()), 8, nullptr};
  CHECK_THROWS_AS(write_safetensors(tmp_path("w.safetensors"), {wrong}), InvalidArgument);
}

TEST_CASE("safetensors: every header lie is caught", "[safetensors][bad]") {
  auto err = [](const std::string& header, size_t data) {
    const std::string p = write("bad.safetensors", safetensors_bytes(header, data));
    try {
      read_safetensors(p);
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).rfind(p, 0) == 0);  // the message starts with the path
      return std::string(e.what());
    }
    FAIL("no error for header " << header);
    return std::string();
  };
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), Contains("past the end"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), Contains("needs 12 bytes"));
  CHECK_THAT(err(R"({"a":{"dtype":"F9","shape":[2],"data_offsets":[0,8]}})", 8), Contains("unknown dtype 'F9'"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), Contains("non-negative"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), Contains("begin > end"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
             Contains("overlap"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
             Contains("overflows"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2]}})", 8), Contains("data_offsets"));
  CHECK_THAT(err(R"({"a":[1,2]})", 8), Contains("not an object"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8), Contains("not valid JSON"));
  CHECK_THAT(err(R"([1,2,3])", 8), Contains("not a JSON object"));
  CHECK_THAT(err(R"({"__metadata__":{"k":1}})", 0), Contains("__metadata__"));

  // Header length beyond the file and beyond the cap.
  std::string huge(8, '\0');
  uint64_t n = 200ull * 1000 * 1000;
  std::memcpy(huge.data(), &n, 8);
  CHECK_THROWS_WITH(read_safetensors(write("huge.safetensors", huge + "{}")), Contains("100 MB cap"));
  n = 1000;
  std::memcpy(huge.data(), &n, 8);
  CHECK_THROWS_WITH(read_safetensors(write("past.safetensors", huge + "{}")), Contains("runs past the end"));
  CHECK_THROWS_WITH(read_safetensors(write("tiny.safetensors", "abc")), Contains("too small"));
  CHECK_THROWS_WITH(read_safetensors(tmp_path("absent.safetensors")), Contains("cannot open"));
}

TEST_CASE("safetensors: the HF fixture parses, and random damage never crashes", "[safetensors][fuzz]") {
  const std::string good = read_file(shared("models/hf-fixtures/tiny-llama-gqa/model.safetensors"));
  SafetensorsFile f = read_safetensors(shared("models/hf-fixtures/tiny-llama-gqa/model.safetensors"));
  CHECK(f.tensors.size() == 30);
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    const size_t header_end = 8 + 3072;
    for (int k = 0; k < 3; ++k) bad[rng() % header_end] = static_cast<char>(rng());
    if (i % 3 == 0) bad.resize(rng() % bad.size());
    const std::string p = write("fuzz.safetensors", bad);
    try {
      SafetensorsFile g = read_safetensors(p);
      // Whatever parses must point inside the mapping.
      for (const auto& t : g.tensors) {
        auto file = std::static_pointer_cast<const MappedFile>(t.owner);
        CHECK(t.data >= file->data());
        CHECK(t.data + t.nbytes <= file->data() + file->size());
      }
    } catch (const FormatError&) {
    }
  }
}

TEST_CASE("GGUF: stories260K parses with its metadata", "[gguf]") {
  GgufFile g = read_gguf(shared("models/stories260K/stories260K.gguf"));
  CHECK(g.version == 3);
  CHECK(g.infos.size() == 48);
  CHECK(g.get_string("general.architecture") == "llama");
  CHECK(g.get_int("llama.embedding_length") == 64);
  CHECK(g.get_int("llama.attention.head_count_kv") == 4);
  CHECK(g.find("tokenizer.ggml.tokens")->items.size() == 512);
  CHECK(g.infos[0].name == "token_embd.weight");
  CHECK(g.infos[0].shape == std::vector<int64_t>{512, 64});  // dims reversed to row-major
  CHECK_THROWS_WITH(g.get_int("llama.nope"), Contains("missing metadata key 'llama.nope'"));
  CHECK_THROWS_WITH(g.get_int("general.architecture"), Contains("is not an integer"));
}

TEST_CASE("GGUF: truncation, lies and damage are errors", "[gguf][bad]") {
  const std::string good = read_file(shared("models/stories260K/stories260K.gguf"));
  // Every prefix up to well past the header: an error naming the file.
  for (size_t cut = 0; cut < 20000; cut += 97) {
    const std::string p = write("cut.gguf", good.substr(0, cut));
    CHECK_THROWS_AS(read_gguf(p), FormatError);
  }
  CHECK_THROWS_WITH(read_gguf(write("end.gguf", good.substr(0, good.size() - 1))), Contains("runs past the end"));

  std::string v = good;
  uint32_t version = 7;
  std::memcpy(v.data() + 4, &version, 4);
  CHECK_THROWS_WITH(read_gguf(write("v.gguf", v)), Contains("version 7 is not supported"));

  std::string counts = good;
  uint64_t many = uint64_t(1) << 60;
  std::memcpy(counts.data() + 8, &many, 8);
  CHECK_THROWS_WITH(read_gguf(write("counts.gguf", counts)), Contains("cannot fit in the file"));

  std::string magic = good;
  magic[0] = 'X';
  CHECK_THROWS_WITH(read_gguf(write("magic.gguf", magic)), Contains("bad magic"));

  // Retyping a tensor: name, n_dims (u32), 2 dims (u64 each), then the type.
  // 512 x 64 quantized needs fewer bytes than F32, so the span stays inside the file.
  auto retyped = [&](uint32_t type) {
    std::string q = good;
    const std::string name = "token_embd.weight";
    size_t at = q.find(name);
    REQUIRE(at != std::string::npos);
    std::memcpy(q.data() + at + name.size() + 4 + 16, &type, 4);
    return read_gguf(write("q.gguf", q));
  };
  // Q8_0 is read through dequantize(), not as raw fp data.
  GgufFile g = retyped(8);
  CHECK(ggml_type_name(g.infos[0].ggml_type) == "Q8_0");
  CHECK(g.infos[0].nbytes == 512 * 64 / 32 * 34);
  CHECK_THROWS_WITH(g.tensor(g.infos[0]), Contains("type Q8_0, quantized: read it with dequantize()"));
  std::vector<float> out(512 * 64);
  CHECK_NOTHROW(dequantize(8, g.tensor_data(g.infos[0]), g.infos[0].nbytes, 512 * 64, out.data(), "t"));
  CHECK_THROWS_WITH(dequantize(8, g.tensor_data(g.infos[0]), g.infos[0].nbytes - 1, 512 * 64, out.data(), "t"),
                    Contains("t: 34815 bytes for 1024 Q8_0 blocks of 34 bytes"));
  CHECK_THROWS_WITH(dequantize(8, g.tensor_data(g.infos[0]), 34, 31, out.data(), "t"),
                    Contains("31 values are not whole Q8_0 blocks of 32"));
  // Q8_1 (activations only) and Q8_K parse but are refused by name.
  GgufFile q81 = retyped(9);
  CHECK_THROWS_WITH(q81.tensor(q81.infos[0]), Contains("type Q8_1; supported: F32, F16, BF16, Q4_0"));
  CHECK_THROWS_WITH(dequantize(9, q81.tensor_data(q81.infos[0]), q81.infos[0].nbytes, 512 * 64, out.data(), "t"),
                    Contains("t: ggml type Q8_1 cannot be dequantized"));
  // An unknown type id, and a row that is not whole blocks (64 values of Q4_K's 256).
  CHECK_THROWS_WITH(retyped(77), Contains("tensor 'token_embd.weight': unknown ggml type 77"));
  CHECK_THROWS_WITH(retyped(12), Contains("row length 64 is not a multiple of the Q4_K block size 256"));

  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    for (int k = 0; k < 4; ++k) bad[rng() % 12000] = static_cast<char>(rng());
    const std::string p = write("fuzz.gguf", bad);
    try {
      GgufFile f = read_gguf(p);
      for (const auto& t : f.infos) CHECK(t.offset + t.nbytes <= bad.size());
    } catch (const FormatError&) {
    }
  }
}

TEST_CASE("llama2.c: stories260K parses, and lies are errors", "[llama2c][bad]") {
  Llama2cFile f = read_llama2c(shared("models/stories260K/stories260K.bin"));
  CHECK(f.version == 0);
  CHECK(f.dim == 64);
  CHECK(f.n_kv_heads == 4);
  CHECK(f.shared_classifier);
  CHECK(f.tensors.size() == 1 + 9 * 5 + 1);
  const std::string good = read_file(shared("models/stories260K/stories260K.bin"));
  for (size_t cut : {0, 3, 27, 28, 1000}) {
    CHECK_THROWS_AS(read_llama2c(write("cut.bin", good.substr(0, cut))), FormatError);
  }
  CHECK_THROWS_WITH(read_llama2c(write("extra.bin", good + "xxxx")), Contains("trailing bytes"));
  std::string neg = good;
  int32_t minus = -64;
  std::memcpy(neg.data(), &minus, 4);
  CHECK_THROWS_WITH(read_llama2c(write("neg.bin", neg)), Contains("every field must be in 1..2^20"));
  // v1 header with version 2 (int8) is refused clearly.
  std::string v2(256, '\0');
  uint32_t magic = 0x616b3432;
  int32_t two = 2;
  std::memcpy(v2.data(), &magic, 4);
  std::memcpy(v2.data() + 4, &two, 4);
  CHECK_THROWS_WITH(read_llama2c(write("v2.bin", v2)), Contains("version 2 is not supported"));
}
