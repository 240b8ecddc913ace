// flashback._C: the thin binding layer, one file per topic. Primitives only
// (options, model, LoRA and adapters, tokenizer, retrieval, contexts, the
// loops, atomic writes), tensors in and out; the ergonomics (nn.Module,
// training, data) live in the Python package. Long calls release the GIL;
// flashback::Error and its subclasses become Python exceptions in one place
// (errors.cpp).
#pragma once

#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <memory>
#include <string>

namespace flashback::python {

namespace py = pybind11;
using release_gil = py::call_guard<py::gil_scoped_release>;

void bind_errors(py::module_& m);
void bind_options(py::module_& m);
void bind_tokenizer(py::module_& m);
void bind_model(py::module_& m);
void bind_retrieval(py::module_& m);
void bind_contexts(py::module_& m);
void bind_io(py::module_& m);

// JSON text (the library's reports) as Python objects.
// A dtype as torch spells it ("float32", "bfloat16", "float16").
inline std::string dtype_name(at::ScalarType t) {
  return t == at::kFloat ? "float32" : t == at::kBFloat16 ? "bfloat16" : "float16";
}

inline py::object from_json(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

}  // namespace flashback::python
