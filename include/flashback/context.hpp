// FlashBack's contexts: which tokens the KV cache holds, at which positions,
// and what must be re-encoded when a retrieval brings new documents.
//
//   AppendingContext  (FlashBack)        [input][<MARK_L> docs <MARK_R>][recent]
//   PrependingContext (In-Context RALM)  [BOS][<MARK_L>? docs <MARK_R>?][input][recent]
//   NoRetrievalContext                   [input][recent]
//
// (layout.hpp writes the three layouts out.) "recent" are the tokens appended
// since the last retrieval. At a retrieval (place()) they join the input.
// Appending truncates the cache to the end of the old input and re-encodes
// only recent + the new document block: s + |doc| + 2 tokens whatever the
// input's length. Prepending changes the prefix, so it re-encodes
// everything: |doc| (+2) + |input|.
//
// Every forward passes the slots' RoPE positions explicitly: the slots
// themselves, except that an appended block may sit below the input in
// position (DocPositions::Before, layout.hpp; the default), where place()
// predicts the next token from the input's last slot. With kv_reuse = false every step recomputes the whole layout
// from scratch: the reference that proves the fast path exact.
//
// Window policy: the layout may use `max_length` positions. A retrieval needs
// |input| + |block| + stride <= max_length (the stride: the tokens appended
// before the next retrieval). When that fails, the input slides: its first
// token (BOS when the tokenizer adds one; the text's first token for one that
// adds none, as SmolLM2's) stays at position 0, the anchor of the window, and
// only the newest input tokens are kept, leaving a fraction
// `window_keep` of the input budget (1.0 drops as little as possible, smaller
// values slide less often); the kept input is re-encoded from position 1.
// Appending past max_length between retrievals folds the tokens appended so
// far into the input and slides it the same way, keeping the current
// documents. Nothing is ever written past the cache's capacity: a block that
// cannot fit with the stride and at least one input token is an
// InvalidArgument.
//
// Templated over the model: anything with
//   hidden_states(tokens [1, T], positions [T], KVCacheStore*) -> [1, T, C]
//   logits(hidden [..., C]) -> [..., V],  config() (a LlamaConfig),  device()
// and, for make_context_cache, make_cache(batch, capacity, kv_dtype)
// (LlamaForCausalLMImpl; the tests' recording model). A context is one
// sequence: not thread-safe; many contexts may share one model.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/layout.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/options.hpp"

namespace flashback {

// Counters and time splits; the loops add retrieval time.
struct ContextStats {
  int64_t retrievals = 0;        // place() calls that brought at least one document
  int64_t tokens_reencoded = 0;  // tokens encoded by place() and window slides
  int64_t tokens_decoded = 0;    // tokens encoded by append()
  int64_t window_slides = 0;
  int64_t forwards = 0;          // model calls
  double retrieve_seconds = 0;   // filled in by the loops
  double reencode_seconds = 0;
  double decode_seconds = 0;
  std::vector<int64_t> reencoded_per_place;  // tokens encoded by each place(), in order
};

template <class Model>
class ContextBase {
 public:
  virtual ~ContextBase() = default;
  ContextBase(const ContextBase&) = delete;
  ContextBase& operator=(const ContextBase&) = delete;

  // Starts a new sequence; nothing is encoded until place().
  void reset(std::vector<int64_t> input) {
    if (input.empty()) throw InvalidArgument("the input is empty (it needs at least one token: BOS, or the first of the text)");
    input_ = std::move(input);
    block_.clear();
    recent_.clear();
    held_.clear();
    layout_.clear();
    positions_.clear();
    input_in_layout_ = 0;
    encoded_ = 0;
    last_logits_ = at::Tensor();
    cache_->clear();
    stats_ = {};
  }

  // Places the documents of a retrieval (none is fine: then no block at all;
  // mode none ignores them) and returns the logits [V] for the token that
  // follows the layout: from its last slot, or with the block below the input
  // in position (DocPositions::Before) from the input's last slot.
  at::Tensor place(const std::vector<std::vector<int64_t>>& docs) {
    if (input_.empty()) throw InvalidArgument("place() before reset(): no input");
    auto t0 = std::chrono::steady_clock::now();
    const int64_t old_input = input_in_layout_, old_layout = static_cast<int64_t>(layout_.size());
    input_.insert(input_.end(), recent_.begin(), recent_.end());  // the recent tokens join the input
    input_.insert(input_.end(), held_.begin(), held_.end());
    recent_.clear();
    held_.clear();
    block_ = document_block(options_.mode, docs, block_marks());
    check_block_fits(static_cast<int64_t>(block_.size()));
    int64_t from = first_changed_slot(options_.mode, old_input, old_layout);
    const int64_t budget = options_.max_length - static_cast<int64_t>(block_.size()) - options_.stride;
    if (static_cast<int64_t>(input_.size()) > budget && slide_input(budget)) from = std::min<int64_t>(from, 1);
    rebuild_layout();
    const int64_t predictor = predicting_slot(options_.mode, options_.doc_positions, input_in_layout_,
                                              static_cast<int64_t>(block_.size()));
    const int64_t encoded = encode_from(from, predictor);
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
    if (!held_.empty()) throw InvalidArgument("append after hold(): place() encodes the held tokens first");
    auto t0 = std::chrono::steady_clock::now();
    const int64_t n = static_cast<int64_t>(tokens.size());
    int64_t from = static_cast<int64_t>(layout_.size());
    if (from + n <= options_.max_length) {
      for (int64_t i = 0; i < n; ++i)  // per decoded token: only the new slots' positions
        positions_.push_back(recent_position(options_.mode, options_.doc_positions, options_.position_offset,
                                             input_in_layout_, static_cast<int64_t>(block_.size()),
                                             static_cast<int64_t>(recent_.size()) + i));
      recent_.insert(recent_.end(), tokens.begin(), tokens.end());
      layout_.insert(layout_.end(), tokens.begin(), tokens.end());
    } else {
      // Past the window between retrievals: the tokens appended so far join
      // the input, which slides; the documents stay; the new tokens follow.
      const int64_t budget = options_.max_length - static_cast<int64_t>(block_.size()) - std::max(n, options_.stride);
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

  // Adds tokens to the text without encoding them: the next place() encodes
  // them with the recent tokens. The loops hold the last token sampled before
  // a retrieval: appending it would run a decode step whose slot the
  // retrieval re-encodes at once (one wasted step per retrieval). Only
  // place() may follow.
  void hold(const std::vector<int64_t>& tokens) {
    if (layout_.empty()) throw InvalidArgument("hold before place(): the input is not encoded yet");
    held_.insert(held_.end(), tokens.begin(), tokens.end());
  }

  // Throws InvalidArgument unless a block of `document_tokens` tokens of
  // documents (with the marks when they are on) plus the stride leaves room
  // for at least one input token in the window: the loops ask before they
  // start, with the largest block their source can bring.
  void check_documents_fit(int64_t document_tokens) const {
    if (!retrieves() || document_tokens <= 0) return;
    check_block_fits(document_tokens + (options_.marks ? 2 : 0));
  }

  ContextMode mode() const { return options_.mode; }
  bool retrieves() const { return options_.retrieves(); }
  const ContextOptions& options() const { return options_; }
  const MarkingToken& marks() const { return marks_; }
  Model& model() const { return *model_; }
  const std::vector<int64_t>& layout() const { return layout_; }
  // The RoPE position of each slot of layout() (layout.hpp's layout_positions).
  const std::vector<int64_t>& positions() const { return positions_; }
  // The running token sequence: input (after any slide) + recent + held.
  std::vector<int64_t> text() const {
    std::vector<int64_t> t = input_;
    t.insert(t.end(), recent_.begin(), recent_.end());
    t.insert(t.end(), held_.begin(), held_.end());
    return t;
  }
  const ContextStats& stats() const { return stats_; }
  ContextStats& stats() { return stats_; }

 protected:
  // `options` resolved for `mode` (options.hpp); marks: the model's marking
  // tokens (absent: a model without them), which are also stripped from the
  // logits the loops sample and score.
  ContextBase(ContextMode mode, Model& model, KVCacheStore& cache, MarkingToken marks, const RalmOptions& options)
      : model_(&model),
        cache_(&cache),
        marks_(marks),
        options_(ContextOptions::resolve(mode, options, model.config().max_position_embeddings)) {
    if (options_.marks && !marks_.present())
      throw InvalidArgument("marks are on but the model has no marking tokens (add them first)");
    const int64_t max_positions = model.config().max_position_embeddings;
    if (options_.max_length > cache.capacity())
      throw InvalidArgument("max length " + std::to_string(options_.max_length) + " exceeds the cache capacity (" +
                            std::to_string(cache.capacity()) + ")");
    if (options_.position_offset + options_.max_length > max_positions)
      throw InvalidArgument("max length " + std::to_string(options_.max_length) +
                            (options_.position_offset ? " + the documents' " + std::to_string(options_.position_offset) +
                                                            " positions before the input (doc_positions after needs none)"
                                                      : std::string()) +
                            " exceeds the model's maximum position (" + std::to_string(max_positions) + ")");
    if (options_.stride >= options_.max_length)
      throw InvalidArgument("the stride (" + std::to_string(options_.stride) + ") must be below the max length (" +
                            std::to_string(options_.max_length) + ")");
    if (cache.batch() != 1) throw InvalidArgument("a RALM context needs a cache of batch 1");
  }

 private:
  // The marks that bracket documents: the model's when the options turn them on.
  MarkingToken block_marks() const { return options_.marks ? marks_ : MarkingToken(); }

  void check_block_fits(int64_t block) const {
    if (options_.position_offset > 0 && block > options_.position_offset)
      throw InvalidArgument("documents of " + std::to_string(block) + " tokens" + (options_.marks ? " (with marks)" : "") +
                            " exceed the " + std::to_string(options_.position_offset) +
                            " positions kept for them before the input (k x doc_tokens + marks)");
    if (block + options_.stride + 1 > options_.max_length)
      throw InvalidArgument("documents of " + std::to_string(block) + " tokens" + (options_.marks ? " (with marks)" : "") +
                            " plus the stride of " + std::to_string(options_.stride) +
                            " leave no room for the input within max length " + std::to_string(options_.max_length));
  }

  void rebuild_layout() {
    layout_ = build_layout(options_.mode, input_, block_, recent_, model_->config().bos_token_id);
    input_in_layout_ = static_cast<int64_t>(input_.size());
    positions_ = layout_positions(options_.mode, options_.doc_positions, options_.position_offset, input_in_layout_,
                                  static_cast<int64_t>(block_.size()), static_cast<int64_t>(recent_.size()));
  }

  // Keeps input_[0] (the anchor) and the newest tokens: |input| <= keep fraction of
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

  // Encodes layout_[from:] (the whole layout when kv_reuse is off) and keeps
  // the logits of slot `predictor` as the next prediction. Returns how many
  // tokens went through the model.
  int64_t encode_from(int64_t from, int64_t predictor) {
    const int64_t n = static_cast<int64_t>(layout_.size());
    if (options_.kv_reuse && std::min(from, encoded_) >= n && last_logits_.defined() && predictor == n - 1)
      return 0;  // nothing new
    at::Tensor h = encode_hidden(from, predictor);                                       // [1, n - from, C]
    last_logits_ = model_->logits(h.select(1, predictor - effective_from_)).squeeze(0);  // [V]
    return n - effective_from_;
  }

  // Encodes from `from` and returns the logits of the last `rows` slots:
  // [rows, V]; the last becomes the next prediction.
  at::Tensor encode_rows(int64_t from, int64_t rows) {
    const int64_t n = static_cast<int64_t>(layout_.size());
    rows = std::min(rows, n);
    at::Tensor h = encode_hidden(from, n - rows);                                     // [1, n - from, C]
    at::Tensor out = model_->logits(h.narrow(1, h.size(1) - rows, rows)).squeeze(0);  // [rows, V]
    last_logits_ = out.select(0, rows - 1);                                           // [V]
    return out;
  }

  // Runs layout_[from:] through the model, from `need` at the latest (the
  // rows asked for) and from 0 when kv_reuse is off; the cache then holds
  // the whole layout. Returns the hidden states [1, n - effective_from_, C].
  at::Tensor encode_hidden(int64_t from, int64_t need) {
    const int64_t n = static_cast<int64_t>(layout_.size());
    from = std::min({from, encoded_, need, n - 1});
    if (!options_.kv_reuse) from = 0;
    effective_from_ = from;
    cache_->truncate(std::min(from, cache_->size()));
    // On the host: the model checks them there (on a GPU a check of device ids waits for the device) and
    // copies them once.
    at::Tensor ids = at::tensor(std::vector<int64_t>(layout_.begin() + from, layout_.end()), at::kLong)
                         .view({1, -1});                                                               // [1, n - from]
    at::Tensor positions = at::tensor(std::vector<int64_t>(positions_.begin() + from, positions_.end()), at::kLong);  // [n - from]
    at::Tensor h = model_->hidden_states(ids, positions, cache_);  // [1, n - from, C]
    encoded_ = n;
    ++stats_.forwards;
    return h;
  }

  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Model* model_;
  KVCacheStore* cache_;
  MarkingToken marks_;
  ContextOptions options_;
  std::vector<int64_t> input_;   // anchor (BOS or the first token) + input (+ the recent tokens folded in at each place())
  std::vector<int64_t> block_;   // the document block of the last place()
  std::vector<int64_t> recent_;  // appended since the last place()
  std::vector<int64_t> held_;    // after recent_, not encoded: the next place() encodes them (hold())
  std::vector<int64_t> layout_;  // token per cache slot
  std::vector<int64_t> positions_;  // RoPE position per cache slot
  int64_t input_in_layout_ = 0;  // |input_| when the layout was last built
  int64_t encoded_ = 0;          // layout_[0, encoded_) is valid in the cache
  int64_t effective_from_ = 0;
  at::Tensor last_logits_;       // [V] after the last slot
  ContextStats stats_;
};

// A context of one mode: the three names below. ContextBase does the work;
// the mode picks the layout (layout.hpp).
template <class Model, ContextMode Mode>
class ModeContext : public ContextBase<Model> {
 public:
  ModeContext(Model& model, KVCacheStore& cache, MarkingToken marks, const RalmOptions& options)
      : ContextBase<Model>(Mode, model, cache, marks, options) {}
};

// FlashBack: [input][block][recent]. The input's cache survives retrievals:
// a place() re-encodes from the old input's end (recent + new block).
template <class Model>
using AppendingContext = ModeContext<Model, ContextMode::Append>;

// In-Context RALM: [BOS][block][rest of the input][recent]. A new block moves
// every later position, so each place() recomputes everything.
template <class Model>
using PrependingContext = ModeContext<Model, ContextMode::Prepend>;

// No retrieval: [input][recent]; place() ignores documents and only encodes
// what is new.
template <class Model>
using NoRetrievalContext = ModeContext<Model, ContextMode::None>;

// The context of `mode` over `cache` (the one place a mode becomes a class).
template <class Model>
std::unique_ptr<ContextBase<Model>> make_context(ContextMode mode, Model& model, KVCacheStore& cache,
                                                 const MarkingToken& marks, const RalmOptions& options) {
  switch (mode) {
    case ContextMode::Append: return std::make_unique<AppendingContext<Model>>(model, cache, marks, options);
    case ContextMode::Prepend: return std::make_unique<PrependingContext<Model>>(model, cache, marks, options);
    case ContextMode::None: return std::make_unique<NoRetrievalContext<Model>>(model, cache, marks, options);
  }
  throw InvalidArgument("unknown context mode");
}

// A cache sized for contexts over `model` with `options`: max_length slots,
// the most any mode resolves to (the one sizing rule), in options.kv_dtype.
template <class Model>
KVCacheStore make_context_cache(const Model& model, const RalmOptions& options) {
  const int64_t max_positions = model.config().max_position_embeddings;
  int64_t slots = 0;
  for (ContextMode m : {ContextMode::Append, ContextMode::Prepend, ContextMode::None})
    slots = std::max(slots, ContextOptions::resolve(m, options, max_positions).max_length);
  return model.make_cache(1, slots, RalmOptions::parse_kv_dtype(options.kv_dtype));
}

}  // namespace flashback
