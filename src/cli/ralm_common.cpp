#include "ralm_common.hpp"

#include <cstdio>
#include <filesystem>

#include "commands.hpp"

#include "flashback/dtype.hpp"
#include "flashback/retrieval/index.hpp"

namespace flashback::cli {

namespace {
// <dir of this executable>/../share/flashback/<name>: where an installed CLI's
// data lies (CMake's install and the wheel's <env>/bin + <env>/share alike).
std::string executable_data_dir(const std::string& name) {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  return (exe.parent_path().parent_path() / "share" / "flashback" / name).string();
}
}  // namespace

void add_ralm_flags(CLI::App* cmd, RalmArgs& a) {
  RalmOptions& o = a.options;
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--model,-m", a.model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--adapter", a.adapter,
                  "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors); default: the "
                  "adapter flashback ships for this model, when a mode uses the marks");
  cmd->add_flag("--no-adapter", a.no_adapter, "no adapter, not even the shipped default");
  cmd->add_flag("--adapter-unmerged", a.adapter_unmerged, "keep the adapter separate instead of merging it into the weights");
  cmd->add_option("--tokenizer,-t", a.tokenizer, kTokenizerHelp);
  cmd->add_option("--index", a.index, "retrieval index directory (flashback index); not needed with --mode none");
  cmd->add_option("--mode", a.mode, "append (FlashBack), prepend (In-Context RALM) or none");
  cmd->add_option("--stride,-s", o.stride, ralm_option_help("stride"))->check(CLI::PositiveNumber);
  cmd->add_option("--query-tokens,-l", o.query_tokens, ralm_option_help("query_tokens"))->check(CLI::PositiveNumber);
  cmd->add_option("--doc-tokens", o.doc_tokens, ralm_option_help("doc_tokens"))->check(CLI::PositiveNumber);
  cmd->add_option("-k", o.k, ralm_option_help("k"))->check(CLI::Range(1, 64));
  cmd->add_flag("--marks,!--no-marks", o.marks, ralm_option_help("marks"));
  cmd->add_flag("--kv-reuse,!--no-kv-reuse", o.kv_reuse, ralm_option_help("kv_reuse"));
  cmd->add_option("--max-length", o.max_length, ralm_option_help("max_length"))->check(CLI::NonNegativeNumber);
  cmd->add_option("--window-keep", o.window_keep, ralm_option_help("window_keep"))->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--doc-positions", o.doc_positions, ralm_option_help("doc_positions"));  // validate() names it
  cmd->add_option("--kv-dtype", o.kv_dtype, ralm_option_help("kv_dtype"));                  // validate() names it
  cmd->add_option("--forbidden-titles", a.forbidden_titles, "file of titles never to retrieve (one per line)");
  cmd->add_option("--encoder-model", a.encoder_model, "dense index: the encoder model (default: the one that built it)");
  cmd->add_option("--dtype", a.dtype, "auto, fp32, bf16, fp16");
  cmd->add_option("--device", a.device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_flag("--keep-quantized", a.keep_quantized, kKeepQuantizedHelp);
  cmd->add_option("--threads", a.threads, "intra-op threads (default: all cores)");
  cmd->add_flag("--json", a.json, "print JSON");
}

RalmSetup setup_ralm(const RalmArgs& a, const std::vector<ContextMode>& modes) {
  a.options.validate();
  const bool retrieves = std::any_of(modes.begin(), modes.end(), [](ContextMode m) { return m != ContextMode::None; });
  if (retrieves && a.index.empty()) throw InvalidArgument("--index is required unless --mode none");
  init_threads(a.threads);
  PretrainedOptions po;
  po.tokenizer = a.tokenizer;
  po.dtype = parse_dtype(a.dtype);
  po.device = parse_device(a.device);
  po.marks = uses_marks(modes, a.options) ? MarksPolicy::Add : MarksPolicy::Find;
  if (a.no_adapter && !a.adapter.empty()) throw InvalidArgument("--adapter and --no-adapter contradict each other");
  po.adapter = a.adapter;
  po.default_adapter = !a.no_adapter;
  po.adapter_dirs = {executable_data_dir("adapters")};
  po.merge_adapter = !a.adapter_unmerged;
  po.keep_quantized = a.keep_quantized;
  RalmSetup s;
  s.pretrained = load_pretrained(a.model, po);
  if (s.pretrained.adapter_default)
    std::fprintf(stderr, "adapter: %s (shipped for this model; --no-adapter runs without it)\n",
                 s.pretrained.adapter.c_str());
  if (retrieves) {
    RetrieverOptions ro;
    ro.encoder_model = a.encoder_model;
    ro.forbidden_titles = a.forbidden_titles;
    s.retriever = open_retriever(a.index, ro);
    auto docs = std::make_unique<RetrievedDocuments>(*s.retriever, *s.pretrained.tokenizer, a.options);
    s.retrieved = docs.get();
    s.documents = std::move(docs);
  } else {
    s.documents = std::make_unique<NoDocuments>();
  }
  return s;
}

}  // namespace flashback::cli
