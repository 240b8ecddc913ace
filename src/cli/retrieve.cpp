// flashback retrieve: the best passages of an index for a query, as a
// readable listing or a JSON list of {"title", "text", "score"}.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/error.hpp"
#include "flashback/report.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/runtime.hpp"

namespace flashback::cli {

namespace {
struct RetrieveArgs {
  std::string index, query, forbidden, model, tokenizer;
  int64_t k = 5;
  int threads = 0;
  bool json = false;
};

void run(const RetrieveArgs& a) {
  init_threads(a.threads);
  RetrieverOptions ro;
  ro.encoder_model = a.model;
  ro.encoder_tokenizer = a.tokenizer;
  ro.forbidden_titles = a.forbidden;
  std::unique_ptr<Retriever> retriever = open_retriever(a.index, ro);
  std::vector<Passage> found = retriever->retrieve(a.query, a.k);

  if (a.json) {
    std::cout << to_json(found) << "\n";
    return;
  }
  if (found.empty()) std::printf("(no passage matches)\n");
  for (size_t i = 0; i < found.size(); ++i) {
    const Passage& p = found[i];
    std::printf("%zu. %s  [score %.4f, passage %lld]\n   %s\n\n", i + 1, p.title.empty() ? "(untitled)" : p.title.c_str(),
                p.score, static_cast<long long>(p.id), p.text.c_str());
  }
}
}  // namespace

void add_retrieve(CLI::App& app) {
  auto a = std::make_shared<RetrieveArgs>();
  CLI::App* cmd = app.add_subcommand("retrieve", "Find the passages of an index that best match a query");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--index,-i", a->index, "index directory (built by `flashback index`)")->required();
  cmd->add_option("--query,-q", a->query, "query text")->required();
  cmd->add_option("-k", a->k, "number of passages");
  cmd->add_option("--forbidden-titles", a->forbidden, "file of titles (one per line) never to return");
  cmd->add_option("--model,-m", a->model, "dense: the query encoder (default: the model recorded in the index)");
  cmd->add_option("--tokenizer,-t", a->tokenizer, "dense: the model's tokenizer (default: found with the model)");
  cmd->add_option("--threads", a->threads, "dense: intra-op threads (default: all cores)");
  cmd->add_flag("--json", a->json, "print a JSON list of {id, title, text, score, document}, best first");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
