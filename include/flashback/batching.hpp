// Batched streams: several independent sequences (RALM contexts, each with
// its own cache, documents and generation loop) advance through shared
// forwards, so the weights stream from memory once per step for all of them.
//
// Each stream runs the one generation loop (generate.hpp) in a thread of its
// own, against a StreamBatcher::Stream: the model as a context sees it. A
// stream's call waits until every live stream is waiting in a call; then the
// serving thread (serve()) runs them all in one forward (LlamaForCausalLMImpl's
// hidden_states over several sequences, the head likewise) and each stream
// goes on with its rows. All model work runs on that one thread, so LibTorch's
// intra-op workers serve one caller (stream threads compute with one thread:
// OpenMP keeps a worker team per calling thread, and idle teams spinning
// beside the working one cost half the speed on 2 cores). Decode
// rows of all streams share every projection; re-encodes that fall on the
// same step (streams with one stride retrieve together) join the same
// forward, each sequence attending only to its own cache. With the CPU
// kernels each stream's logits are the same bits as in its solo run
// (llama.hpp), so its ids are too.
//
// Thread-safety: a Stream belongs to one thread; the batcher synchronises
// them and serve() runs on one more. The model must not be used by anything
// else meanwhile. generate_streams() does all of this.
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <vector>

#include "flashback/config.hpp"
#include "flashback/context.hpp"
#include "flashback/documents.hpp"
#include "flashback/generate.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/options.hpp"

namespace flashback {

class LlamaForCausalLMImpl;

class StreamBatcher {
 public:
  // The model as stream `index` sees it: what a context needs of a model.
  class Stream {
   public:
    at::Tensor hidden_states(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore* cache);
    at::Tensor logits(const at::Tensor& hidden);
    const LlamaConfig& config() const;
    at::Device device() const;
    KVCacheStore make_cache(int64_t batch = 1, int64_t capacity = 0,
                            std::optional<at::ScalarType> kv_dtype = std::nullopt) const;
    int64_t index() const { return index_; }

   private:
    friend class StreamBatcher;
    StreamBatcher* batcher_ = nullptr;
    int64_t index_ = 0;
  };

  struct Stats {
    int64_t forwards = 0;    // batched decoder forwards run
    int64_t head_calls = 0;  // batched head calls run
    int64_t rows = 0;        // token rows through the decoder, all streams
    int64_t max_sequences = 0;  // the most sequences one forward carried
  };

  StreamBatcher(LlamaForCausalLMImpl& model, int64_t streams);
  StreamBatcher(const StreamBatcher&) = delete;
  StreamBatcher& operator=(const StreamBatcher&) = delete;

  int64_t size() const { return static_cast<int64_t>(streams_.size()); }
  Stream& stream(int64_t i) { return streams_.at(static_cast<size_t>(i)); }
  LlamaForCausalLMImpl& model() const { return *model_; }
  // Stream i makes no more calls (its loop ended or failed): the others stop
  // waiting for it. Idempotent.
  void finish(int64_t i);
  // Runs the streams' calls, a round each time every live stream waits in
  // one, until every stream has finished. Call it from one thread (not a
  // stream's).
  void serve();
  Stats stats() const;

 private:
  struct Request {
    bool pending = false, done = false, head = false;
    at::Tensor tokens, positions, hidden;  // the call's inputs
    KVCacheStore* cache = nullptr;
    at::Tensor result;
    std::exception_ptr error;
  };
  at::Tensor call(int64_t i, Request request);
  void run_round();  // by serve(), with mutex_ held, once every live stream waits

  LlamaForCausalLMImpl* model_;
  std::vector<Stream> streams_;
  std::vector<Request> requests_;
  std::vector<bool> finished_;
  int64_t live_ = 0, waiting_ = 0;
  Stats stats_;
  mutable std::mutex mutex_;
  std::condition_variable done_;   // streams wait for their round
  std::condition_variable ready_;  // serve() waits for a full round, or the end
};

// Runs generate() for every context in a thread of its own, the model's work
// batched by `batcher`: context i is built over batcher.stream(i) (one per
// stream) and draws on documents[i]; stream i samples with seed
// options.sampling.seed + i, so equal prompts give different samples and each
// stream's ids are its solo run's with that seed (greedy decoding ignores the
// seed). Returns the results in stream order;
// when a stream fails the others finish, then its error is rethrown.
std::vector<GenerateResult> generate_streams(StreamBatcher& batcher,
                                             const std::vector<ContextBase<StreamBatcher::Stream>*>& contexts,
                                             const std::vector<DocumentSource*>& documents,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerateOptions& options);

// A batch as one call: prompts.size() contexts of `mode` (the one context
// factory) over one batcher, stream i drawing on documents[i] (a source is
// stateful: one per stream; they may share a retriever) and generating from
// prompts[i] (seeds as generate_streams gives them). `caches`, when given,
// holds at least one cache per stream (kept for the caller, e.g. to count
// their bytes); otherwise each stream gets make_context_cache's.
struct BatchGeneration {
  std::vector<GenerateResult> results;  // in prompt order
  StreamBatcher::Stats stats;
};
BatchGeneration generate_batch(LlamaForCausalLMImpl& model, ContextMode mode, const MarkingToken& marks,
                               const RalmOptions& options, const std::vector<DocumentSource*>& documents,
                               const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& generation,
                               std::vector<KVCacheStore>* caches = nullptr);

}  // namespace flashback
