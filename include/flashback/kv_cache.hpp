// KVCacheStore: the per-sequence attention state, kept outside the model.
//
// One preallocated K and one V buffer per layer, [B, Hkv, capacity, D], filled
// in slot order. A forward of T tokens writes slots [size, size + T) of every
// layer, then commit() makes them part of the sequence. No per-token
// concatenation and no reallocation: truncate(n) just forgets slots >= n, so
// FlashBack's "drop the old document, keep the input" is one call.
//
// Not thread-safe: one cache per concurrent sequence (the model itself is
// shared read-only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashback/error.hpp"

namespace flashback {

class KVCacheStore {
 public:
  KVCacheStore() = default;
  KVCacheStore(int64_t num_layers, int64_t batch, int64_t num_kv_heads, int64_t capacity, int64_t head_dim,
               at::TensorOptions options)
      : capacity_(capacity) {
    if (num_layers <= 0 || batch <= 0 || num_kv_heads <= 0 || capacity <= 0 || head_dim <= 0)
      throw InvalidArgument("KVCacheStore: every dimension must be positive (layers " + std::to_string(num_layers) +
                            ", batch " + std::to_string(batch) + ", kv heads " + std::to_string(num_kv_heads) +
                            ", capacity " + std::to_string(capacity) + ", head dim " + std::to_string(head_dim) + ")");
    keys_.reserve(num_layers);
    values_.reserve(num_layers);
    for (int64_t l = 0; l < num_layers; ++l) {
      keys_.push_back(at::zeros({batch, num_kv_heads, capacity, head_dim}, options));    // [B, Hkv, cap, D]
      values_.push_back(at::zeros({batch, num_kv_heads, capacity, head_dim}, options));  // [B, Hkv, cap, D]
    }
  }

  KVCacheStore(KVCacheStore&&) = default;
  KVCacheStore& operator=(KVCacheStore&&) = default;
  KVCacheStore(const KVCacheStore&) = delete;
  KVCacheStore& operator=(const KVCacheStore&) = delete;

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }
  int64_t batch() const { return keys_.empty() ? 0 : keys_[0].size(0); }
  int64_t num_kv_heads() const { return keys_.empty() ? 0 : keys_[0].size(1); }
  int64_t head_dim() const { return keys_.empty() ? 0 : keys_[0].size(3); }
  at::TensorOptions options() const { return keys_.empty() ? at::TensorOptions() : keys_[0].options(); }
  // The stored keys' and values' dtype (may differ from the model's: RalmOptions::kv_dtype).
  at::ScalarType dtype() const { return keys_.empty() ? at::ScalarType::Undefined : keys_[0].scalar_type(); }
  bool defined() const { return !keys_.empty(); }

  // Bytes holding the committed slots, and bytes preallocated.
  int64_t bytes_used() const { return size_ * bytes_per_slot(); }
  int64_t bytes_allocated() const { return capacity_ * bytes_per_slot(); }
  int64_t bytes_per_slot() const {
    return keys_.empty() ? 0 : 2 * num_layers() * batch() * num_kv_heads() * head_dim() * int64_t(keys_[0].element_size());
  }

  // Forget slots [n, size). Throws if n is negative or past size().
  void truncate(int64_t n) {
    if (n < 0 || n > size_)
      throw InvalidArgument("KVCacheStore::truncate(" + std::to_string(n) + "): the cache holds " +
                            std::to_string(size_) + " positions");
    size_ = n;
  }
  void clear() { size_ = 0; }

  // Throws a clear error unless `extra` more slots fit.
  void check_room(int64_t extra) const {
    if (extra < 0 || size_ + extra > capacity_)
      throw InvalidArgument("KV cache overflow: " + std::to_string(size_) + " cached + " + std::to_string(extra) +
                            " new positions exceed the capacity of " + std::to_string(capacity_));
  }

  // Writes k, v ([B, Hkv, T, D]) into `layer` at slots [size, size + T) and
  // returns that layer's keys and values for slots [0, size + T) as views
  // ([B, Hkv, size + T, D]). Call commit(T) once every layer is written.
  std::pair<at::Tensor, at::Tensor> write(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
    const int64_t t = k.size(2);
    check_room(t);
    at::Tensor& kb = keys_.at(static_cast<size_t>(layer));
    at::Tensor& vb = values_.at(static_cast<size_t>(layer));
    kb.narrow(2, size_, t).copy_(k);
    vb.narrow(2, size_, t).copy_(v);
    return {kb.narrow(2, 0, size_ + t), vb.narrow(2, 0, size_ + t)};
  }
  void commit(int64_t t) {
    check_room(t);
    size_ += t;
  }

  // Committed keys / values of one layer: [B, Hkv, size, D] views.
  at::Tensor keys(int64_t layer) const { return keys_.at(static_cast<size_t>(layer)).narrow(2, 0, size_); }
  at::Tensor values(int64_t layer) const { return values_.at(static_cast<size_t>(layer)).narrow(2, 0, size_); }

  // A deep copy (same capacity, same contents).
  KVCacheStore clone() const {
    KVCacheStore c;
    c.capacity_ = capacity_;
    c.size_ = size_;
    for (const auto& k : keys_) c.keys_.push_back(k.clone());
    for (const auto& v : values_) c.values_.push_back(v.clone());
    return c;
  }

 private:
  std::vector<at::Tensor> keys_;    // per layer: [B, Hkv, capacity, D]
  std::vector<at::Tensor> values_;  // per layer: [B, Hkv, capacity, D]
  int64_t capacity_ = 0;
  int64_t size_ = 0;
};

}  // namespace flashback
