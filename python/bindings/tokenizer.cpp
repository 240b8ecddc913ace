#include "bindings.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback::python {

void bind_tokenizer(py::module_& m) {
  auto to_ids = [](const std::vector<int32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); };
  py::class_<Tokenizer>(m, "Tokenizer")
      .def_static("from_file", &Tokenizer::from_file, py::arg("path"))
      .def("encode", [to_ids](const Tokenizer& t, const std::string& s, bool bos, bool eos) { return to_ids(t.encode(s, bos, eos)); },
           py::arg("text"), py::arg("add_bos") = false, py::arg("add_eos") = false)
      .def("decode", [](const Tokenizer& t, const std::vector<int64_t>& ids) {
             return t.decode(std::vector<int32_t>(ids.begin(), ids.end()));
           }, py::arg("ids"))
      .def("id_to_piece", &Tokenizer::id_to_piece, py::arg("id"))
      .def("piece_to_id", [](const Tokenizer& t, const std::string& p) { return t.piece_to_id(p); }, py::arg("piece"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("adds_bos", &Tokenizer::adds_bos, "whether a sequence starts with BOS (Llama-2: yes; SmolLM2: no)")
      .def_property_readonly("family", [](const Tokenizer& t) {
        return t.family() == TokenizerFamily::SentencePiece ? "sentencepiece" : "byte-level-bpe";
      })
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id);
}

}  // namespace flashback::python
