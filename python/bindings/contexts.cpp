// Contexts, document sources, the generation and evaluation loops, and the
// layout of training examples.
#include "bindings.hpp"
#include "flashback/batching.hpp"
#include "flashback/documents.hpp"
#include "flashback/error.hpp"
#include "flashback/evaluate.hpp"
#include "flashback/generate.hpp"
#include "flashback/layout.hpp"
#include "flashback/llama.hpp"
#include "flashback/report.hpp"

namespace flashback::python {

namespace {
using Model = LlamaForCausalLMImpl;
using Context = ContextBase<Model>;

MarkingToken marks_from(int64_t mark_left) { return mark_left >= 0 ? MarkingToken(mark_left + 2) : MarkingToken(); }

// A context with its own cache, keeping its model alive.
struct OwnedContext {
  OwnedContext(std::shared_ptr<Model> m, ContextMode mode, int64_t mark_left, const RalmOptions& options)
      : model(std::move(m)),
        cache(make_context_cache(*model, options)),
        context(make_context(mode, *model, cache, marks_from(mark_left), options)) {}
  OwnedContext(const OwnedContext&) = delete;
  OwnedContext& operator=(const OwnedContext&) = delete;

  std::shared_ptr<Model> model;
  KVCacheStore cache;
  std::unique_ptr<Context> context;
};
}  // namespace

void bind_contexts(py::module_& m) {
  py::class_<OwnedContext>(m, "Context")
      .def(py::init([](std::shared_ptr<Model> model, const std::string& mode, int64_t mark_left,
                       const RalmOptions& options) {
             return std::make_unique<OwnedContext>(std::move(model), parse_context_mode(mode), mark_left, options);
           }), py::arg("model"), py::arg("mode"), py::arg("mark_left"), py::arg("options"))
      .def("reset", [](OwnedContext& c, std::vector<int64_t> input) { c.context->reset(std::move(input)); },
           py::arg("input"))
      .def("place", [](OwnedContext& c, const std::vector<std::vector<int64_t>>& docs) {
             c10::InferenceMode g;
             return c.context->place(docs);
           }, py::arg("docs"), release_gil(), "places the documents; returns the logits after the layout's last slot [V]")
      .def("append", [](OwnedContext& c, const std::vector<int64_t>& tokens, bool all_rows) {
             c10::InferenceMode g;
             return c.context->append(tokens, all_rows);
           }, py::arg("tokens"), py::arg("all_rows") = false, release_gil())
      .def("hold", [](OwnedContext& c, const std::vector<int64_t>& tokens) { c.context->hold(tokens); },
           py::arg("tokens"), "adds tokens to the text unencoded; the next place() encodes them (only place() may follow)")
      .def("layout", [](OwnedContext& c) { return c.context->layout(); })
      .def("positions", [](OwnedContext& c) { return c.context->positions(); })
      .def("text", [](OwnedContext& c) { return c.context->text(); })
      .def("stats", [](OwnedContext& c) { return from_json(to_json(c.context->stats())); })
      .def_property_readonly("options", [](OwnedContext& c) { return c.context->options(); })
      .def_property_readonly("mode", [](OwnedContext& c) { return context_mode_name(c.context->mode()); })
      .def("cache_size", [](OwnedContext& c) { return c.cache.size(); })
      .def("cache_capacity", [](OwnedContext& c) { return c.cache.capacity(); })
      .def_property_readonly("cache_dtype", [](OwnedContext& c) { return dtype_name(c.cache.dtype()); });

  py::class_<DocumentSource, std::shared_ptr<DocumentSource>>(m, "DocumentSource")
      .def("documents", &DocumentSource::documents, py::arg("text"), release_gil(),
           "the documents (token lists) of a retrieval after `text`")
      .def("max_tokens", &DocumentSource::max_tokens);
  py::class_<RetrievedDocuments, DocumentSource, std::shared_ptr<RetrievedDocuments>>(m, "RetrievedDocuments")
      .def(py::init<Retriever&, const Tokenizer&, const RalmOptions&>(), py::arg("retriever"), py::arg("tokenizer"),
           py::arg("options"), py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
      .def("keep_history", &RetrievedDocuments::keep_history, py::arg("on"),
           "record every retrieval (position, query, passages) from now on")
      .def_property_readonly("history", [](const RetrievedDocuments& d) { return from_json(to_json(d.history())); },
                             "[{position, query, titles, scores}] of the retrievals recorded, in order")
      .def_property_readonly("last_query", &RetrievedDocuments::last_query)
      .def_property_readonly("last_documents", [](const RetrievedDocuments& d) {
        std::vector<std::string> out;
        for (const auto& p : d.last_passages()) out.push_back(p.document());
        return out;
      });
  py::class_<FixedDocuments, DocumentSource, std::shared_ptr<FixedDocuments>>(m, "FixedDocuments")
      .def(py::init<std::vector<std::vector<std::vector<int64_t>>>>(), py::arg("per_retrieval"));
  py::class_<RandomDocuments, DocumentSource, std::shared_ptr<RandomDocuments>>(m, "RandomDocuments")
      .def(py::init<int64_t, int64_t, int64_t, uint64_t>(), py::arg("doc_tokens"), py::arg("low"), py::arg("high"),
           py::arg("seed") = 0);
  py::class_<NoDocuments, DocumentSource, std::shared_ptr<NoDocuments>>(m, "NoDocuments").def(py::init<>());

  m.def("generate", [](OwnedContext& c, DocumentSource& documents, const std::vector<int64_t>& prompt,
                       const GenerateOptions& options) {
          GenerateResult r;
          {
            py::gil_scoped_release nogil;
            r = generate(*c.context, documents, prompt, options);
          }
          return py::make_tuple(r.ids, from_json(to_json(r.stats)));
        }, py::arg("context"), py::arg("documents"), py::arg("prompt"), py::arg("options"),
        "the one generation loop: (generated ids, stats)");

  m.def("generate_batch", [](std::shared_ptr<Model> model, const std::string& mode, int64_t mark_left,
                             const RalmOptions& options, const std::vector<std::shared_ptr<DocumentSource>>& documents,
                             const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& generation) {
          std::vector<DocumentSource*> sources;
          for (const auto& d : documents) {
            if (!d) throw InvalidArgument("generate_batch: a document source is None");
            sources.push_back(d.get());
          }
          BatchGeneration b;
          {
            py::gil_scoped_release nogil;
            b = generate_batch(*model, parse_context_mode(mode), marks_from(mark_left), options, sources, prompts,
                               generation);
          }
          py::list results;
          for (const GenerateResult& r : b.results) results.append(py::make_tuple(r.ids, from_json(to_json(r.stats))));
          py::dict stats;
          stats["forwards"] = b.stats.forwards;
          stats["head_calls"] = b.stats.head_calls;
          stats["rows"] = b.stats.rows;
          stats["max_sequences"] = b.stats.max_sequences;
          return py::make_tuple(results, stats);
        }, py::arg("model"), py::arg("mode"), py::arg("mark_left"), py::arg("options"), py::arg("documents"),
        py::arg("prompts"), py::arg("generation"),
        "batched streams: one generation per prompt (its own context, cache and document source), the model's "
        "work shared by all in one forward per step; stream i samples with seed + i. ([(ids, stats)], batch stats)");

  m.def("evaluate", [](OwnedContext& c, DocumentSource& documents, const std::vector<int64_t>& ids,
                       const std::function<void(int64_t, int64_t)>& progress) {
          EvalResult r;
          {
            py::gil_scoped_release nogil;
            std::function<void(int64_t, int64_t)> cb;
            if (progress) cb = [&](int64_t d, int64_t t) {
                py::gil_scoped_acquire gil;
                progress(d, t);
              };
            r = evaluate(*c.context, documents, ids, cb);
          }
          return from_json(to_json(r));
        }, py::arg("context"), py::arg("documents"), py::arg("ids"), py::arg("progress") = nullptr,
        "retrieval-augmented perplexity: {ppl, nll (mean), nll_sum, tokens, stats}");

  m.def("training_layout", [](const std::string& mode, const std::vector<int64_t>& input,
                              const std::vector<std::vector<int64_t>>& docs, const std::vector<int64_t>& targets,
                              int64_t mark_left, int64_t bos_id, const std::string& doc_positions, int64_t offset) {
          TrainingLayout t = training_layout(parse_context_mode(mode), input, docs, targets, marks_from(mark_left), bos_id,
                                             parse_doc_positions(doc_positions), offset);
          return py::make_tuple(t.tokens, t.target_positions, t.position_ids);
        }, py::arg("mode"), py::arg("input"), py::arg("docs"), py::arg("targets"), py::arg("mark_left"),
        py::arg("bos_id"), py::arg("doc_positions") = "after", py::arg("position_offset") = 0,
        "(tokens, target slots, position ids) of one training example, laid out as the contexts lay out inference");
}

}  // namespace flashback::python
