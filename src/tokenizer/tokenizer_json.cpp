// HF tokenizer.json <-> BpeModel, for byte-level BPE vocabularies (GPT-2,
// SmolLM, Llama-3), and the BOS/EOS of a tokenizer_config.json beside it.
#include <algorithm>
#include <filesystem>
#include <unordered_map>
#include <nlohmann/json.hpp>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/tokenizer.hpp"
#include "pre_tokenizer.hpp"

namespace flashback {

namespace {

using json = nlohmann::json;

// Llama-3's pattern as its tokenizer.json writes it.
const char* kLlama3Json =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

// The pre-tokenizer name of a tokenizer.json's pre_tokenizer; FormatError otherwise.
std::string pre_name(const json& p, const std::string& path) {
  auto fail = [&](const std::string& why) -> std::string {
    throw FormatError(path, "pre_tokenizer " + p.dump().substr(0, 200) + " is not supported (" + why +
                                "; flashback reads ByteLevel, Digits + ByteLevel and Llama-3's Split + ByteLevel)");
  };
  auto is_byte_level = [&](const json& x, bool regex) {
    return x.is_object() && x.value("type", "") == "ByteLevel" && x.value("use_regex", true) == regex &&
           !x.value("add_prefix_space", false);
  };
  if (is_byte_level(p, true)) return "gpt2";
  if (!p.is_object() || p.value("type", "") != "Sequence" || !p.contains("pretokenizers") ||
      !p["pretokenizers"].is_array() || p["pretokenizers"].size() != 2)
    return fail("not a byte-level BPE pre-tokenizer flashback knows");
  const json& a = p["pretokenizers"][0];
  const json& b = p["pretokenizers"][1];
  if (a.value("type", "") == "Digits" && a.value("individual_digits", false) && is_byte_level(b, true)) return "smollm";
  if (a.value("type", "") == "Split" && is_byte_level(b, false) && a.contains("pattern") && a["pattern"].is_object() &&
      a["pattern"].value("Regex", "") == kLlama3Json && a.value("behavior", "") == "Isolated" && !a.value("invert", false))
    return "llama3";
  return fail("an unknown combination or pattern");
}

json pre_json(const std::string& pre) {
  if (pre == "gpt2" || pre == "default") return byte_level(true);
  if (pre == "smollm" || pre == "starcoder")
    return {{"type", "Sequence"},
            {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  if (pre == "llama3" || pre == "llama-bpe")
    return {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Json}}}, {"behavior", "Isolated"}, {"invert", false}},
              byte_level(false)}}};
  throw InvalidArgument("pre-tokenizer '" + pre + "' has no tokenizer.json form here");
}

// "bos_token": "<s>" or {"content": "<s>", ...}
std::string token_text(const json& j, const char* key) {
  if (!j.contains(key)) return "";
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

const std::vector<std::string>& bpe_pre_tokenizers() { return internal::PreTokenizer::names(); }

BpeModel parse_tokenizer_json(std::string_view text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(path, std::string("not valid JSON: ") + e.what());
  }
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
      throw FormatError(path, "not an HF tokenizer.json (no \"model\" object)");
    const json& m = j["model"];
    const std::string type = m.value("type", "");
    if (type != "BPE") throw FormatError(path, "model type '" + type + "' is not supported (only BPE)");
    if (m.value("byte_fallback", false))
      throw FormatError(path, "byte_fallback BPE (a SentencePiece-style tokenizer.json) is not supported; use tokenizer.model");
    if (j.contains("normalizer") && !j["normalizer"].is_null())
      throw FormatError(path, "normalizer " + j["normalizer"].value("type", std::string("?")) + " is not supported");
    if (!m.contains("vocab") || !m["vocab"].is_object()) throw FormatError(path, "model.vocab is not an object");
    if (!m.contains("merges") || !m["merges"].is_array()) throw FormatError(path, "model.merges is missing");

    BpeModel b;
    b.pre = pre_name(j.value("pre_tokenizer", json()), path);
    b.ignore_merges = m.value("ignore_merges", false);
    int64_t n = 0;
    for (const auto& [tok, id] : m["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (int64_t(1) << 30))
        throw FormatError(path, "model.vocab['" + tok + "'] is not a token id");
      n = std::max(n, id.get<int64_t>() + 1);
    }
    const json added = j.value("added_tokens", json::array());
    if (!added.is_array()) throw FormatError(path, "added_tokens is not a list");
    for (const auto& a : added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() > (int64_t(1) << 30))
        throw FormatError(path, "an added_tokens entry lacks an id or a content");
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        if (a.value(flag, false))
          throw FormatError(path, "added token '" + a["content"].get<std::string>() + "' sets " + flag + " (not supported)");
      n = std::max(n, a["id"].get<int64_t>() + 1);
    }
    // Ids are dense, so they cannot pass the number of entries: a gap is named before allocating (an id
    // of 2^30 in a small file would otherwise allocate a billion strings first).
    if (uint64_t(n) > m["vocab"].size() + added.size()) {
      std::vector<int64_t> ids;
      for (const auto& [tok, id] : m["vocab"].items()) ids.push_back(id.get<int64_t>());
      for (const auto& a : added) ids.push_back(a["id"].get<int64_t>());
      std::sort(ids.begin(), ids.end());
      int64_t missing = 0;
      for (int64_t id : ids) {
        if (id > missing) break;
        if (id == missing) ++missing;
      }
      throw FormatError(path, "token id " + std::to_string(missing) + " is missing from the vocabulary");
    }
    b.tokens.assign(size_t(n), std::string());
    b.types.assign(size_t(n), PieceType::Normal);
    for (const auto& [tok, id] : m["vocab"].items()) b.tokens[size_t(id.get<int64_t>())] = tok;
    for (const auto& a : added) {
      const size_t id = size_t(a["id"].get<int64_t>());
      const std::string content = a["content"].get<std::string>();
      // An added token and model.vocab agree on its id, as HF writes them; otherwise the file is ambiguous.
      if (!b.tokens[id].empty() && b.tokens[id] != content)
        throw FormatError(path, "added token '" + content + "' has id " + std::to_string(id) +
                                    ", which model.vocab gives to '" + b.tokens[id] + "'");
      if (const auto v = m["vocab"].find(content); v != m["vocab"].end() && v->get<int64_t>() != int64_t(id))
        throw FormatError(path, "added token '" + content + "' has id " + std::to_string(id) + " but model.vocab says " +
                                    std::to_string(v->get<int64_t>()));
      b.tokens[id] = content;
      b.types[id] = a.value("special", false) ? PieceType::Control : PieceType::UserDefined;
    }
    std::unordered_map<std::string_view, size_t> seen;
    for (size_t i = 0; i < b.tokens.size(); ++i) {
      if (b.tokens[i].empty()) throw FormatError(path, "token id " + std::to_string(i) + " is missing from the vocabulary");
      if (const auto [at, fresh] = seen.emplace(b.tokens[i], i); !fresh)
        throw FormatError(path, "token '" + b.tokens[i] + "' has two ids, " + std::to_string(at->second) + " and " +
                                    std::to_string(i));
    }
    for (const auto& mg : m["merges"]) {
      if (mg.is_string()) {
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
          throw FormatError(path, "merge '" + s + "' is not two tokens separated by one space");
        b.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        b.merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
      } else {
        throw FormatError(path, "a merge is neither \"a b\" nor [\"a\", \"b\"]");
      }
    }
    auto id_of = [&](const std::string& t) -> int32_t {
      if (t.empty()) return -1;
      for (size_t i = 0; i < b.tokens.size(); ++i)
        if (b.tokens[i] == t) return int32_t(i);
      return -1;
    };
    if (m.contains("unk_token") && m["unk_token"].is_string()) b.unk_id = id_of(m["unk_token"].get<std::string>());
    // BOS from a post-processor that adds one (Llama-3's TemplateProcessing).
    if (j.contains("post_processor") && j["post_processor"].is_object() &&
        j["post_processor"].value("type", "") == "TemplateProcessing") {
      const json& single = j["post_processor"].value("single", json::array());
      if (single.is_array() && !single.empty() && single.front().contains("SpecialToken")) {
        b.bos_id = id_of(single.front()["SpecialToken"].value("id", std::string()));
        b.add_bos = b.bos_id >= 0;
      }
      if (single.is_array() && single.size() > 1 && single.back().contains("SpecialToken")) {
        b.eos_id = id_of(single.back()["SpecialToken"].value("id", std::string()));
        b.add_eos = b.eos_id >= 0;
      }
    }
    // tokenizer_config.json beside it says which tokens BOS and EOS are.
    const auto cfg = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
    std::error_code ec;
    if (std::filesystem::is_regular_file(cfg, ec)) {
      json c;
      try {
        c = json::parse(read_file(cfg.string()));
      } catch (const json::exception& e) {
        throw FormatError(cfg.string(), std::string("not valid JSON: ") + e.what());
      }
      if (c.is_object()) {
        if (int32_t id = id_of(token_text(c, "bos_token")); id >= 0) b.bos_id = id;
        if (int32_t id = id_of(token_text(c, "eos_token")); id >= 0) b.eos_id = id;
        if (int32_t id = id_of(token_text(c, "unk_token")); id >= 0) b.unk_id = id;
        if (int32_t id = id_of(token_text(c, "pad_token")); id >= 0) b.pad_id = id;
        if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) b.add_bos = c["add_bos_token"].get<bool>();
        if (c.contains("add_eos_token") && c["add_eos_token"].is_boolean()) b.add_eos = c["add_eos_token"].get<bool>();
      }
    }
    return b;
  } catch (const json::exception& e) {
    throw FormatError(path, std::string("bad value: ") + e.what());
  }
}

BpeModel read_tokenizer_json(const std::string& path) { return parse_tokenizer_json(read_file(path), path); }

std::string write_tokenizer_json(const BpeModel& b) {
  json added = json::array();
  json vocab = json::object();
  for (size_t i = 0; i < b.tokens.size(); ++i) {
    const PieceType t = b.types.empty() ? PieceType::Normal : b.types[i];
    if (!vocab.contains(b.tokens[i])) vocab[b.tokens[i]] = i;
    if (t == PieceType::Control || t == PieceType::UserDefined)
      added.push_back({{"id", i},
                       {"content", b.tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", t == PieceType::Control}});
  }
  json merges = json::array();
  for (const auto& [l, r] : b.merges) merges.push_back({l, r});
  json post = byte_level(true);
  if (b.add_bos && b.bos_id >= 0) {
    const std::string bos = b.tokens[size_t(b.bos_id)];
    post = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {b.bos_id}}, {"tokens", {bos}}}}}}};
  }
  json j = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", pre_json(b.pre)},
            {"post_processor", post},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", b.unk_id >= 0 ? json(b.tokens[size_t(b.unk_id)]) : json()},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"ignore_merges", b.ignore_merges},
              {"vocab", vocab},
              {"merges", merges}}}};
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace flashback
