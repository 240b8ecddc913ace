// The option structs themselves, so Python and the CLI share names, meanings
// and defaults (options.hpp documents them once).
#include "bindings.hpp"
#include "flashback/generate.hpp"
#include "flashback/options.hpp"

namespace flashback::python {

namespace {
template <class T, class Field>
void field(py::class_<T>& c, const char* name, Field T::*member) {
  c.def_readwrite(name, member, ralm_option_help(name));
}
}  // namespace

void bind_options(py::module_& m) {
  m.attr("DEFAULT_MAX_LENGTH") = kDefaultMaxLength;
  py::class_<RalmOptions> ro(m, "RalmOptions",
                             "Retrieval-augmented generation and evaluation options (the paper's defaults).");
  ro.def(py::init<>());
  field(ro, "stride", &RalmOptions::stride);
  field(ro, "query_tokens", &RalmOptions::query_tokens);
  field(ro, "doc_tokens", &RalmOptions::doc_tokens);
  field(ro, "k", &RalmOptions::k);
  field(ro, "marks", &RalmOptions::marks);
  field(ro, "kv_reuse", &RalmOptions::kv_reuse);
  field(ro, "max_length", &RalmOptions::max_length);
  field(ro, "window_keep", &RalmOptions::window_keep);
  field(ro, "doc_positions", &RalmOptions::doc_positions);
  field(ro, "kv_dtype", &RalmOptions::kv_dtype);
  ro.def("validate", &RalmOptions::validate);
  ro.def_property_readonly_static("fields", [](py::object) {
    py::list names;
    for (const auto& d : ralm_option_docs()) names.append(d.name);
    return names;
  });

  py::class_<SamplingOptions>(m, "SamplingOptions", "Next-token sampling: greedy at temperature 0.")
      .def(py::init<>())
      .def_readwrite("temperature", &SamplingOptions::temperature, "0: greedy (argmax)")
      .def_readwrite("top_k", &SamplingOptions::top_k, "keep the k most likely tokens (0: all)")
      .def_readwrite("top_p", &SamplingOptions::top_p, "nucleus mass in (0, 1]")
      .def_readwrite("seed", &SamplingOptions::seed)
      .def("validate", &SamplingOptions::validate);

  py::class_<GenerateOptions>(m, "GenerateOptions")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &GenerateOptions::max_new_tokens)
      .def_readwrite("sampling", &GenerateOptions::sampling)
      .def_readwrite("stop_at_eos", &GenerateOptions::stop_at_eos, "stop after the model's end-of-sequence token");

  py::class_<ContextOptions>(m, "ContextOptions", "What a context runs with, resolved from RalmOptions for its mode.")
      .def_property_readonly("mode", [](const ContextOptions& c) { return context_mode_name(c.mode); })
      .def_readonly("marks", &ContextOptions::marks)
      .def_readonly("kv_reuse", &ContextOptions::kv_reuse)
      .def_readonly("max_length", &ContextOptions::max_length)
      .def_readonly("stride", &ContextOptions::stride)
      .def_readonly("window_keep", &ContextOptions::window_keep)
      .def_property_readonly("doc_positions", [](const ContextOptions& c) { return doc_positions_name(c.doc_positions); })
      .def_readonly("position_offset", &ContextOptions::position_offset, "the input's first RoPE position")
      .def_property_readonly("retrieves", &ContextOptions::retrieves);
  m.def("resolve_options", [](const std::string& mode, const RalmOptions& o, int64_t max_positions) {
          return ContextOptions::resolve(parse_context_mode(mode), o, max_positions);
        }, py::arg("mode"), py::arg("options"), py::arg("max_positions") = kDefaultMaxLength,
        "what a context of `mode` runs with (mode none: no marks, no retrieval; max_length resolved)");
}

}  // namespace flashback::python
