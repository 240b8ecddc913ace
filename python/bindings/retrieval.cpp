// Retrievers: the library's indexes, and retrievers written in Python (a
// subclass of flashback.Retriever whose retrieve(query, k) returns dicts),
// which the C++ loops then call like any other.
#include "bindings.hpp"
#include "flashback/error.hpp"
#include "flashback/retrieval/corpus.hpp"
#include "flashback/report.hpp"
#include "flashback/retrieval/index.hpp"

namespace flashback::python {

namespace {

// {"text", optional "title", "id", "score"} -> Passage.
Passage passage_from(const py::handle& item) {
  if (!py::isinstance<py::dict>(item))
    throw InvalidArgument("a Python retriever's retrieve() must return a list of dicts with a 'text'");
  py::dict d = py::reinterpret_borrow<py::dict>(item);
  if (!d.contains("text")) throw InvalidArgument("a retrieved passage has no 'text'");
  Passage p;
  p.text = py::cast<std::string>(d["text"]);
  if (d.contains("title")) p.title = py::cast<std::string>(d["title"]);
  if (d.contains("id")) p.id = py::cast<int64_t>(d["id"]);
  if (d.contains("score")) p.score = py::cast<double>(d["score"]);
  return p;
}

// Retrievers subclassed in Python.
class PyRetriever : public Retriever {
 public:
  std::vector<Passage> retrieve(const std::string& query, int64_t k) override {
    py::gil_scoped_acquire gil;
    py::function fn = py::get_override(static_cast<const Retriever*>(this), "retrieve");
    if (!fn) throw InvalidArgument("a flashback.Retriever subclass must define retrieve(query, k)");
    std::vector<Passage> out;
    for (const auto& item : fn(query, k)) out.push_back(passage_from(item));
    return out;
  }
  int64_t size() const override {
    py::gil_scoped_acquire gil;
    py::function fn = py::get_override(static_cast<const Retriever*>(this), "size");
    return fn ? py::cast<int64_t>(fn()) : 0;
  }
};

}  // namespace

void bind_retrieval(py::module_& m) {
  py::class_<Retriever, PyRetriever, std::shared_ptr<Retriever>>(m, "Retriever")
      .def(py::init<>())
      .def("retrieve", [](Retriever& r, const std::string& q, int64_t k) {
             std::vector<Passage> ps;
             {
               py::gil_scoped_release nogil;
               ps = r.retrieve(q, k);
             }
             return from_json(to_json(ps));
           }, py::arg("query"), py::arg("k") = 1,
           "the best k passages, best first: dicts {id, title, text, score, document}")
      .def("size", &Retriever::size)
      .def("forbid_titles", [](Retriever& r, const std::vector<std::string>& titles) {
             TitleFilter f = r.title_filter();
             for (const auto& t : titles) f.add(t);
             r.set_title_filter(std::move(f));
           }, py::arg("titles"))
      .def("forbid_titles_file", [](Retriever& r, const std::string& path) {
             r.set_title_filter(TitleFilter::from_file(path));
           }, py::arg("path"));

  m.def("open_index", [](const std::string& dir, const std::string& encoder_model, const std::string& forbidden) {
          RetrieverOptions o;
          o.encoder_model = encoder_model;
          o.forbidden_titles = forbidden;
          py::gil_scoped_release nogil;
          return std::shared_ptr<Retriever>(open_retriever(dir, o));
        }, py::arg("dir"), py::arg("encoder_model") = "", py::arg("forbidden_titles") = "");

  m.def("build_bm25_index", [](const std::string& corpus, const std::string& format, const Tokenizer& tok,
                               int64_t max_tokens, const std::string& dir) {
          const CorpusFormat f = parse_corpus_format(format);
          py::gil_scoped_release nogil;
          return index_corpus(corpus, f, tok, max_tokens, dir);
        }, py::arg("corpus"), py::arg("format"), py::arg("tokenizer"), py::arg("max_tokens"), py::arg("dir"));
  m.def("wikitext_articles", [](const std::string& path) {
          py::list out;
          for (const ArticleSpan& a : wikitext_articles(path)) out.append(py::make_tuple(a.title, a.begin, a.end));
          return out;
        }, py::arg("path"),
        "[(title, begin, end)]: each article's byte span in a WikiText file, by read_corpus's heading rule");
}

}  // namespace flashback::python
