// flashback tokenize: one JSON array of token ids per stdin line (or, with
// --decode, one JSON string per line of ids). Lines are split on '\n' only, so
// '\r' and every other byte reach the tokenizer; a last line without '\n'
// still counts. The output is that of sentencepiece's encode(line)/decode(ids).
#include <charconv>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/error.hpp"
#include "flashback/io/atomic_file.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer;
  bool bos = false;
  bool decode = false;
  std::string write_model;
};

// Buffers stdout and writes it in large blocks, but never sits on output while
// waiting for input, so a caller feeding one line at a time gets its answer.
class Output {
 public:
  void append(std::string_view s) {
    buf_.append(s.data(), s.size());
    if (buf_.size() >= (1u << 16)) flush();
  }
  void flush() {
    if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), stdout) != buf_.size()) {
      throw Error("tokenize: cannot write to stdout");
    }
    buf_.clear();
    std::fflush(stdout);
  }

 private:
  std::string buf_;
};

void append_ids(std::string& out, const std::vector<int32_t>& ids) {
  out.push_back('[');
  char num[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out.push_back(',');
    const auto r = std::to_chars(num, num + sizeof num, ids[i]);
    out.append(num, r.ptr);
  }
  out.append("]\n");
}

std::vector<int32_t> parse_ids(const std::string& line, size_t line_no) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return {};
  const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) throw InvalidArgument("tokenize --decode: line " + std::to_string(line_no) + " is not a JSON array of ids");
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX) {
      throw InvalidArgument("tokenize --decode: line " + std::to_string(line_no) + ": " + v.dump() +
                            " is not a token id");
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

void run_tokenize(const TokenizeOptions& opt) {
  const Tokenizer tok = Tokenizer::from_file(opt.tokenizer);
  if (!opt.write_model.empty()) {
    write_file_atomic(opt.write_model, serialize_sentencepiece_model(tok.model()));
    return;
  }

  std::ios::sync_with_stdio(false);
  std::istream& in = std::cin;
  Output out;
  std::string line, text;
  size_t line_no = 0;
  while (std::getline(in, line, '\n')) {
    ++line_no;
    text.clear();
    if (opt.decode) {
      std::vector<int32_t> ids = parse_ids(line, line_no);
      std::string decoded;
      try {
        decoded = tok.decode(ids);
      } catch (const InvalidArgument& e) {
        throw InvalidArgument("tokenize --decode: line " + std::to_string(line_no) + ": " + e.what());
      }
      text = nlohmann::json(decoded).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      text.push_back('\n');
    } else {
      append_ids(text, tok.encode(line, opt.bos));
    }
    out.append(text);
    // Nothing more buffered on stdin: the next read may block, so hand over
    // what we have.
    if (in.rdbuf()->in_avail() <= 0) out.flush();
  }
  out.flush();
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto opt = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize",
                                 "Tokenize stdin lines into JSON id arrays (sentencepiece encode), or decode them");
  cmd->add_option("--tokenizer", opt->tokenizer, "tokenizer.model (sentencepiece), tokenizer.json (byte-level BPE), llama2.c tokenizer.bin or a .gguf")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_flag("--bos", opt->bos, "Prepend the BOS id to every line");
  cmd->add_flag("--decode", opt->decode, "Read JSON arrays of ids, print each decoded text as a JSON string");
  // Hidden (empty group): writes the loaded vocabulary as a sentencepiece
  // .model, e.g. to turn a tokenizer.bin into one; used by the tests.
  cmd->add_option("--write-model", opt->write_model, "Write the tokenizer as a sentencepiece .model and exit")
      ->group("");
  cmd->callback([opt] { run_tokenize(*opt); });
}

}  // namespace flashback::cli
