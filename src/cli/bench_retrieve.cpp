// flashback bench retrieve: query latency of an index, with queries made as
// the paper makes them (the last words before a point in running text):
// --queries windows of --query-words words at random places in --text,
// top --k each, after --warmup untimed queries. Reports median, p90, mean
// and max in milliseconds.
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "bench_common.hpp"
#include "bench_subcommands.hpp"
#include "flashback/error.hpp"
#include "flashback/retrieval/index.hpp"

namespace flashback::cli {

namespace {
struct BenchRetrieveArgs {
  std::string index, text, forbidden;
  int64_t queries = 200, query_words = 24, k = 1, warmup = 20;
  uint64_t seed = 0;
  bool json = false;
};

std::vector<std::string> read_words(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw FormatError(path, "cannot open the query text");
  std::vector<std::string> words;
  std::string w;
  while (f >> w) words.push_back(w);
  return words;
}

void bench_retrieve(const BenchRetrieveArgs& a) {
  const std::vector<std::string> words = read_words(a.text);
  if (int64_t(words.size()) < a.query_words + 1)
    throw InvalidArgument(a.text + ": has " + std::to_string(words.size()) + " words, fewer than --query-words " +
                          std::to_string(a.query_words));
  std::unique_ptr<Retriever> r = open_index(a.index);
  if (!a.forbidden.empty()) r->set_title_filter(TitleFilter::from_file(a.forbidden));
  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<size_t> at(0, words.size() - size_t(a.query_words));
  auto make_query = [&] {
    const size_t s = at(rng);
    std::string q;
    for (size_t i = s; i < s + size_t(a.query_words); ++i) q += (i > s ? " " : "") + words[i];
    return q;
  };
  for (int64_t i = 0; i < a.warmup; ++i) (void)r->retrieve(make_query(), a.k);
  std::vector<double> ms;
  int64_t found = 0;
  for (int64_t i = 0; i < a.queries; ++i) {
    const std::string q = make_query();
    const auto t0 = bench::Clock::now();
    const std::vector<Passage> got = r->retrieve(q, a.k);
    ms.push_back(1e3 * bench::since(t0));
    found += got.empty() ? 0 : 1;
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  double mean = 0;
  for (double v : ms) mean += v / double(ms.size());
  nlohmann::ordered_json j;
  j["bench"] = "retrieve";
  j["index"] = a.index;
  j["passages"] = r->size();
  j["queries"] = a.queries;
  j["query_words"] = a.query_words;
  j["k"] = a.k;
  j["answered"] = found;
  j["median_ms"] = bench::median(ms);
  j["p90_ms"] = sorted[std::min(sorted.size() - 1, size_t(0.9 * double(sorted.size())))];
  j["mean_ms"] = mean;
  j["max_ms"] = sorted.back();
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("bench retrieve  %s (%lld passages), %lld queries of %lld words, top %lld\n", a.index.c_str(),
              (long long)r->size(), (long long)a.queries, (long long)a.query_words, (long long)a.k);
  std::printf("median %.3f ms, p90 %.3f ms, mean %.3f ms, max %.3f ms (%lld answered)\n", j["median_ms"].get<double>(),
              j["p90_ms"].get<double>(), mean, sorted.back(), (long long)found);
}
}  // namespace

void add_bench_retrieve(CLI::App& bench) {
  auto a = std::make_shared<BenchRetrieveArgs>();
  CLI::App* cmd = bench.add_subcommand("retrieve", "query latency of an index (queries: word windows of a text)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--index,-i", a->index, "index directory (built by `flashback index`)")->required();
  cmd->add_option("--text", a->text, "text to cut queries from")->required();
  cmd->add_option("--queries", a->queries, "timed queries")->check(CLI::PositiveNumber);
  cmd->add_option("--query-words", a->query_words, "words per query (24 words ~ the paper's 32 tokens)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("-k", a->k, "passages per query")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", a->warmup, "untimed queries first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--forbidden-titles", a->forbidden, "file of titles (one per line) never to return");
  cmd->add_option("--seed", a->seed, "query positions");
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a] { bench_retrieve(*a); });
}

}  // namespace flashback::cli
