// Precompiled for the pybind11 extension built with GCC (FLASHBACK_PCH): third-party headers only.
#pragma once
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <memory>
#include <string>
#include <vector>
