#include "flashback/shipped_adapters.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"
#include "flashback/strings.hpp"

#ifndef FLASHBACK_INSTALL_ADAPTER_DIR
#define FLASHBACK_INSTALL_ADAPTER_DIR ""
#endif
#ifndef FLASHBACK_SOURCE_ADAPTER_DIR
#define FLASHBACK_SOURCE_ADAPTER_DIR ""
#endif

namespace fs = std::filesystem;

namespace flashback {

namespace {
constexpr const char* kInfoFile = "flashback.json";
}  // namespace

std::string model_fingerprint(const Checkpoint& ck) {
  auto it = ck.tensors.find("model.norm.weight");
  if (it == ck.tensors.end()) throw FormatError(ck.path, "no model.norm.weight: cannot identify the model");
  // Rounded to bf16 (round to nearest even, as every converter does), then hashed.
  const at::Tensor bits = it->second.to(at::kFloat).to(at::kBFloat16).contiguous();  // [C]
  const uint64_t h = fnv1a({static_cast<const char*>(bits.data_ptr()), static_cast<size_t>(bits.nbytes())});
  const LlamaConfig& c = ck.config;
  char buf[160];
  std::snprintf(buf, sizeof buf, "llama-v%lld-h%lld-l%lld-a%lld-kv%lld-i%lld-n%016llx", (long long)c.vocab_size,
                (long long)c.hidden_size, (long long)c.num_hidden_layers, (long long)c.num_attention_heads,
                (long long)c.num_key_value_heads, (long long)c.intermediate_size, (unsigned long long)h);
  return buf;
}

std::vector<std::string> shipped_adapter_dirs(const std::vector<std::string>& extra) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("FLASHBACK_ADAPTERS")) {
    std::string s = env;
    for (size_t b = 0; b <= s.size();) {
      size_t e = s.find(':', b);
      if (e == std::string::npos) e = s.size();
      if (e > b) dirs.push_back(s.substr(b, e - b));
      b = e + 1;
    }
  }
  dirs.insert(dirs.end(), extra.begin(), extra.end());
  for (const char* d : {FLASHBACK_INSTALL_ADAPTER_DIR, FLASHBACK_SOURCE_ADAPTER_DIR})
    if (*d) dirs.emplace_back(d);
  return dirs;
}

std::string find_shipped_adapter(const std::string& fingerprint, const std::vector<std::string>& dirs) {
  for (const std::string& root : dirs) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    std::vector<fs::path> subdirs;
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.is_directory(ec)) subdirs.push_back(e.path());
    std::sort(subdirs.begin(), subdirs.end());  // a stable choice whatever the file system's order
    for (const fs::path& d : subdirs) {
      const fs::path info = d / kInfoFile;
      if (!fs::exists(info, ec)) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file(info.string()));
      } catch (const nlohmann::json::exception& e) {
        throw FormatError(info.string(), std::string("not valid JSON: ") + e.what());
      }
      auto f = j.is_object() ? j.find("fingerprint") : j.end();
      if (f == j.end() || !f->is_string()) throw FormatError(info.string(), "needs a string 'fingerprint'");
      if (f->get<std::string>() == fingerprint) return d.string();
    }
  }
  return "";
}

void write_shipped_adapter_info(const std::string& dir, const Checkpoint& ck, const std::string& base_model,
                                const std::string& description) {
  nlohmann::ordered_json j;
  j["fingerprint"] = model_fingerprint(ck);
  j["base_model"] = base_model;
  j["description"] = description;
  write_file_atomic((fs::path(dir) / kInfoFile).string(), j.dump(2) + "\n");
}

}  // namespace flashback
