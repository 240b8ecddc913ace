// Tokenizer tests on the shipped vocabularies (../shared): parsing, known
// encodings, decode, the two file formats agreeing, serialization, streaming
// decode, validation, and hostile input. The exhaustive comparison against
// the real sentencepiece is tests/python/test_tokenizer_sentencepiece.py.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashback/error.hpp"
#include "flashback/tokenizer.hpp"
#include "shared_path.hpp"

using namespace flashback;
using Ids = std::vector<int32_t>;

namespace {

const std::string kTok512Model = "models/stories260K/tok512.model";
const std::string kTok512Bin = "models/stories260K/tok512.bin";
const std::string kLlamaModel = "models/llama2-tokenizer/tokenizer.model";
const std::string kLlamaBin = "models/llama2-tokenizer/tokenizer.bin";

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Tokenizers are loaded once per process: the Llama vocabulary takes a moment.
const Tokenizer& shared_tokenizer(const std::string& rel) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(rel);
  if (it == cache.end()) it = cache.emplace(rel, Tokenizer::from_file(test::shared(rel))).first;
  return it->second;
}

// A scratch file removed at scope exit.
struct TempFile {
  explicit TempFile(const std::string& contents) {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            ("flashback_tok_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
               .string();
    std::ofstream(path, std::ios::binary) << contents;
  }
  ~TempFile() { std::filesystem::remove(path); }
  std::string path;
};

// Loads bytes the way from_file would, for the hostile-input tests: the only
// acceptable outcomes are a valid tokenizer or a FormatError.
enum class Outcome { Loaded, FormatErrorThrown };
template <typename Parse>
Outcome try_load(Parse parse, std::string_view bytes) {
  try {
    Tokenizer tok(parse(bytes, "<test>"), "<test>");
    (void)tok.encode("Once upon a time");
    return Outcome::Loaded;
  } catch (const FormatError&) {
    return Outcome::FormatErrorThrown;
  }
}

SentencePieceModel parse_proto(std::string_view b, const std::string& p) { return parse_sentencepiece_model(b, p); }
SentencePieceModel parse_bin(std::string_view b, const std::string& p) { return parse_llama2c_tokenizer(b, p); }

std::string byte_piece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// A tiny BPE vocabulary for behaviour the shipped ones cannot show.
SentencePieceModel tiny_model(bool byte_fallback) {
  SentencePieceModel m;
  m.pieces = {{"<unk>", 0, PieceType::Unknown}, {"<s>", 0, PieceType::Control}, {"</s>", 0, PieceType::Control}};
  if (byte_fallback) {
    for (int b = 0; b < 256; ++b) m.pieces.push_back({byte_piece(b), 0, PieceType::Byte});
  }
  const char* normal[] = {"\xE2\x96\x81", "a", "b", "c", "ab", "bc", "\xE2\x96\x81" "a"};
  float score = -1;
  for (const char* p : normal) m.pieces.push_back({p, score--, PieceType::Normal});
  m.byte_fallback = byte_fallback;
  return m;
}

}  // namespace

TEST_CASE("tok512.model parses with the expected vocabulary and flags", "[tokenizer]") {
  const Tokenizer& tok = shared_tokenizer(kTok512Model);
  const auto& m = tok.model();
  CHECK(tok.vocab_size() == 512);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.pad_id() == -1);
  CHECK(m.model_type == 2);
  CHECK(m.byte_fallback);
  CHECK(m.normalizer_name == "identity");
  CHECK(m.precompiled_charsmap.empty());
  CHECK(m.add_dummy_prefix);
  CHECK(m.remove_extra_whitespaces);
  CHECK(m.escape_whitespaces);
  CHECK(tok.id_to_piece(0) == "<unk>");
  CHECK(tok.piece_type(0) == PieceType::Unknown);
  CHECK(tok.id_to_piece(1) == "<s>");
  CHECK(tok.piece_type(1) == PieceType::Control);
  CHECK(tok.id_to_piece(2) == "</s>");
  CHECK(tok.piece_type(2) == PieceType::Control);
  CHECK(tok.id_to_piece(3) == "<0x00>");
  CHECK(tok.id_to_piece(258) == "<0xFF>");
  CHECK(tok.piece_type(100) == PieceType::Byte);
  CHECK(tok.id_to_piece(259) == "\xE2\x96\x81t");  // "▁t"
  CHECK(tok.piece_type(259) == PieceType::Normal);
  CHECK(tok.piece_to_id("\xE2\x96\x81the") == 265);
  CHECK(tok.piece_to_id("no such piece") == -1);
}

TEST_CASE("Llama-2 tokenizer.model parses with the expected vocabulary and flags", "[tokenizer]") {
  const Tokenizer& tok = shared_tokenizer(kLlamaModel);
  const auto& m = tok.model();
  CHECK(tok.vocab_size() == 32000);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.pad_id() == -1);
  CHECK(m.byte_fallback);
  CHECK(m.add_dummy_prefix);
  CHECK_FALSE(m.remove_extra_whitespaces);
  CHECK(m.escape_whitespaces);
  CHECK(m.precompiled_charsmap.empty());
  CHECK(tok.id_to_piece(29871) == "\xE2\x96\x81");
  CHECK(tok.piece_to_id("<0x0A>") == 13);
  CHECK(tok.piece_type(13) == PieceType::Byte);
  size_t counts[7] = {};
  for (const auto& p : m.pieces) ++counts[static_cast<int>(p.type)];
  CHECK(counts[static_cast<int>(PieceType::Normal)] == 31741);
  CHECK(counts[static_cast<int>(PieceType::Byte)] == 256);
  CHECK(counts[static_cast<int>(PieceType::Control)] == 2);
  CHECK(counts[static_cast<int>(PieceType::Unknown)] == 1);
}

TEST_CASE("known encodings from golden.json", "[tokenizer]") {
  const auto golden = nlohmann::json::parse(read_bytes(test::shared("models/stories260K/golden.json")));
  const Tokenizer& tok512 = shared_tokenizer(kTok512Model);
  CHECK(tok512.encode("Once upon a time") == Ids{403, 407, 261, 378});
  CHECK(tok512.encode("Once upon a time", true) == golden["prompt_once_upon_a_time_ids"].get<Ids>());
  CHECK(tok512.encode("  hi   there  ") == Ids{270, 417, 383});  // whitespace cleanup is on

  // The greedy generation decodes to the recorded text and re-encodes to it.
  const auto greedy = golden["greedy_from_bos_64_steps_ids_incl_bos"].get<Ids>();
  const auto text = golden["greedy_text"].get<std::string>();
  CHECK(tok512.decode(greedy) == text);
  CHECK(tok512.encode(text, true) == greedy);

  const Tokenizer& llama = shared_tokenizer(kLlamaModel);
  const auto& examples = golden["llama2_tokenizer_model_examples"];
  REQUIRE(examples.size() >= 3);
  for (const auto& [input, ids] : examples.items()) {
    INFO(input);
    CHECK(llama.encode(input) == ids.get<Ids>());
  }
  CHECK(llama.encode("Hello world", true, true) == Ids{1, 15043, 3186, 2});
  CHECK(llama.encode("").empty());
  CHECK(llama.encode(" ") == Ids{259});
  CHECK(llama.encode("  hi   there  ") == Ids{259, 7251, 259, 727, 259});
  // Characters outside the vocabulary fall back to UTF-8 byte pieces.
  CHECK(tok512.encode("\xE6\x97\xA5") == Ids{410, 3 + 0xE6, 3 + 0x97, 3 + 0xA5});  // "日"
  // Malformed UTF-8 becomes U+FFFD (a byte-fallback sequence in tok512).
  CHECK(tok512.encode("\xFF") == tok512.encode("\xEF\xBF\xBD"));
  CHECK(llama.encode("a\xFF" "b") == Ids{263, 30140, 29890});
}

TEST_CASE("decode inverts encode and follows sentencepiece's space rules", "[tokenizer]") {
  const Tokenizer& llama = shared_tokenizer(kLlamaModel);
  const std::vector<std::string> texts = {
      "Hello world",  "  two leading spaces", "trailing  ", "tab\there", "line\r",
      "日本語のテキスト", "emoji \xF0\x9F\x98\x80 and e\xCC\x81", "<s> is text here", "",
  };
  for (const auto& t : texts) {
    INFO(t);
    CHECK(llama.decode(llama.encode(t)) == t);
    CHECK(llama.decode(llama.encode(t, true, true)) == t);
  }
  // Only the first piece loses its dummy-prefix space.
  CHECK(llama.decode({29871, 29871, 22172}) == "  hello");
  CHECK(llama.decode({1, 29871, 22172}) == " hello");
  CHECK(llama.decode({3 + 0x20, 29871, 22172}) == "   hello");  // a byte piece is text
  CHECK(llama.decode({0, 22172}) == " \xE2\x81\x87  hello");     // unk surface " ⁇ "
  CHECK(llama.decode({3 + 0xE6, 3 + 0x97}) == "\xEF\xBF\xBD\xEF\xBF\xBD");  // incomplete char

  // With whitespace cleanup every leading space is dropped until text appears.
  const Tokenizer& tok512 = shared_tokenizer(kTok512Model);
  CHECK(tok512.decode({410, 410, 270, 417}) == "hi");
  CHECK(tok512.decode(tok512.encode("  hi   there  ")) == "hi there");
}

TEST_CASE("decode rejects ids outside the vocabulary", "[tokenizer]") {
  const Tokenizer& tok = shared_tokenizer(kTok512Model);
  CHECK_THROWS_AS(tok.decode({403, 512}), InvalidArgument);
  CHECK_THROWS_AS(tok.decode({-1}), InvalidArgument);
  CHECK_THROWS_AS(tok.id_to_piece(512), InvalidArgument);
  CHECK_THROWS_AS(tok.piece_type(-5), InvalidArgument);
  DecodeStream stream(tok);
  CHECK_THROWS_AS(stream.put(100000), InvalidArgument);
}

TEST_CASE("DecodeStream emits what decode() would, as soon as it is complete", "[tokenizer]") {
  const Tokenizer& llama = shared_tokenizer(kLlamaModel);
  const int b0 = 3;  // <0x00>
  {
    DecodeStream s(llama);
    CHECK(s.put(29871) == "");        // "▁" as first piece: its space is the dummy prefix
    CHECK(s.put(22172) == " hello");
    CHECK(s.put(b0 + 0xE6) == "");    // 日 = E6 97 A5, held back until complete
    CHECK(s.put(b0 + 0x97) == "");
    CHECK(s.put(b0 + 0xA5) == "\xE6\x97\xA5");
    CHECK(s.put(b0 + 0xF0) == "");
    CHECK(s.put(2) == "\xEF\xBF\xBD");  // a non-byte piece ends the sequence: U+FFFD
    CHECK(s.put(b0 + 0xC3) == "");
    CHECK(s.flush() == "\xEF\xBF\xBD");
    CHECK(s.put(b0 + 0x80) == "\xEF\xBF\xBD");  // a lone continuation byte is invalid at once
  }
  // Token by token equals the whole, for real encodings and odd id sequences.
  std::vector<Ids> cases;
  for (const char* t : {"Hello world", " leading", "日本語 and emoji \xF0\x9F\x98\x80\xF0\x9F\x98\x80", "a\n\nb"}) {
    cases.push_back(llama.encode(t, true));
  }
  cases.push_back({b0 + 0x20, 29871, 1, 29871, 22172});
  cases.push_back({1, 1, 29871, 29871, 0, b0 + 0xE6, 29871});
  std::mt19937 rng(7);
  for (int i = 0; i < 50; ++i) {
    Ids ids(20);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % 300);  // mostly control and byte pieces
    cases.push_back(ids);
  }
  for (const auto& ids : cases) {
    DecodeStream s(llama);
    std::string streamed;
    for (int32_t id : ids) streamed += s.put(id);
    streamed += s.flush();
    CHECK(streamed == llama.decode(ids));
  }
}

TEST_CASE("tokenizer.bin and tokenizer.model hold the same vocabulary", "[tokenizer]") {
  for (const auto& [bin, model] : {std::pair{kTok512Bin, kTok512Model}, std::pair{kLlamaBin, kLlamaModel}}) {
    INFO(bin);
    const Tokenizer& a = shared_tokenizer(bin);
    const Tokenizer& b = shared_tokenizer(model);
    REQUIRE(a.vocab_size() == b.vocab_size());
    size_t differences = 0;
    for (int32_t id = 0; id < a.vocab_size(); ++id) {
      const auto& pa = a.model().pieces[id];
      const auto& pb = b.model().pieces[id];
      differences += pa.piece != pb.piece || pa.score != pb.score || pa.type != pb.type;
    }
    CHECK(differences == 0);
    CHECK(a.model().byte_fallback);
    CHECK(a.model().add_dummy_prefix);
    CHECK_FALSE(a.model().remove_extra_whitespaces);  // llama2.c keeps every space
    const std::string text = "Once upon a time, a girl saw 3 big dogs.\nThey ran! 日本";
    CHECK(a.encode(text) == b.encode(text));
  }
  // Where the flags differ, so do the encodings: tok512.model collapses spaces.
  CHECK(shared_tokenizer(kTok512Bin).encode("a  b") != shared_tokenizer(kTok512Model).encode("a  b"));
}

TEST_CASE("serialize then parse gives back the same model", "[tokenizer]") {
  for (const auto& rel : {kTok512Model, kLlamaModel, kTok512Bin}) {
    INFO(rel);
    const auto& m = shared_tokenizer(rel).model();
    const std::string bytes = serialize_sentencepiece_model(m);
    const SentencePieceModel r = parse_sentencepiece_model(bytes, "<roundtrip>");
    REQUIRE(r.pieces.size() == m.pieces.size());
    size_t differences = 0;
    for (size_t i = 0; i < m.pieces.size(); ++i) {
      differences += r.pieces[i].piece != m.pieces[i].piece || r.pieces[i].score != m.pieces[i].score ||
                     r.pieces[i].type != m.pieces[i].type;
    }
    CHECK(differences == 0);
    CHECK(r.model_type == m.model_type);
    CHECK(r.unk_id == m.unk_id);
    CHECK(r.bos_id == m.bos_id);
    CHECK(r.eos_id == m.eos_id);
    CHECK(r.pad_id == m.pad_id);
    CHECK(r.byte_fallback == m.byte_fallback);
    CHECK(r.unk_surface == m.unk_surface);
    CHECK(r.normalizer_name == m.normalizer_name);
    CHECK(r.add_dummy_prefix == m.add_dummy_prefix);
    CHECK(r.remove_extra_whitespaces == m.remove_extra_whitespaces);
    CHECK(r.escape_whitespaces == m.escape_whitespaces);
    // Serializing is deterministic.
    CHECK(serialize_sentencepiece_model(r) == bytes);
  }
}

TEST_CASE("proto2 defaults apply to absent fields", "[tokenizer]") {
  // pieces {piece:"<unk>" type:UNKNOWN} trainer_spec {model_type:BPE}, no normalizer_spec.
  const std::string bytes = std::string("\x0a\x09\x0a\x05<unk>\x18\x02", 11) + std::string("\x12\x02\x18\x02", 4);
  const SentencePieceModel m = parse_sentencepiece_model(bytes, "<defaults>");
  REQUIRE(m.pieces.size() == 1);
  CHECK(m.pieces[0].type == PieceType::Unknown);
  CHECK(m.model_type == 2);
  CHECK_FALSE(m.byte_fallback);
  CHECK(m.add_dummy_prefix);
  CHECK(m.remove_extra_whitespaces);  // defaults to true when absent
  CHECK(m.escape_whitespaces);
  CHECK(m.unk_surface == " \xE2\x81\x87 ");
  // Without trainer_spec the model type is UNIGRAM, which is refused.
  const SentencePieceModel u = parse_sentencepiece_model(bytes.substr(0, 11), "<unigram>");
  CHECK(u.model_type == 1);
  CHECK_THROWS_WITH(Tokenizer(u, "<unigram>"), Catch::Contains("only BPE models with the identity normalizer"));
}

TEST_CASE("unsupported or inconsistent models are refused clearly", "[tokenizer]") {
  SentencePieceModel m = tiny_model(true);
  CHECK_NOTHROW(Tokenizer(m));

  auto refuses = [](SentencePieceModel bad, const char* needle) {
    INFO(needle);
    CHECK_THROWS_WITH(Tokenizer(std::move(bad), "bad.model"),
                      Catch::StartsWith("bad.model: ") && Catch::Contains(needle));
  };
  SentencePieceModel bad = m;
  bad.precompiled_charsmap = "xxxx";
  bad.normalizer_name = "nmt_nfkc";
  refuses(bad, "only BPE models with the identity normalizer are supported");
  bad = m;
  bad.model_type = 1;
  refuses(bad, "only BPE models with the identity normalizer are supported");
  bad = m;
  bad.pieces.pop_back();
  bad.pieces.push_back({"ab", 0, PieceType::Normal});
  refuses(bad, "already defined");
  bad = m;
  bad.pieces.erase(bad.pieces.begin() + 10);  // a byte piece
  refuses(bad, "byte pieces are missing");
  bad = tiny_model(false);
  bad.pieces.push_back({"<0x41>", 0, PieceType::Byte});
  refuses(bad, "byte_fallback is off");
  bad = m;
  bad.pieces[0].type = PieceType::Normal;
  refuses(bad, "UNKNOWN");
  bad = m;
  bad.bos_id = 100000;
  refuses(bad, "bos_id");
  bad = m;
  bad.pieces.push_back({"", 0, PieceType::Normal});
  refuses(bad, "empty");
}

TEST_CASE("BPE behaviour on a tiny vocabulary", "[tokenizer]") {
  Tokenizer tok(tiny_model(false));
  const int32_t ws = tok.piece_to_id("\xE2\x96\x81"), a = tok.piece_to_id("a"), b = tok.piece_to_id("b");
  const int32_t c = tok.piece_to_id("c"), ab = tok.piece_to_id("ab"), ws_a = tok.piece_to_id("\xE2\x96\x81" "a");
  // "ab" (score -5) beats "bc" (-6); "▁a" (-7) is worst so "ab" wins over it.
  CHECK(tok.encode("abc") == Ids{ws, ab, c});
  CHECK(tok.encode("bc") == Ids{ws, tok.piece_to_id("bc")});
  CHECK(tok.encode("a") == Ids{ws_a});
  // Without byte fallback a run of unknown characters is a single unk.
  CHECK(tok.encode("axyzb") == Ids{ws_a, 0, b});
  CHECK(tok.decode({ws_a, 0, b}) == "a \xE2\x81\x87 b");

  // An Unused piece is merged into but then split back into its halves.
  SentencePieceModel m = tiny_model(false);
  for (auto& p : m.pieces) {
    if (p.piece == "ab") p.type = PieceType::Unused;
  }
  Tokenizer unused(m);
  CHECK(unused.encode("abc") == Ids{ws, a, b, c});

  // User-defined pieces are matched whole (longest first) and never merged.
  Tokenizer user(tiny_model(false));
  const int32_t mark = user.add_piece("<mark>", PieceType::UserDefined);
  const int32_t mark2 = user.add_piece("<mark>x", PieceType::UserDefined);
  const int32_t ctrl = user.add_piece("<ctl>", PieceType::Control);
  CHECK(mark == 10);
  CHECK(ctrl == 12);
  CHECK(user.encode("ab<mark>ab") == Ids{ws, ab, mark, ab});
  CHECK(user.encode("a<mark>xb")[1] == mark2);
  CHECK(user.encode("<ctl>").size() > 1);  // control pieces are never read from text
  CHECK(user.decode({ws_a, mark, ctrl}) == "a<mark>");
  CHECK_THROWS_AS(user.add_piece("<mark>", PieceType::UserDefined), InvalidArgument);
  CHECK_THROWS_AS(user.add_piece("<0x00>", PieceType::Byte), InvalidArgument);
}

TEST_CASE("from_file detects the format by content and names the file in errors", "[tokenizer]") {
  // A tokenizer.bin under a .model name, and the other way round.
  TempFile bin_as_model(read_bytes(test::shared(kTok512Bin)));
  CHECK(Tokenizer::from_file(bin_as_model.path).encode("Once upon a time") == Ids{403, 407, 261, 378});
  TempFile model_as_bin(read_bytes(test::shared(kTok512Model)));
  CHECK(Tokenizer::from_file(model_as_bin.path).model().remove_extra_whitespaces);

  TempFile empty("");
  CHECK_THROWS_WITH(Tokenizer::from_file(empty.path), Catch::StartsWith(empty.path + ": "));
  CHECK_THROWS_AS(Tokenizer::from_file(empty.path + ".missing"), FormatError);
  TempFile text("this is not a tokenizer\n");
  CHECK_THROWS_WITH(Tokenizer::from_file(text.path), Catch::Contains("neither a sentencepiece"));
}

TEST_CASE("malformed protobuf input throws FormatError", "[tokenizer]") {
  const std::string good = read_bytes(test::shared(kTok512Model));
  REQUIRE(try_load(parse_proto, good) == Outcome::Loaded);

  // Every truncation fails, except the one that only drops the trailing
  // normalizer_spec (a valid proto whose defaults then apply).
  size_t loaded = 0;
  for (size_t len = 0; len < good.size(); ++len) loaded += try_load(parse_proto, good.substr(0, len)) == Outcome::Loaded;
  CHECK(loaded == 1);

  // Hand-made defects appended to a valid model.
  const std::vector<std::string> defects = {
      std::string("\x0a\xff\xff\xff\xff\x0f", 6),  // length far past the end
      std::string("\x0a\x80", 2),                  // truncated length varint
      std::string("\x0a\x05\x0a\x09<unk>", 9),     // nested length past its message
      std::string("\x0f", 1),                      // pieces with wire type 7
      std::string("\x7f", 1),                      // unknown field with wire type 7
      std::string("\x7c", 1),                      // end-group without a group
      std::string("\x7b\x08\x01", 3),              // group never closed
      std::string("\x7b\x08\x01\x74", 4),          // group closed by another field
      std::string("\x00", 1),                      // field number 0
      std::string("\x4d\x01\x02", 3),              // fixed32 cut short
      std::string("\x49\x01\x02\x03\x04", 5),      // fixed64 cut short
      std::string("\x48\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11),  // varint over 64 bits
      std::string("\x0a\x02\x18\x09", 4),          // unknown piece type 9
      std::string("\x10\x01", 2),                  // trainer_spec with the wrong wire type
  };
  for (const auto& d : defects) {
    INFO("defect bytes: " << d.size());
    CHECK_THROWS_AS(parse_sentencepiece_model(good + d, "<bad>"), FormatError);
  }
  // Unknown fields of every wire type, groups included, are skipped.
  const std::string unknown_fields = std::string("\xf8\x07\x05", 3) + std::string("\xf9\x07" "12345678", 10) +
                                     std::string("\xfa\x07\x02hi", 5) + std::string("\xfd\x07" "1234", 6) +
                                     std::string("\xfb\x07\x08\x01\xfc\x07", 6);
  CHECK(try_load(parse_proto, good + unknown_fields) == Outcome::Loaded);

  // Corrupted bytes and random buffers: a FormatError or a valid model, never a crash.
  std::mt19937 rng(42);
  size_t errors = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    errors += try_load(parse_proto, bad) == Outcome::FormatErrorThrown;
  }
  CHECK(errors > 0);
  for (int i = 0; i < 300; ++i) {
    std::string noise(rng() % 200, '\0');
    for (auto& ch : noise) ch = static_cast<char>(rng());
    CHECK(try_load(parse_proto, noise) == Outcome::FormatErrorThrown);
  }
}

TEST_CASE("malformed tokenizer.bin input throws FormatError", "[tokenizer]") {
  const std::string good = read_bytes(test::shared(kTok512Bin));
  REQUIRE(try_load(parse_bin, good) == Outcome::Loaded);

  // Truncation: parsing fails unless the cut falls between two records; the
  // vocabulary then must still hold all 256 byte pieces to load.
  std::vector<size_t> boundaries;
  for (size_t pos = 4; pos < good.size();) {
    boundaries.push_back(pos);
    int32_t len = 0;
    std::memcpy(&len, good.data() + pos + 4, 4);
    pos += 8 + static_cast<size_t>(len);
  }
  REQUIRE(boundaries.size() == 512);
  for (size_t len = 0; len < good.size(); ++len) {
    const bool boundary = std::binary_search(boundaries.begin(), boundaries.end(), len);
    if (!boundary) {
      INFO("truncated to " << len);
      CHECK_THROWS_AS(parse_llama2c_tokenizer(good.substr(0, len), "<bad>"), FormatError);
    }
  }
  CHECK(try_load(parse_bin, good.substr(0, boundaries[259])) == Outcome::Loaded);
  CHECK(try_load(parse_bin, good.substr(0, boundaries[258])) == Outcome::FormatErrorThrown);

  auto with_i32 = [&](size_t pos, int32_t v) {
    std::string bad = good;
    std::memcpy(bad.data() + pos, &v, 4);
    return bad;
  };
  CHECK_THROWS_WITH(parse_llama2c_tokenizer(with_i32(0, -1), "x.bin"), Catch::Contains("max_token_length"));
  CHECK_THROWS_WITH(parse_llama2c_tokenizer(with_i32(0, 1), "x.bin"), Catch::Contains("exceeds max_token_length"));
  CHECK_THROWS_WITH(parse_llama2c_tokenizer(with_i32(8, -3), "x.bin"), Catch::Contains("not positive"));
  const size_t last_len_at = boundaries.back() + 4;
  int32_t last_len = 0;
  std::memcpy(&last_len, good.data() + last_len_at, 4);
  CHECK_THROWS_WITH(parse_llama2c_tokenizer(with_i32(last_len_at, last_len + 1), "x.bin"),
                    Catch::StartsWith("x.bin: ") && Catch::Contains("runs past the end"));
  CHECK_THROWS_AS(parse_llama2c_tokenizer(good.substr(0, 3), "x.bin"), FormatError);

  std::mt19937 rng(3);
  size_t errors = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    errors += try_load(parse_bin, bad) == Outcome::FormatErrorThrown;
  }
  CHECK(errors > 0);
  for (int i = 0; i < 300; ++i) {
    std::string noise(rng() % 200, '\0');
    for (auto& ch : noise) ch = static_cast<char>(rng());
    CHECK(try_load(parse_bin, noise) == Outcome::FormatErrorThrown);
  }
}

TEST_CASE("a whole WikiText split encodes in one call and decodes back", "[tokenizer]") {
  const Tokenizer& llama = shared_tokenizer(kLlamaModel);
  const std::string text = read_bytes(test::shared("data/wikitext-103/wiki.test.raw"));
  const auto ids = llama.encode(text);
  CHECK(ids.size() > text.size() / 6);
  CHECK(llama.decode(ids) == text);
}
