// The rendezvous behind batched streams (flashback/batching.hpp).
#include "flashback/batching.hpp"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <string>
#include <thread>
#include <utility>

#include "flashback/error.hpp"
#include "flashback/kernels.hpp"
#include "flashback/llama.hpp"

namespace flashback {

StreamBatcher::StreamBatcher(LlamaForCausalLMImpl& model, int64_t streams) : model_(&model) {
  if (streams < 1) throw InvalidArgument("batched streams: need at least one stream (got " + std::to_string(streams) + ")");
  streams_.resize(static_cast<size_t>(streams));
  for (int64_t i = 0; i < streams; ++i) {
    streams_[static_cast<size_t>(i)].batcher_ = this;
    streams_[static_cast<size_t>(i)].index_ = i;
  }
  requests_.resize(static_cast<size_t>(streams));
  finished_.assign(static_cast<size_t>(streams), false);
  live_ = streams;
}

at::Tensor StreamBatcher::Stream::hidden_states(const at::Tensor& tokens, const at::Tensor& positions,
                                                KVCacheStore* cache) {
  Request r;
  r.tokens = tokens;
  r.positions = positions;
  r.cache = cache;
  return batcher_->call(index_, std::move(r));
}

at::Tensor StreamBatcher::Stream::logits(const at::Tensor& hidden) {
  Request r;
  r.head = true;
  r.hidden = hidden;
  return batcher_->call(index_, std::move(r));
}

const LlamaConfig& StreamBatcher::Stream::config() const { return batcher_->model_->config(); }
at::Device StreamBatcher::Stream::device() const { return batcher_->model_->device(); }
KVCacheStore StreamBatcher::Stream::make_cache(int64_t batch, int64_t capacity,
                                              std::optional<at::ScalarType> kv_dtype) const {
  return batcher_->model_->make_cache(batch, capacity, kv_dtype);
}

at::Tensor StreamBatcher::call(int64_t i, Request request) {
  std::unique_lock<std::mutex> lock(mutex_);
  Request& slot = requests_.at(static_cast<size_t>(i));
  if (finished_[static_cast<size_t>(i)]) throw InvalidArgument("batched streams: stream " + std::to_string(i) + " called after finish()");
  slot = std::move(request);
  slot.pending = true;
  if (++waiting_ == live_) ready_.notify_one();
  done_.wait(lock, [&] { return slot.done; });
  Request r = std::move(slot);
  slot = Request();
  if (r.error) std::rethrow_exception(r.error);
  return r.result;
}

void StreamBatcher::finish(int64_t i) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (finished_.at(static_cast<size_t>(i))) return;
  finished_[static_cast<size_t>(i)] = true;
  --live_;
  ready_.notify_one();
}

void StreamBatcher::serve() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    ready_.wait(lock, [&] { return live_ == 0 || (waiting_ > 0 && waiting_ == live_); });
    if (live_ == 0) return;
    run_round();
  }
}

StreamBatcher::Stats StreamBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void StreamBatcher::run_round() {
  c10::InferenceMode guard;  // the serving thread's own: the streams' loops set theirs
  std::vector<Request*> body, head;
  for (Request& r : requests_)
    if (r.pending) (r.head ? head : body).push_back(&r);
  // Short sequences first, so the decode rows share projection calls (RowPlan::packed).
  std::stable_partition(body.begin(), body.end(), [](const Request* r) {
    return r->tokens.defined() && r->tokens.numel() <= kernels::kMaxKernelRows;
  });
  // One batched call; on failure (bad input in one stream: inputs are checked
  // before any cache is written) each request alone, so only its stream sees
  // its error.
  auto run = [](const std::vector<Request*>& rs, auto all, auto one) {
    if (rs.empty()) return;
    try {
      std::vector<at::Tensor> out = all();
      for (size_t j = 0; j < rs.size(); ++j) rs[j]->result = out[j];
    } catch (...) {
      for (Request* r : rs) {
        try {
          r->result = one(*r);
        } catch (...) {
          r->error = std::current_exception();
        }
      }
    }
  };
  run(
      body,
      [&] {
        std::vector<LlamaForCausalLMImpl::Sequence> seqs;
        for (Request* r : body) seqs.push_back({r->tokens, r->positions, r->cache});
        return model_->hidden_states(seqs);
      },
      [&](const Request& r) { return model_->hidden_states(r.tokens.reshape({1, -1}), r.positions, r.cache); });
  run(
      head,
      [&] {
        std::vector<at::Tensor> hs;
        for (Request* r : head) hs.push_back(r->hidden);
        return model_->logits(hs);
      },
      [&](const Request& r) { return model_->logits(r.hidden); });
  if (!body.empty()) ++stats_.forwards;
  if (!head.empty()) ++stats_.head_calls;
  stats_.max_sequences = std::max<int64_t>(stats_.max_sequences, static_cast<int64_t>(body.size()));
  for (Request* r : body) stats_.rows += r->tokens.numel();
  for (Request& r : requests_)
    if (r.pending) {
      r.pending = false;
      r.done = true;
    }
  waiting_ = 0;
  done_.notify_all();
}

std::vector<GenerateResult> generate_streams(StreamBatcher& batcher,
                                             const std::vector<ContextBase<StreamBatcher::Stream>*>& contexts,
                                             const std::vector<DocumentSource*>& documents,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerateOptions& options) {
  const size_t n = static_cast<size_t>(batcher.size());
  if (contexts.size() != n || documents.size() != n || prompts.size() != n)
    throw InvalidArgument("batched streams: " + std::to_string(n) + " streams but " + std::to_string(contexts.size()) +
                          " contexts, " + std::to_string(documents.size()) + " document sources and " +
                          std::to_string(prompts.size()) + " prompts");
  for (size_t i = 0; i < n; ++i)
    if (&contexts[i]->model() != &batcher.stream(static_cast<int64_t>(i)))
      throw InvalidArgument("batched streams: context " + std::to_string(i) + " is not built over stream " +
                            std::to_string(i) + " of this batcher");
  std::vector<GenerateResult> results(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  // This thread serves: its intra-op thread count is fixed before the streams
  // set theirs to one (at::set_num_threads also sets the default of threads
  // that start later: restored below).
  const int threads_here = at::get_num_threads();
  for (size_t i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      try {
        at::set_num_threads(1);  // sampling and bookkeeping only: no worker team of their own
        GenerateOptions own = options;
        own.sampling.seed += static_cast<uint64_t>(i);
        results[i] = generate(*contexts[i], *documents[i], prompts[i], own);
      } catch (...) {
        errors[i] = std::current_exception();
      }
      batcher.finish(static_cast<int64_t>(i));
    });
  batcher.serve();
  for (auto& t : threads) t.join();
  at::set_num_threads(threads_here);
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return results;
}

BatchGeneration generate_batch(LlamaForCausalLMImpl& model, ContextMode mode, const MarkingToken& marks,
                               const RalmOptions& options, const std::vector<DocumentSource*>& documents,
                               const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& generation,
                               std::vector<KVCacheStore>* caches) {
  const int64_t n = static_cast<int64_t>(prompts.size());
  if (n == 0) return {};
  if (documents.size() != prompts.size())
    throw InvalidArgument("batched generation: " + std::to_string(n) + " prompts but " +
                          std::to_string(documents.size()) + " document sources (one per prompt)");
  for (size_t i = 0; i < documents.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (documents[i] == documents[j])
        throw InvalidArgument("batched generation: prompts " + std::to_string(j) + " and " + std::to_string(i) +
                              " share a document source (each stream needs its own)");
  std::vector<KVCacheStore> own;
  if (caches == nullptr) {
    for (int64_t i = 0; i < n; ++i) own.push_back(make_context_cache(model, options));
    caches = &own;
  }
  if (static_cast<int64_t>(caches->size()) < n)
    throw InvalidArgument("batched generation: " + std::to_string(n) + " prompts but " +
                          std::to_string(caches->size()) + " caches");
  StreamBatcher batcher(model, n);
  std::vector<std::unique_ptr<ContextBase<StreamBatcher::Stream>>> contexts;
  std::vector<ContextBase<StreamBatcher::Stream>*> pointers;
  for (int64_t i = 0; i < n; ++i) {
    contexts.push_back(make_context(mode, batcher.stream(i), (*caches)[static_cast<size_t>(i)], marks, options));
    pointers.push_back(contexts.back().get());
  }
  BatchGeneration out;
  out.results = generate_streams(batcher, pointers, documents, prompts, generation);
  out.stats = batcher.stats();
  return out;
}

}  // namespace flashback
