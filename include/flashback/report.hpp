// The results of the loops as JSON text, with the same keys wherever they are
// shown: the CLI's --json output and the dicts the Python package returns.
#pragma once

#include <string>

#include "flashback/context.hpp"
#include "flashback/documents.hpp"
#include "flashback/evaluate.hpp"
#include "flashback/retrieval/retriever.hpp"

namespace flashback {

// {"retrievals", "tokens_reencoded", "tokens_decoded", "window_slides",
//  "forwards", "retrieve_seconds", "reencode_seconds", "decode_seconds",
//  "total_seconds", "reencoded_per_place"}
std::string to_json(const ContextStats& stats);

// {"ppl", "nll" (mean per scored token, nats), "nll_sum", "tokens", "stats"}
std::string to_json(const EvalResult& result);

// [{"id", "title", "text", "score", "document"}, ...], best first (invalid
// UTF-8 replaced).
std::string to_json(const std::vector<Passage>& passages);

// The retrievals of a run, in order: [{"position" (tokens of text before it),
// "query", "titles", "scores"}, ...] (RetrievedDocuments::history()).
std::string to_json(const std::vector<RetrievalRecord>& history);

}  // namespace flashback
