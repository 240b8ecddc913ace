// FlashBack's contexts: which tokens the KV cache holds, at which positions,
// and what must be re-encoded when a retrieval brings new documents.
//
//   AppendingContext  (FlashBack)        [input][<MARK_L> docs <MARK_R>][recent]
//   PrependingContext (In-Context RALM)  [BOS][<MARK_L>? docs <MARK_R>?][input][recent]
//   NoRetrievalContext                   [input][recent]
//
// "recent" are the tokens appended since the last retrieval. At a retrieval
// (place()) they join the input. Appending truncates the cache to the end of
// the old input and re-encodes only recent + the new document block:
// s + |doc| + 2 tokens whatever the input's length. Prepending changes the
// prefix, so it re-encodes everything: |doc| (+2) + |input|.
//
// Slots are positions (contiguous from 0). With kv_reuse = false every step
// recomputes the whole layout from scratch: the reference that proves the
// fast path exact.
//
// Window policy: the layout may use `max_length` positions. A retrieval needs
// |input| + |block| + reserve <= max_length (reserve = the tokens appended
// before the next retrieval, the stride). When that fails, the input slides:
// BOS stays at position 0 and only the newest input tokens are kept, leaving
// a fraction `window_keep` of the input budget (1.0 drops as little as
// possible, smaller values slide less often); the kept input is re-encoded
// from position 1. Appending past max_length between retrievals folds the
// tokens appended so far into the input and slides it the same way, keeping
// the current documents. Nothing is ever written
// past the cache's capacity: a block that cannot fit with the reserve and at
// least one input token is an InvalidArgument.
//
// Templated over the model: anything with hidden_states(tokens, positions,
// cache*), logits(hidden) and config() (LlamaForCausalLMImpl).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/marking_token.hpp"

namespace flashback {

enum class ContextMode { Append, Prepend, None };

inline ContextMode parse_context_mode(const std::string& s) {
  if (s == "append") return ContextMode::Append;
  if (s == "prepend") return ContextMode::Prepend;
  if (s == "none") return ContextMode::None;
  throw InvalidArgument("unknown mode '" + s + "' (append, prepend, none)");
}
inline const char* context_mode_name(ContextMode m) {
  return m == ContextMode::Append ? "append" : m == ContextMode::Prepend ? "prepend" : "none";
}

struct ContextOptions {
  bool marks = true;         // bracket documents with <MARK_L> ... <MARK_R> (needs a model with marks)
  bool kv_reuse = true;      // false: recompute the whole layout at every step (the exactness reference)
  int64_t max_length = 0;    // positions the layout may use; 0 = the cache's capacity
  int64_t reserve = 16;      // positions kept free after the documents (the stride)
  double window_keep = 0.5;  // on a slide, the fraction of the input budget kept
};

// Counters and time splits; the RALM loops add retrieval time.
struct ContextStats {
  int64_t retrievals = 0;        // place() calls that brought at least one document
  int64_t tokens_reencoded = 0;  // tokens encoded by place() and window slides
  int64_t tokens_decoded = 0;    // tokens encoded by append()
  int64_t window_slides = 0;
  int64_t forwards = 0;          // model calls
  double retrieve_seconds = 0;   // filled in by the RALM loop
  double reencode_seconds = 0;
  double decode_seconds = 0;
  std::vector<int64_t> reencoded_per_place;  // tokens encoded by each place(), in order
};

template <class Model>
class ContextBase {
 public:
  ContextBase(Model& model, KVCacheStore& cache, MarkingToken marks, ContextOptions options)
      : model_(&model), cache_(&cache), marks_(marks), options_(options) {
    const int64_t cap = std::min(cache.capacity(), model.config().max_position_embeddings);
    if (options_.max_length <= 0) options_.max_length = cap;
    if (options_.max_length > cap)
      throw InvalidArgument("max length " + std::to_string(options_.max_length) +
                            " exceeds the cache capacity / maximum position (" + std::to_string(cap) + ")");
    if (options_.reserve < 0 || options_.reserve >= options_.max_length)
      throw InvalidArgument("the reserve (stride) must be in [0, max length)");
    if (!(options_.window_keep > 0.0 && options_.window_keep <= 1.0))
      throw InvalidArgument("window_keep must be in (0, 1]");
    if (options_.marks && !marks_.present())
      throw InvalidArgument("marks are on but the model has no marking tokens (add them first)");
    if (cache.batch() != 1) throw InvalidArgument("a RALM context needs a cache of batch 1");
  }
  virtual ~ContextBase() = default;

  // Starts a new sequence; nothing is encoded until place().
  void reset(std::vector<int64_t> input) {
    if (input.empty()) throw InvalidArgument("the input is empty (it needs at least a BOS token)");
    input_ = std::move(input);
    block_.clear();
    recent_.clear();
    layout_.clear();
    input_in_layout_ = 0;
    encoded_ = 0;
    last_logits_ = at::Tensor();
    cache_->clear();
    stats_ = {};
  }

  // Places the documents of a retrieval (none is fine: then no block at all)
  // and returns the logits [V] for the token that follows the layout.
  at::Tensor place(const std::vector<std::vector<int64_t>>& docs) {
    auto t0 = std::chrono::steady_clock::now();
    const int64_t old_input = input_in_layout_, old_layout = static_cast<int64_t>(layout_.size());
    input_.insert(input_.end(), recent_.begin(), recent_.end());  // the recent tokens join the input
    recent_.clear();
    block_ = options_.marks ? marks_.wrap(docs) : MarkingToken().wrap(docs);
    if (static_cast<int64_t>(block_.size()) + options_.reserve + 1 > options_.max_length)
      throw InvalidArgument("documents of " + std::to_string(block_.size()) + " tokens (with marks) plus the stride of " +
                            std::to_string(options_.reserve) + " leave no room for the input within max length " +
                            std::to_string(options_.max_length));
    int64_t from = first_changed_slot(old_input, old_layout);
    const int64_t budget = options_.max_length - static_cast<int64_t>(block_.size()) - options_.reserve;
    if (static_cast<int64_t>(input_.size()) > budget && slide_input(budget)) from = std::min<int64_t>(from, 1);
    rebuild_layout();
    const int64_t encoded = encode_from(from, 1);
    stats_.tokens_reencoded += encoded;
    stats_.reencoded_per_place.push_back(encoded);
    if (!block_.empty()) ++stats_.retrievals;
    stats_.reencode_seconds += seconds_since(t0);
    return last_logits_;
  }

  // Appends tokens after the layout; returns logits [n, V] (row i predicts
  // the token after tokens[i]) or, with all_rows = false, the last row [1, V].
  at::Tensor append(const std::vector<int64_t>& tokens, bool all_rows = false) {
    if (tokens.empty()) throw InvalidArgument("append: no tokens");
    if (layout_.empty()) throw InvalidArgument("append before place(): the input is not encoded yet");
    auto t0 = std::chrono::steady_clock::now();
    const int64_t n = static_cast<int64_t>(tokens.size());
    int64_t from = static_cast<int64_t>(layout_.size());
    if (from + n <= options_.max_length) {
      recent_.insert(recent_.end(), tokens.begin(), tokens.end());
      layout_.insert(layout_.end(), tokens.begin(), tokens.end());
    } else {
      // Past the window between retrievals: the tokens appended so far join
      // the input, which slides; the documents stay; the new tokens follow.
      const int64_t budget = options_.max_length - static_cast<int64_t>(block_.size()) - std::max(n, options_.reserve);
      if (budget < 1)
        throw InvalidArgument("appending " + std::to_string(n) + " tokens after documents of " +
                              std::to_string(block_.size()) + " overflows max length " +
                              std::to_string(options_.max_length));
      input_.insert(input_.end(), recent_.begin(), recent_.end());
      recent_.assign(tokens.begin(), tokens.end());
      slide_input(budget);
      rebuild_layout();
      from = 1;
    }
    at::Tensor rows = encode_rows(from, all_rows ? n : 1);
    const int64_t encoded = static_cast<int64_t>(layout_.size()) - effective_from_;
    stats_.tokens_decoded += n;
    stats_.tokens_reencoded += encoded - n;
    stats_.decode_seconds += seconds_since(t0);
    return rows;
  }

  const std::vector<int64_t>& layout() const { return layout_; }
  // The running token sequence: input (after any slide) + recent.
  std::vector<int64_t> text() const {
    std::vector<int64_t> t = input_;
    t.insert(t.end(), recent_.begin(), recent_.end());
    return t;
  }
  const ContextStats& stats() const { return stats_; }
  ContextStats& stats() { return stats_; }
  const ContextOptions& options() const { return options_; }
  const MarkingToken& marks() const { return marks_; }

 protected:
  // The layout for the current input_, block_ and recent_.
  virtual std::vector<int64_t> build_layout() const = 0;
  // The first slot a place() changes, given the input's length and the
  // layout's length before it (the recent tokens have joined the input).
  virtual int64_t first_changed_slot(int64_t old_input, int64_t old_layout) const = 0;

  void rebuild_layout() {
    layout_ = build_layout();
    input_in_layout_ = static_cast<int64_t>(input_.size());
  }

  // Keeps input_[0] and the newest tokens: |input| <= keep fraction of
  // `budget`. Returns whether anything was dropped.
  bool slide_input(int64_t budget) {
    int64_t keep = static_cast<int64_t>(std::floor(options_.window_keep * double(budget)));
    keep = std::max<int64_t>(1, std::min(keep, budget));
    if (static_cast<int64_t>(input_.size()) <= keep) return false;
    std::vector<int64_t> kept = {input_.front()};
    kept.insert(kept.end(), input_.end() - (keep - 1), input_.end());
    input_ = std::move(kept);
    ++stats_.window_slides;
    return true;
  }

  // Encodes layout_[from:] (the whole layout when kv_reuse is off); keeps
  // the last row's logits. Returns how many tokens went through the model.
  int64_t encode_from(int64_t from, int64_t rows) {
    const int64_t n = static_cast<int64_t>(layout_.size());
    if (options_.kv_reuse && std::min(from, encoded_) >= n && last_logits_.defined()) return 0;  // nothing new
    encode_rows(from, rows);
    return n - effective_from_;
  }

  // As encode_from; returns the logits of the last `rows` slots: [rows, V].
  at::Tensor encode_rows(int64_t from, int64_t rows) {
    const int64_t n = static_cast<int64_t>(layout_.size());
    from = std::min({from, encoded_, n - 1});  // at least the last slot, for its logits
    if (!options_.kv_reuse) from = 0;
    effective_from_ = from;
    cache_->truncate(std::min(from, cache_->size()));
    std::vector<int64_t> todo(layout_.begin() + from, layout_.end());
    at::Tensor ids = at::tensor(todo, at::kLong).view({1, -1}).to(model_->device());  // [1, n - from]
    at::Tensor h = model_->hidden_states(ids, {}, cache_);                            // [1, n - from, C]
    rows = std::min<int64_t>(rows, n - from);
    at::Tensor out = model_->logits(h.narrow(1, h.size(1) - rows, rows)).squeeze(0);  // [rows, V]
    last_logits_ = out.select(0, rows - 1);                                           // [V]
    encoded_ = n;
    ++stats_.forwards;
    return out;
  }

  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Model* model_;
  KVCacheStore* cache_;
  MarkingToken marks_;
  ContextOptions options_;
  std::vector<int64_t> input_;   // BOS + input (+ the recent tokens folded in at each place())
  std::vector<int64_t> block_;   // the document block of the last place()
  std::vector<int64_t> recent_;  // appended since the last place()
  std::vector<int64_t> layout_;  // token per cache slot
  int64_t input_in_layout_ = 0;  // |input_| when the layout was last built
  int64_t encoded_ = 0;          // layout_[0, encoded_) is valid in the cache
  int64_t effective_from_ = 0;
  at::Tensor last_logits_;       // [V] after the last slot
  ContextStats stats_;
};

// FlashBack: [input][block][recent]. The input's cache survives retrievals:
// a place() re-encodes from the old input's end (recent + new block).
template <class Model>
class AppendingContext : public ContextBase<Model> {
 public:
  using ContextBase<Model>::ContextBase;

 protected:
  std::vector<int64_t> build_layout() const override {
    std::vector<int64_t> l = this->input_;
    l.insert(l.end(), this->block_.begin(), this->block_.end());
    l.insert(l.end(), this->recent_.begin(), this->recent_.end());
    return l;
  }
  int64_t first_changed_slot(int64_t old_input, int64_t) const override { return old_input; }
};

// In-Context RALM: [BOS][block][rest of the input][recent]. A new block moves
// every later position, so each place() recomputes everything.
template <class Model>
class PrependingContext : public ContextBase<Model> {
 public:
  using ContextBase<Model>::ContextBase;

 protected:
  std::vector<int64_t> build_layout() const override {
    const auto& in = this->input_;
    const bool bos = in.front() == this->model_->config().bos_token_id;
    std::vector<int64_t> l;
    if (bos) l.push_back(in.front());
    l.insert(l.end(), this->block_.begin(), this->block_.end());
    l.insert(l.end(), in.begin() + (bos ? 1 : 0), in.end());
    l.insert(l.end(), this->recent_.begin(), this->recent_.end());
    return l;
  }
  int64_t first_changed_slot(int64_t, int64_t) const override { return 0; }
};

// No retrieval: [input][recent]; documents are ignored and place() only
// encodes what is new.
template <class Model>
class NoRetrievalContext : public ContextBase<Model> {
 public:
  using ContextBase<Model>::ContextBase;

  at::Tensor place(const std::vector<std::vector<int64_t>>&) { return ContextBase<Model>::place({}); }

 protected:
  std::vector<int64_t> build_layout() const override {
    std::vector<int64_t> l = this->input_;
    l.insert(l.end(), this->recent_.begin(), this->recent_.end());
    return l;
  }
  int64_t first_changed_slot(int64_t, int64_t old_layout) const override { return old_layout; }
};

}  // namespace flashback
