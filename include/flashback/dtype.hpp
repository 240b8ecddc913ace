// Compute dtype and device names as the CLI, the benchmarks and the Python bindings take them.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "flashback/error.hpp"

namespace flashback {

// "auto" or "" -> nullopt (the checkpoint's dtype); fp32/float32/float,
// bf16/bfloat16, fp16/float16/half; anything else is InvalidArgument.
inline std::optional<at::ScalarType> parse_dtype(const std::string& s) {
  if (s.empty() || s == "auto") return std::nullopt;
  if (s == "fp32" || s == "float32" || s == "float") return at::kFloat;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  if (s == "fp16" || s == "float16" || s == "half") return at::kHalf;
  throw InvalidArgument("unknown dtype '" + s + "' (auto, fp32, bf16, fp16)");
}

// "cpu", "cuda", "cuda:N" (whether this LibTorch has the device is the model's check, llama.cpp).
inline at::Device parse_device(const std::string& s) {
  if (s == "cpu" || s == "cuda" || (s.rfind("cuda:", 0) == 0 && s.size() > 5 &&
                                    s.find_first_not_of("0123456789", 5) == std::string::npos))
    return at::Device(s);
  throw InvalidArgument("unknown device '" + s + "' (cpu, cuda, cuda:N)");
}

}  // namespace flashback
