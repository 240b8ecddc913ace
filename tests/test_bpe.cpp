// Byte-level BPE on vocabularies written out here: the byte alphabet, merges
// by rank (leftmost on ties), the vocabulary's special tokens, ignore_merges,
// BOS by default or not, tokenizer.json both ways, the GGUF form, and bad
// input. The comparison with HF tokenizers and llama.cpp on a real
// vocabulary (SmolLM2's) is tests/python/test_bpe_tokenizer.py.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/tokenizer.hpp"
#include "bpe_vocab.hpp"

using namespace flashback;
using namespace flashback::test;
using Ids = std::vector<int32_t>;
using Catch::Contains;

namespace {


int32_t id(const Tokenizer& t, const std::string& piece) {
  const int32_t i = t.piece_to_id(piece);
  REQUIRE(i >= 0);
  return i;
}

std::string temp_path(const std::string& name) {
  static int counter = 0;
  return (std::filesystem::temp_directory_path() /
          ("flashback_bpe_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + name))
      .string();
}

}  // namespace

TEST_CASE("byte-level BPE: bytes, merges by rank, leftmost on ties", "[bpe]") {
  // Merges, by rank: h+e, l+l, he+ll, hell+o, Ġ+w.
  Tokenizer t(byte_vocab({"he", "ll", "hell", "hello", kSpace + "w"},
                         {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {kSpace, "w"}}));
  CHECK(t.family() == TokenizerFamily::ByteLevelBpe);
  CHECK(t.encode("hello") == Ids{id(t, "hello")});
  CHECK(t.encode("hello world") == Ids{id(t, "hello"), id(t, kSpace + "w"), 'o', 'r', 'l', 'd'});
  // "lll": l+l applies to the leftmost pair first.
  CHECK(t.encode("lll") == Ids{id(t, "ll"), 'l'});
  // Bytes outside the printable alphabet, and every byte of a multi-byte character.
  CHECK(t.encode("a\nb") == Ids{'a', id(t, kNewline), 'b'});
  CHECK(t.encode("\xC3\xA9").size() == 2);
  CHECK(t.decode(t.encode("h\xC3\xA9llo wor\tld\n")) == "h\xC3\xA9llo wor\tld\n");
  CHECK(t.encode("").empty());
  CHECK_FALSE(t.adds_bos());
}

TEST_CASE("byte-level BPE: the vocabulary's special tokens are matched whole, added ones never", "[bpe]") {
  BpeModel b = byte_vocab({"<|s|>", "<|eos|>"}, {});
  b.types[256] = PieceType::Control;
  b.types[257] = PieceType::UserDefined;
  b.bos_id = 256;
  b.eos_id = 257;
  Tokenizer t(b);
  CHECK(t.encode("a<|s|>b") == Ids{'a', 256, 'b'});
  CHECK(t.encode("<|eos|><|s|>") == Ids{257, 256});
  CHECK(t.decode({'a', 256, 'b', 257}) == "ab<|eos|>");  // control vanishes, user-defined is text
  const int32_t mark = t.add_piece("<MARK_L>", PieceType::Control);
  CHECK(mark == 258);
  CHECK(t.encode("<MARK_L>").size() == 8);  // text never encodes to a mark
  CHECK(t.decode({mark}).empty());
  // BOS: only when the vocabulary says so.
  CHECK(t.encode_with_specials("a") == Ids{'a'});
  b.add_bos = true;
  CHECK(Tokenizer(b).encode_with_specials("a") == Ids{256, 'a'});
}

TEST_CASE("byte-level BPE: SmolLM's pre-tokenizer splits digits; ignore_merges takes whole tokens", "[bpe]") {
  BpeModel b = byte_vocab({"12", "123"}, {{"1", "2"}, {"12", "3"}});
  CHECK(Tokenizer(b).encode("123") == Ids{id(Tokenizer(b), "123")});
  b.pre = "smollm";  // every digit alone
  CHECK(Tokenizer(b).encode("123") == Ids{'1', '2', '3'});
  // A token no merge sequence reaches is used whole only with ignore_merges (Llama-3).
  BpeModel w = byte_vocab({"ab", "abc"}, {{"a", "b"}}, "llama3");
  CHECK(Tokenizer(w).encode("abc") == Ids{id(Tokenizer(w), "ab"), 'c'});
  w.ignore_merges = true;
  CHECK(Tokenizer(w).encode("abc") == Ids{id(Tokenizer(w), "abc")});
}

TEST_CASE("byte-level BPE: tokenizer.json both ways", "[bpe][json]") {
  BpeModel b = byte_vocab({"<|eot|>", "he", "hel"}, {{"h", "e"}, {"he", "l"}}, "smollm");
  b.types[256] = PieceType::Control;
  b.eos_id = 256;
  const std::string json = write_tokenizer_json(b);
  const std::string path = temp_path("tokenizer.json");
  std::ofstream(path) << json;
  Tokenizer back = Tokenizer::from_file(path);
  std::filesystem::remove(path);
  CHECK(back.family() == TokenizerFamily::ByteLevelBpe);
  CHECK(back.bpe_model().tokens == b.tokens);
  CHECK(back.bpe_model().merges == b.merges);
  CHECK(back.bpe_model().pre == "smollm");
  CHECK(back.piece_type(256) == PieceType::Control);
  const Tokenizer orig(b);
  for (const char* s : {"hello 12 <|eot|>x", "", "he he hel"}) CHECK(back.encode(s) == orig.encode(s));
}

TEST_CASE("byte-level BPE: bad vocabularies name the file and the problem", "[bpe][bad]") {
  BpeModel b = byte_vocab({}, {{"a", "zz"}});
  CHECK_THROWS_WITH(Tokenizer(b, "v.gguf"), Contains("v.gguf: merge 0 ('a zz') names a token the vocabulary lacks: 'zz'"));
  b = byte_vocab({}, {});
  b.pre = "qwen9";
  CHECK_THROWS_WITH(Tokenizer(b, "v.gguf"), Contains("v.gguf: pre-tokenizer 'qwen9' is not supported (known: gpt2"));
  b = byte_vocab({}, {});
  b.bos_id = 999;
  CHECK_THROWS_WITH(Tokenizer(b, "v"), Contains("the BOS id 999 is outside the vocabulary"));
  b = byte_vocab({}, {});
  b.types.pop_back();
  CHECK_THROWS_WITH(Tokenizer(b, "v"), Contains("255 token types for 256 tokens"));

  auto json_error = [](const std::string& text) {
    try {
      parse_tokenizer_json(text, "t.json");
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(json_error("{"), Contains("t.json: not valid JSON"));
  CHECK_THAT(json_error(R"({"model": {"type": "WordPiece"}})"), Contains("model type 'WordPiece' is not supported"));
  CHECK_THAT(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                            "pre_tokenizer": {"type": "Metaspace"}})"),
             Contains("pre_tokenizer {\"type\":\"Metaspace\"} is not supported"));
  CHECK_THAT(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []},
                            "pre_tokenizer": {"type": "ByteLevel"}})"),
             Contains("token id 1 is missing"));
  CHECK_THAT(json_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]},
                            "pre_tokenizer": {"type": "ByteLevel"}})"),
             Contains("merge 'a' is not two tokens"));
}

namespace {
// A GGUF file with only metadata: string arrays and strings.
struct GgufWriter {
  std::string out;
  uint64_t n_kv = 0;
  template <class T>
  void put(T v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    out += s;
  }
  void kv_string(const std::string& k, const std::string& v) {
    str(k);
    put<uint32_t>(8);
    str(v);
    ++n_kv;
  }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    str(k);
    put<uint32_t>(9);
    put<uint32_t>(8);
    put<uint64_t>(v.size());
    for (const auto& s : v) str(s);
    ++n_kv;
  }
  std::string file() const {
    std::string f = "GGUF";
    uint32_t version = 3;
    uint64_t tensors = 0;
    f.append(reinterpret_cast<const char*>(&version), 4);
    f.append(reinterpret_cast<const char*>(&tensors), 8);
    f.append(reinterpret_cast<const char*>(&n_kv), 8);
    return f + out;
  }
};
}  // namespace

TEST_CASE("byte-level BPE from GGUF metadata, and its bad forms", "[bpe][gguf][bad]") {
  const BpeModel b = byte_vocab({"he"}, {{"h", "e"}});
  auto gguf = [&](bool merges, const std::string& pre) {
    GgufWriter w;
    w.kv_string("tokenizer.ggml.model", "gpt2");
    w.kv_strings("tokenizer.ggml.tokens", b.tokens);
    if (merges) w.kv_strings("tokenizer.ggml.merges", {"h e"});
    if (!pre.empty()) w.kv_string("tokenizer.ggml.pre", pre);
    const std::string path = temp_path("v.gguf");
    std::ofstream(path, std::ios::binary) << w.file();
    return path;
  };
  const std::string good = gguf(true, "gpt2");
  Tokenizer t = gguf_tokenizer(read_gguf(good));
  CHECK(t.encode("hehe") == Ids{256, 256});
  // --tokenizer FILE.gguf: from_file finds the tokenizer inside by the magic
  CHECK(Tokenizer::from_file(good).encode("hehe") == Ids{256, 256});
  const std::string no_merges = gguf(false, "gpt2"), bad_pre = gguf(true, "tekken99");
  CHECK_THROWS_WITH(gguf_tokenizer(read_gguf(no_merges)), Contains(no_merges + ": a gpt2 (byte-level BPE) vocabulary without tokenizer.ggml.merges"));
  CHECK_THROWS_WITH(gguf_tokenizer(read_gguf(bad_pre)), Contains(bad_pre + ": pre-tokenizer 'tekken99' is not supported"));
  CHECK_THROWS_WITH(Tokenizer::from_file(no_merges), Contains(no_merges + ": a gpt2 (byte-level BPE) vocabulary without"));
  for (const auto& p : {good, no_merges, bad_pre}) std::filesystem::remove(p);
}
