// Precompiled for every LibTorch target built with GCC (FLASHBACK_PCH): third-party headers only, so a
// TU that forgets one of its includes still fails in the builds without it (clang's, FLASHBACK_PCH=OFF).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>
