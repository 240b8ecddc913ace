#include "ralm_common.hpp"
#include "flashback/dtype.hpp"

#include "flashback/lora.hpp"
#include "flashback/peft.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"

namespace flashback::cli {

void add_ralm_flags(CLI::App* cmd, RalmArgs& a) {
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--model,-m", a.model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--adapter", a.adapter, "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)");
  cmd->add_flag("--adapter-unmerged", a.adapter_unmerged, "keep the adapter separate instead of merging it into the weights");
  cmd->add_option("--tokenizer,-t", a.tokenizer, "tokenizer.model or tokenizer.bin (default: found with the model)");
  cmd->add_option("--index", a.index, "retrieval index directory (flashback index); not needed with --mode none");
  cmd->add_option("--mode", a.mode, "append (FlashBack), prepend (In-Context RALM) or none");
  cmd->add_flag("--marks,!--no-marks", a.marks, "bracket documents with <MARK_L> ... <MARK_R> (default on)");
  cmd->add_flag("--no-kv-reuse", a.no_kv_reuse, "recompute the whole layout at every step (the exactness reference)");
  cmd->add_option("--stride,-s", a.stride, "tokens between retrievals")->check(CLI::PositiveNumber);
  cmd->add_option("--query-tokens,-l", a.query_tokens, "the query is the last l tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--doc-tokens", a.doc_tokens, "each document is cut to this many tokens")->check(CLI::PositiveNumber);
  cmd->add_option("-k", a.k, "documents per retrieval")->check(CLI::Range(1, 64));
  cmd->add_option("--max-length", a.max_length, "positions the layout may use (default: the model's maximum)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--window-keep", a.window_keep, "fraction of the input budget kept when the window slides")
      ->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--forbidden-titles", a.forbidden_titles, "file of titles never to retrieve (one per line)");
  cmd->add_option("--encoder-model", a.encoder_model, "dense index: the encoder model (default: the one that built it)");
  cmd->add_option("--dtype", a.dtype, "auto, fp32, bf16, fp16");
  cmd->add_option("--threads", a.threads, "intra-op threads (default: all cores)");
  cmd->add_flag("--json", a.json, "print JSON");
}

RalmModel load_ralm_model(const RalmArgs& a) {
  init_threads(a.threads);
  Checkpoint ck = read_checkpoint(a.model);
  RalmModel r;
  r.tokenizer = load_tokenizer(ck, a.tokenizer);
  const bool want_marks = a.marks && a.mode != "none";  // any retrieval mode in a list counts
  r.marks = want_marks ? add_marking_tokens(ck, r.tokenizer) : find_marking_tokens(ck, r.tokenizer);
  LoadOptions lo;
  lo.dtype = parse_dtype(a.dtype);
  r.model = load_model(ck, lo);
  if (!a.adapter.empty()) {
    load_adapter(*r.model, a.adapter, /*merge=*/!a.adapter_unmerged);
    r.model->eval();
  }
  return r;
}

std::unique_ptr<Retriever> open_retriever(const std::string& dir, const std::string& encoder_model,
                                          const std::string& forbidden_titles) {
  IndexInfo info = read_index_info(dir);
  std::shared_ptr<TextEncoder> encoder;
  if (info.kind == "dense") {
    const std::string path = encoder_model.empty() ? info.encoder : encoder_model;
    if (path.empty()) throw InvalidArgument(dir + ": a dense index needs --encoder-model");
    Checkpoint ck = read_checkpoint(path);
    Tokenizer tok = load_tokenizer(ck);
    encoder = std::make_shared<ModelEncoder>(load_model(ck), std::move(tok), path, info.max_tokens);
  }
  std::unique_ptr<Retriever> r = open_index(dir, encoder);
  if (!forbidden_titles.empty()) r->set_title_filter(TitleFilter::from_file(forbidden_titles));
  return r;
}

ContextOptions context_options(const RalmArgs& a) {
  ContextOptions co;
  co.marks = a.marks && a.mode.find_first_not_of("none,") != std::string::npos;
  co.kv_reuse = !a.no_kv_reuse;
  co.max_length = a.max_length;
  co.reserve = a.stride;
  co.window_keep = a.window_keep;
  return co;
}

RalmOptions ralm_options(const RalmArgs& a) {
  RalmOptions ro;
  ro.stride = a.stride;
  ro.query_tokens = a.query_tokens;
  ro.doc_tokens = a.doc_tokens;
  ro.k = a.k;
  ro.validate();
  return ro;
}

nlohmann::ordered_json stats_json(const ContextStats& s) {
  nlohmann::ordered_json j;
  j["retrievals"] = s.retrievals;
  j["tokens_reencoded"] = s.tokens_reencoded;
  j["tokens_decoded"] = s.tokens_decoded;
  j["window_slides"] = s.window_slides;
  j["forwards"] = s.forwards;
  j["retrieve_seconds"] = s.retrieve_seconds;
  j["reencode_seconds"] = s.reencode_seconds;
  j["decode_seconds"] = s.decode_seconds;
  j["total_seconds"] = s.retrieve_seconds + s.reencode_seconds + s.decode_seconds;
  j["reencoded_per_place"] = s.reencoded_per_place;
  return j;
}

}  // namespace flashback::cli
