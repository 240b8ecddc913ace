#include "flashback/report.hpp"

#include <nlohmann/json.hpp>

namespace flashback {

namespace {
nlohmann::ordered_json stats_object(const ContextStats& s) {
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
}  // namespace

std::string to_json(const ContextStats& stats) { return stats_object(stats).dump(); }

std::string to_json(const std::vector<Passage>& passages) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const Passage& p : passages)
    list.push_back({{"id", p.id}, {"title", p.title}, {"text", p.text}, {"score", p.score}, {"document", p.document()}});
  return list.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string to_json(const std::vector<RetrievalRecord>& history) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const RetrievalRecord& r : history) {
    nlohmann::ordered_json j, titles = nlohmann::ordered_json::array(), scores = nlohmann::ordered_json::array();
    for (const Passage& p : r.passages) {
      titles.push_back(p.title);
      scores.push_back(p.score);
    }
    j["position"] = r.position;
    j["query"] = r.query;
    j["titles"] = titles;
    j["scores"] = scores;
    out.push_back(j);
  }
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string to_json(const EvalResult& r) {
  nlohmann::ordered_json j;
  j["ppl"] = r.ppl();
  j["nll"] = r.nll();
  j["nll_sum"] = r.nll_sum;
  j["tokens"] = r.tokens;
  j["stats"] = stats_object(r.stats);
  return j.dump();
}

}  // namespace flashback
