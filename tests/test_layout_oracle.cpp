// The layout oracle: the contexts and loops instantiated with a model that
// only records what it is given. For append / prepend / none, marks on and
// off, one and two documents, and a sliding window, the test states by hand
// exactly which tokens are encoded at which positions (and cache slots) at
// each step, and what the loops generate. The kv_reuse = false reference in
// test_context.cpp shares build_layout with the fast path; this does not.
#include <c10/core/InferenceMode.h>

#include <utility>
#include <vector>

#include "flashback/config.hpp"
#include "flashback/context.hpp"
#include "flashback/documents.hpp"
#include "flashback/evaluate.hpp"
#include "flashback/generate.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;

namespace {

constexpr int64_t kVocab = 100;  // the marks are 98 and 99
constexpr int64_t L = 98, R = 99;

struct Encoded {
  int64_t token, position, slot;
};
using Call = std::vector<std::pair<int64_t, int64_t>>;  // (token, position); the slot must equal the position

// Satisfies the contexts' Model: it records every forward and "predicts"
// token 20 + (p + 1) % 70 after the token at position p, so what the loops
// generate shows the positions they used.
class RecordingModel {
 public:
  RecordingModel() {
    config_.vocab_size = kVocab;
    config_.max_position_embeddings = 64;
    config_.bos_token_id = 1;
    config_.eos_token_ids = {2};
  }
  const LlamaConfig& config() const { return config_; }
  at::Device device() const { return at::kCPU; }
  KVCacheStore make_cache(int64_t batch, int64_t capacity, std::optional<at::ScalarType> kv_dtype = std::nullopt) const {
    return KVCacheStore(1, batch, 1, capacity, 1, at::TensorOptions().dtype(kv_dtype.value_or(at::kFloat)));
  }

  // tokens [1, T], positions [T] -> "hidden states" [1, T, 1]: the positions.
  at::Tensor hidden_states(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore* cache) {
    REQUIRE(positions.defined());  // the contexts always say where
    const int64_t T = tokens.size(1), first_slot = cache->size();
    std::vector<Encoded> call;
    for (int64_t i = 0; i < T; ++i)
      call.push_back({tokens[0][i].item<int64_t>(), positions[i].item<int64_t>(), first_slot + i});
    calls.push_back(call);
    cache->commit(T);
    return positions.to(at::kFloat).view({1, T, 1});
  }
  // hidden [..., 1] -> logits [..., V]: a one-hot at 20 + (p + 1) % 70.
  at::Tensor logits(const at::Tensor& hidden) const {
    at::Tensor p = hidden.squeeze(-1).to(at::kLong);                                                // [...]
    return at::one_hot((p + 1).remainder(70) + 20, kVocab).to(at::kFloat);                          // [..., V]
  }

  std::vector<std::vector<Encoded>> calls;

 private:
  LlamaConfig config_;
};

int64_t next_after(int64_t position) { return 20 + (position + 1) % 70; }

// The recorded calls against the ones written out by hand.
void check_calls(const RecordingModel& m, const std::vector<Call>& want) {
  REQUIRE(m.calls.size() == want.size());
  for (size_t c = 0; c < want.size(); ++c) {
    INFO("forward " << c);
    std::vector<std::pair<int64_t, int64_t>> got;
    for (const Encoded& e : m.calls[c]) {
      CHECK(e.slot == e.position);
      got.emplace_back(e.token, e.position);
    }
    CHECK(got == want[c]);
  }
}

// Tokens `t` at positions from..from + |t| - 1.
Call from(int64_t position, std::vector<int64_t> tokens) {
  Call c;
  for (int64_t t : tokens) c.emplace_back(t, position++);
  return c;
}

Call cat(std::initializer_list<Call> parts) {
  Call c;
  for (const auto& p : parts) c.insert(c.end(), p.begin(), p.end());
  return c;
}

// The paper's positions (slot = position); doc_positions before has its own cases below.
RalmOptions options(bool marks, int64_t stride = 2, int64_t max_length = 64) {
  RalmOptions o;
  o.doc_positions = "after";
  o.marks = marks;
  o.stride = stride;
  o.max_length = max_length;
  return o;
}

const std::vector<int64_t> kPrompt = {1, 10, 11};
// Retrieval 1 brings one document, retrieval 2 another, then nothing.
std::vector<std::vector<std::vector<int64_t>>> one_doc() { return {{{50, 51}}, {{60, 61, 62}}}; }
// k = 2: two documents per retrieval.
std::vector<std::vector<std::vector<int64_t>>> two_docs() { return {{{50, 51}, {52}}, {{60}, {61, 62}}}; }

struct Run {
  std::vector<int64_t> ids;
  std::vector<std::vector<int64_t>> asked;  // the text each retrieval was asked for
  ContextStats stats;
};

Run generate_with(ContextMode mode, RecordingModel& m, const RalmOptions& o,
                  std::vector<std::vector<std::vector<int64_t>>> docs, int64_t n) {
  KVCacheStore cache = make_context_cache(m, o);
  auto ctx = make_context(mode, m, cache, MarkingToken(kVocab), o);
  FixedDocuments source(std::move(docs));
  GenerateResult r = generate(*ctx, source, kPrompt, flashback::test::greedy(n));
  CHECK(cache.size() == static_cast<int64_t>(ctx->layout().size()));
  return {r.ids, source.texts, r.stats};
}

}  // namespace

TEST_CASE("oracle: appending re-encodes only the recent tokens and the new block", "[oracle]") {
  for (const bool marks : {true, false}) {
    INFO("marks " << marks);
    RecordingModel m;
    Run r = generate_with(ContextMode::Append, m, options(marks), one_doc(), 5);
    const std::vector<int64_t> b1 = marks ? std::vector<int64_t>{L, 50, 51, R} : std::vector<int64_t>{50, 51};
    const std::vector<int64_t> b2 = marks ? std::vector<int64_t>{L, 60, 61, 62, R} : std::vector<int64_t>{60, 61, 62};
    const int64_t e1 = 3 + int64_t(b1.size()) - 1;  // the last position of the first layout
    const int64_t g0 = next_after(e1), g1 = next_after(e1 + 1);
    // [BOS 10 11][block 1]; g0 appended, g1 (the last before a retrieval) held, not encoded alone; then
    // [BOS 10 11 g0 g1][block 2]: from the old input's end.
    const int64_t e2 = 5 + int64_t(b2.size()) - 1;
    const int64_t g2 = next_after(e2), g3 = next_after(e2 + 1);
    check_calls(m, {cat({from(0, {1, 10, 11}), from(3, b1)}),
                    from(e1 + 1, {g0}),
                    cat({from(3, {g0, g1}), from(5, b2)}),
                    from(e2 + 1, {g2}),
                    from(5, {g2, g3})});  // the third retrieval brings nothing: no block, the input grows
    CHECK(r.ids == std::vector<int64_t>{g0, g1, g2, g3, next_after(6)});
    CHECK(r.asked == std::vector<std::vector<int64_t>>{{1, 10, 11}, {1, 10, 11, g0, g1}, {1, 10, 11, g0, g1, g2, g3}});
    CHECK(r.stats.reencoded_per_place == std::vector<int64_t>{3 + int64_t(b1.size()), 2 + int64_t(b2.size()), 2});
    CHECK(r.stats.retrievals == 2);
  }
}

TEST_CASE("oracle: prepending re-encodes everything after BOS, BOS first", "[oracle]") {
  for (const bool marks : {true, false}) {
    INFO("marks " << marks);
    RecordingModel m;
    Run r = generate_with(ContextMode::Prepend, m, options(marks), one_doc(), 5);
    const std::vector<int64_t> b1 = marks ? std::vector<int64_t>{L, 50, 51, R} : std::vector<int64_t>{50, 51};
    const std::vector<int64_t> b2 = marks ? std::vector<int64_t>{L, 60, 61, 62, R} : std::vector<int64_t>{60, 61, 62};
    const int64_t n1 = int64_t(b1.size()), n2 = int64_t(b2.size());
    const int64_t g0 = next_after(n1 + 2), g1 = next_after(n1 + 3);
    const int64_t g2 = next_after(n2 + 4), g3 = next_after(n2 + 5);
    check_calls(m, {cat({from(0, {1}), from(1, b1), from(1 + n1, {10, 11})}),
                    from(n1 + 3, {g0}),
                    cat({from(0, {1}), from(1, b2), from(1 + n2, {10, 11, g0, g1})}),  // g1 held, encoded here
                    from(n2 + 5, {g2}),
                    from(0, {1, 10, 11, g0, g1, g2, g3})});  // no document: the prefix moved back, all again
    CHECK(r.ids == std::vector<int64_t>{g0, g1, g2, g3, next_after(6)});
    CHECK(r.stats.reencoded_per_place == std::vector<int64_t>{3 + n1, 5 + n2, 7});
  }
}

TEST_CASE("oracle: no retrieval encodes the prompt once and never asks for documents", "[oracle]") {
  RecordingModel m;
  Run r = generate_with(ContextMode::None, m, options(/*marks=*/true), one_doc(), 5);
  check_calls(m, {from(0, {1, 10, 11}), from(3, {next_after(2)}), from(4, {next_after(3)}), from(5, {next_after(4)}),
                  from(6, {next_after(5)})});
  CHECK(r.ids == std::vector<int64_t>{next_after(2), next_after(3), next_after(4), next_after(5), next_after(6)});
  CHECK(r.asked.empty());
  CHECK(r.stats.retrievals == 0);
}

TEST_CASE("oracle: two documents per retrieval share one bracket", "[oracle]") {
  for (const ContextMode mode : {ContextMode::Append, ContextMode::Prepend}) {
    for (const bool marks : {true, false}) {
      INFO(context_mode_name(mode) << " marks " << marks);
      RecordingModel m;
      generate_with(mode, m, options(marks), two_docs(), 3);
      const std::vector<int64_t> b1 = marks ? std::vector<int64_t>{L, 50, 51, 52, R} : std::vector<int64_t>{50, 51, 52};
      const std::vector<int64_t> b2 = marks ? std::vector<int64_t>{L, 60, 61, 62, R} : std::vector<int64_t>{60, 61, 62};
      const int64_t n1 = int64_t(b1.size()), n2 = int64_t(b2.size());
      const int64_t last = 2 + n1;  // the first layout's last position, either way
      const int64_t g0 = next_after(last), g1 = next_after(last + 1);
      const std::vector<Call> want =
          mode == ContextMode::Append
              ? std::vector<Call>{cat({from(0, {1, 10, 11}), from(3, b1)}), from(last + 1, {g0}),
                                  cat({from(3, {g0, g1}), from(5, b2)})}
              : std::vector<Call>{cat({from(0, {1}), from(1, b1), from(1 + n1, {10, 11})}), from(last + 1, {g0}),
                                  cat({from(0, {1}), from(1, b2), from(1 + n2, {10, 11, g0, g1})})};
      check_calls(m, want);
    }
  }
}

TEST_CASE("oracle: the window slides, keeping BOS and the newest input", "[oracle]") {
  // max_length 12, stride 2: a block of 4 (marks + 2) leaves 12 - 4 - 2 = 6 input
  // positions; window_keep 0.5 keeps 3 (BOS and the newest 2) when it overflows.
  RecordingModel m;
  RalmOptions o = options(/*marks=*/true, /*stride=*/2, /*max_length=*/12);
  KVCacheStore cache = make_context_cache(m, o);
  REQUIRE(cache.capacity() == 12);
  AppendingContext<RecordingModel> ctx(m, cache, MarkingToken(kVocab), o);
  FixedDocuments source({{{50, 51}}, {{52, 53}}, {{54, 55}}});
  c10::InferenceMode guard;
  ctx.reset({1, 10, 11, 12, 13});  // 5 input tokens: fit
  ctx.place(source.documents(ctx.text()));
  ctx.append({30});
  ctx.append({31});
  ctx.place(source.documents(ctx.text()));  // input 7 > 6: slides to [BOS 30 31], re-encoded from position 1
  ctx.append({32});
  CHECK(ctx.stats().window_slides == 1);
  check_calls(m, {from(0, {1, 10, 11, 12, 13, L, 50, 51, R}),
                  from(9, {30}),
                  from(10, {31}),
                  from(1, {30, 31, L, 52, 53, R}),
                  from(7, {32})});
  CHECK(ctx.layout() == std::vector<int64_t>{1, 30, 31, L, 52, 53, R, 32});
  CHECK(ctx.text() == std::vector<int64_t>{1, 30, 31, 32});
  // Appending past max_length between retrievals folds the recent tokens into
  // the input, which slides; the block stays.
  for (int64_t t : {33, 34, 35, 36}) ctx.append({t});  // fills the window: slots 8..11
  CHECK(ctx.stats().window_slides == 1);
  ctx.append({37});  // input [BOS 30 .. 36] slides to [BOS 35 36]; the block stays; 37 follows
  CHECK(ctx.stats().window_slides == 2);
  CHECK(ctx.layout() == std::vector<int64_t>{1, 35, 36, L, 52, 53, R, 37});
  REQUIRE(m.calls.size() == 10);
  CHECK(m.calls[5].front().position == 8);
  std::vector<std::pair<int64_t, int64_t>> last;
  for (const Encoded& e : m.calls.back()) last.emplace_back(e.token, e.position);
  CHECK(last == from(1, {35, 36, L, 52, 53, R, 37}));
}

TEST_CASE("oracle: evaluation scores each block after a retrieval made for the text before it", "[oracle]") {
  RecordingModel m;
  RalmOptions o = options(/*marks=*/true);
  KVCacheStore cache = make_context_cache(m, o);
  AppendingContext<RecordingModel> ctx(m, cache, MarkingToken(kVocab), o);
  FixedDocuments source({{{50}}, {{60, 61}}, {{70}}});
  const std::vector<int64_t> text = {1, 10, 11, 12, 13, 14};
  EvalResult r = evaluate(ctx, source, text);
  CHECK(r.tokens == 5);
  check_calls(m, {from(0, {1, L, 50, R}),                // block 1 (10 11): predicted after [BOS][block]
                  from(4, {10, 11}),                      //   then appended, as generated tokens are
                  cat({from(1, {10, 11}), from(3, {L, 60, 61, R})}),  // block 2 (12 13)
                  from(7, {12, 13}),
                  cat({from(3, {12, 13}), from(5, {L, 70, R})}),  // block 3 (14)
                  from(8, {14})});
  CHECK(source.texts == std::vector<std::vector<int64_t>>{{1}, {1, 10, 11}, {1, 10, 11, 12, 13}});
}

TEST_CASE("oracle: training examples are laid out as the contexts lay out inference", "[oracle]") {
  const MarkingToken marks(kVocab);
  const std::vector<int64_t> input = {1, 10, 11}, targets = {20, 21};
  const std::vector<std::vector<int64_t>> docs = {{50, 51}, {52}};
  TrainingLayout a = training_layout(ContextMode::Append, input, docs, targets, marks, 1);
  CHECK(a.tokens == std::vector<int64_t>{1, 10, 11, L, 50, 51, 52, R, 20, 21});
  CHECK(a.target_positions == std::vector<int64_t>{8, 9});
  TrainingLayout p = training_layout(ContextMode::Prepend, input, docs, targets, MarkingToken(), 1);
  CHECK(p.tokens == std::vector<int64_t>{1, 50, 51, 52, 10, 11, 20, 21});
  CHECK(p.target_positions == std::vector<int64_t>{6, 7});
  TrainingLayout n = training_layout(ContextMode::None, input, docs, targets, marks, 1);
  CHECK(n.tokens == std::vector<int64_t>{1, 10, 11, 20, 21});
  // Without BOS first, prepending puts the block first.
  CHECK(training_layout(ContextMode::Prepend, {10, 11}, docs, targets, marks, 1).tokens ==
        std::vector<int64_t>{L, 50, 51, 52, R, 10, 11, 20, 21});
  CHECK_THROWS_AS(training_layout(ContextMode::Append, input, docs, {}, marks, 1), InvalidArgument);
}

TEST_CASE("oracle: a text without BOS (SmolLM2's tokenizer adds none): the first token anchors the window", "[oracle]") {
  // Prepend puts the documents first; append and the window keep the first input token at position 0.
  RecordingModel m;
  RalmOptions o = options(/*marks=*/true, /*stride=*/2, /*max_length=*/12);
  KVCacheStore cache = make_context_cache(m, o);
  FixedDocuments docs({{{50, 51}}, {{52, 53}}});
  {
    PrependingContext<RecordingModel> ctx(m, cache, MarkingToken(kVocab), o);
    c10::InferenceMode guard;
    ctx.reset({10, 11, 12});
    ctx.place(docs.documents(ctx.text()));
    CHECK(ctx.layout() == std::vector<int64_t>{L, 50, 51, R, 10, 11, 12});
  }
  m.calls.clear();
  AppendingContext<RecordingModel> ctx(m, cache, MarkingToken(kVocab), o);
  c10::InferenceMode guard;
  ctx.reset({10, 11, 12, 13, 14});
  ctx.place({{60, 61}});
  ctx.append({30});
  ctx.append({31});
  ctx.place({{62, 63}});  // input 7 > 12 - 4 - 2: slides to [10 30 31], re-encoded from position 1
  check_calls(m, {from(0, {10, 11, 12, 13, 14, L, 60, 61, R}), from(9, {30}), from(10, {31}),
                  from(1, {30, 31, L, 62, 63, R})});
  CHECK(ctx.layout() == std::vector<int64_t>{10, 30, 31, L, 62, 63, R});
}

TEST_CASE("oracle: doc positions before: the block sits below the input in position, after it in the cache",
          "[oracle][positions]") {
  // doc_tokens 3 + 2 marks: the input starts at position 5, the block is
  // right-aligned below it; the recent tokens continue the input's positions
  // and the token after a block is predicted from the input's last slot.
  RecordingModel m;
  RalmOptions o = options(/*marks=*/true, /*stride=*/2, /*max_length=*/40);
  o.doc_positions = "before";
  o.doc_tokens = 3;
  Run r = generate_with(ContextMode::Append, m, o, one_doc(), 5);
  const int64_t g0 = next_after(7), g1 = next_after(8), g2 = next_after(9), g3 = next_after(10);
  using Slots = std::vector<int64_t>;  // (token, position, slot) for each token, flattened
  const std::vector<Slots> want = {
      {1, 5, 0, 10, 6, 1, 11, 7, 2, L, 1, 3, 50, 2, 4, 51, 3, 5, R, 4, 6},
      {g0, 8, 7},  // g1, the last token before the retrieval, is held: encoded by the next call only
      {g0, 8, 3, g1, 9, 4, L, 0, 5, 60, 1, 6, 61, 2, 7, 62, 3, 8, R, 4, 9},
      {g2, 10, 10},
      {g2, 10, 5, g3, 11, 6},  // no document: no block, the input's positions go on
  };
  REQUIRE(m.calls.size() == want.size());
  for (size_t c = 0; c < want.size(); ++c) {
    INFO("forward " << c);
    Slots got;
    for (const Encoded& e : m.calls[c]) got.insert(got.end(), {e.token, e.position, e.slot});
    CHECK(got == want[c]);
  }
  // Each token is predicted from the position before it in the text: as without documents, 5 positions later.
  CHECK(r.ids == std::vector<int64_t>{g0, g1, g2, g3, next_after(11)});
  CHECK(r.stats.reencoded_per_place == std::vector<int64_t>{7, 7, 2});  // the paper's counts: s + |block|

  // The functions the contexts and the training examples share.
  CHECK(layout_positions(ContextMode::Append, DocPositions::Before, 5, 3, 4, 2) ==
        std::vector<int64_t>{5, 6, 7, 1, 2, 3, 4, 8, 9});
  CHECK(layout_positions(ContextMode::Append, DocPositions::After, 5, 3, 4, 2) ==
        std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(layout_positions(ContextMode::Prepend, DocPositions::Before, 5, 3, 4, 2) ==
        std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(predicting_slot(ContextMode::Append, DocPositions::Before, 3, 4) == 2);
  CHECK(predicting_slot(ContextMode::Append, DocPositions::Before, 3, 0) == 2);
  CHECK(predicting_slot(ContextMode::Append, DocPositions::After, 3, 4) == 6);
  CHECK_THROWS_WITH(layout_positions(ContextMode::Append, DocPositions::Before, 3, 3, 4, 0),
                    Catch::Contains("does not fit below the input"));
  const MarkingToken marks(kVocab);
  TrainingLayout t = training_layout(ContextMode::Append, {1, 10, 11}, {{50, 51}}, {30, 31, 32}, marks, 1,
                                     DocPositions::Before, 5);
  CHECK(t.tokens == std::vector<int64_t>{1, 10, 11, L, 50, 51, R, 30, 31, 32});
  CHECK(t.position_ids == std::vector<int64_t>{5, 6, 7, 1, 2, 3, 4, 8, 9, 10});
  CHECK(t.target_positions == std::vector<int64_t>{8, 9});  // 30 is predicted from slot 2, with no document in view
  CHECK_THROWS_WITH(training_layout(ContextMode::Append, {1, 10}, {{50}}, {30}, marks, 1, DocPositions::Before, 5),
                    Catch::Contains("at least two targets"));
}

TEST_CASE("oracle: doc positions before: a block larger than the room kept for it is refused", "[oracle][positions]") {
  RecordingModel m;
  RalmOptions o = options(/*marks=*/true, /*stride=*/2, /*max_length=*/40);
  o.doc_positions = "before";
  o.doc_tokens = 1;  // room for 3 positions; the first document brings 4 with its marks
  KVCacheStore cache = make_context_cache(m, o);
  AppendingContext<RecordingModel> ctx(m, cache, MarkingToken(kVocab), o);
  c10::InferenceMode guard;
  ctx.reset(kPrompt);
  CHECK_THROWS_WITH(ctx.place({{50, 51}}), Catch::Contains("positions kept for them before the input"));
  o.max_length = 62;  // 3 + 62 > the 64 positions of the model
  KVCacheStore big = m.make_cache(1, 64);
  CHECK_THROWS_WITH(AppendingContext<RecordingModel>(m, big, MarkingToken(kVocab), o),
                    Catch::Contains("maximum position"));
}
