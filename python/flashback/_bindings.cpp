// flashback._C: the thin binding layer. Primitives only (model, cache, LoRA,
// adapters, tokenizer, retrieval, contexts, RALM loops), tensors in and out;
// the ergonomics (nn.Module, training, data) live in Python. Long calls
// release the GIL. flashback::Error and its subclasses become Python
// exceptions in one place (register_errors).
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <optional>

#include "flashback/kernels.hpp"
#include "flashback/flashback.hpp"
#include "flashback/dtype.hpp"
#include "flashback/lora.hpp"
#include "flashback/peft.hpp"
#include "flashback/retrieval/corpus.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"

namespace py = pybind11;
using namespace flashback;
using Model = LlamaForCausalLMImpl;
using ModelPtr = std::shared_ptr<LlamaForCausalLMImpl>;
using release = py::call_guard<py::gil_scoped_release>;

namespace {

// ---------------------------------------------------------------- errors
void register_errors(py::module_& m) {
  static py::exception<Error> base(m, "FlashbackError", PyExc_RuntimeError);
  static PyObject* format = PyErr_NewExceptionWithDoc(
      "flashback._C.FormatError", "A file is missing, unreadable or malformed; the message starts with its path.",
      PyTuple_Pack(2, base.ptr(), PyExc_ValueError), nullptr);
  static PyObject* invalid = PyErr_NewExceptionWithDoc(
      "flashback._C.InvalidArgument", "A value outside what the operation accepts.",
      PyTuple_Pack(2, base.ptr(), PyExc_ValueError), nullptr);
  m.attr("FormatError") = py::handle(format);
  m.attr("InvalidArgument") = py::handle(invalid);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      PyErr_SetString(format, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(invalid, e.what());
    } catch (const Error& e) {
      PyErr_SetString(base.ptr(), e.what());
    }
  });
}

// ---------------------------------------------------------------- loading
struct Loaded {
  ModelPtr model;
  std::optional<Tokenizer> tokenizer;
  MarkingToken marks;
  std::string path;
};

// The checkpoint at `path` as a model; with a tokenizer when one is found (or
// given); marks: "add" (two mean-initialised rows when absent), "find" (use
// them if the checkpoint has them), "none".
Loaded load(const std::string& path, const std::string& dtype, const std::string& marks, const std::string& tokenizer,
            const std::string& device) {
  Checkpoint ck = read_checkpoint(path);
  Loaded r;
  r.path = path;
  try {
    r.tokenizer = load_tokenizer(ck, tokenizer);
  } catch (const Error&) {
    if (!tokenizer.empty() || marks == "add") throw;
  }
  if (marks == "add") {
    r.marks = add_marking_tokens(ck, *r.tokenizer);
  } else if (marks == "find") {
    if (r.tokenizer) r.marks = find_marking_tokens(ck, *r.tokenizer);
  } else if (marks != "none") {
    throw InvalidArgument("marks must be 'add', 'find' or 'none', not '" + marks + "'");
  }
  LoadOptions lo;
  lo.dtype = parse_dtype(dtype);
  lo.device = at::Device(device);
  r.model = load_model(ck, lo).ptr();
  return r;
}

py::dict lora_config_dict(const LoraConfig& c) {
  py::dict d;
  d["r"] = c.r;
  d["lora_alpha"] = c.alpha;
  d["lora_dropout"] = c.dropout;
  d["target_modules"] = c.target_modules;
  d["trainable_token_indices"] = c.trainable_token_indices;
  return d;
}

py::dict stats_dict(const ContextStats& s) {
  py::dict d;
  d["retrievals"] = s.retrievals;
  d["tokens_reencoded"] = s.tokens_reencoded;
  d["tokens_decoded"] = s.tokens_decoded;
  d["window_slides"] = s.window_slides;
  d["forwards"] = s.forwards;
  d["retrieve_seconds"] = s.retrieve_seconds;
  d["reencode_seconds"] = s.reencode_seconds;
  d["decode_seconds"] = s.decode_seconds;
  d["reencoded_per_place"] = s.reencoded_per_place;
  return d;
}

// ---------------------------------------------------------------- contexts
// One object over the three context classes (they differ only in layout).
class AnyContext {
 public:
  AnyContext(ModelPtr model, const std::string& mode, int64_t marks_vocab, const ContextOptions& options,
             int64_t capacity)
      : model_(std::move(model)),
        cache_(model_->make_cache(1, capacity)),
        mode_(parse_context_mode(mode)),
        marks_(marks_vocab > 0 ? MarkingToken(marks_vocab) : MarkingToken()) {
    ContextOptions co = options;
    if (mode_ == ContextMode::None) co.marks = false;
    switch (mode_) {
      case ContextMode::Append: append_ = std::make_unique<AppendingContext<Model>>(*model_, cache_, marks_, co); break;
      case ContextMode::Prepend: prepend_ = std::make_unique<PrependingContext<Model>>(*model_, cache_, marks_, co); break;
      default: none_ = std::make_unique<NoRetrievalContext<Model>>(*model_, cache_, marks_, co); break;
    }
  }
  template <class Fn>
  decltype(auto) visit(Fn&& fn) {
    if (append_) return fn(*append_);
    if (prepend_) return fn(*prepend_);
    return fn(*none_);
  }
  ContextMode mode() const { return mode_; }
  const MarkingToken& marks() const { return marks_; }
  KVCacheStore& cache() { return cache_; }

 private:
  ModelPtr model_;
  KVCacheStore cache_;
  ContextMode mode_;
  MarkingToken marks_;
  std::unique_ptr<AppendingContext<Model>> append_;
  std::unique_ptr<PrependingContext<Model>> prepend_;
  std::unique_ptr<NoRetrievalContext<Model>> none_;
};

ContextOptions make_context_options(bool marks, bool kv_reuse, int64_t max_length, int64_t reserve,
                                    double window_keep) {
  ContextOptions co;
  co.marks = marks;
  co.kv_reuse = kv_reuse;
  co.max_length = max_length;
  co.reserve = reserve;
  co.window_keep = window_keep;
  return co;
}

RalmOptions make_ralm_options(int64_t stride, int64_t query_tokens, int64_t doc_tokens, int64_t k) {
  RalmOptions o;
  o.stride = stride;
  o.query_tokens = query_tokens;
  o.doc_tokens = doc_tokens;
  o.k = k;
  o.validate();
  return o;
}

std::vector<int64_t> to_ids(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashback's C++ core (thin bindings; use the `flashback` package)";
  register_errors(m);

  m.def("set_num_threads", &init_threads, py::arg("n") = 0, "intra-op threads (0 = FLASHBACK_THREADS or all cores)");
  m.def("cpu_has_avx2_fma", &kernels::cpu_has_avx2_fma, "whether the AVX2 decode kernels can run on this CPU");
  m.def("supports_dtype", [](const std::string& dtype, const std::string& device) {
    return supports_dtype(parse_dtype(dtype).value_or(at::kFloat), at::Device(device));
  });

  // ---- tokenizer
  py::class_<Tokenizer>(m, "Tokenizer")
      .def_static("from_file", &Tokenizer::from_file, py::arg("path"))
      .def("encode", [](const Tokenizer& t, const std::string& s, bool bos, bool eos) { return to_ids(t.encode(s, bos, eos)); },
           py::arg("text"), py::arg("add_bos") = false, py::arg("add_eos") = false)
      .def("decode", [](const Tokenizer& t, const std::vector<int64_t>& ids) {
             return t.decode(std::vector<int32_t>(ids.begin(), ids.end()));
           })
      .def("id_to_piece", &Tokenizer::id_to_piece)
      .def("piece_to_id", [](const Tokenizer& t, const std::string& p) { return t.piece_to_id(p); })
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id);

  // ---- KV cache
  py::class_<KVCacheStore>(m, "KVCache")
      .def("size", &KVCacheStore::size)
      .def("capacity", &KVCacheStore::capacity)
      .def("batch", &KVCacheStore::batch)
      .def("truncate", &KVCacheStore::truncate, py::arg("n"));

  // ---- model
  py::class_<Model, ModelPtr>(m, "Model")
      .def_static("random", [](const std::string& config_json, uint64_t seed, const std::string& dtype) {
            LlamaForCausalLMOptions o;
            o.dtype = parse_dtype(dtype).value_or(at::kFloat);
            auto model = std::make_shared<Model>(LlamaConfig::from_json(config_json, "config"), o);
            model->init_random(seed);
            return model;
          }, py::arg("config_json"), py::arg("seed") = 0, py::arg("dtype") = "float32")
      .def_property_readonly("config_json", [](const Model& mm) { return mm.config().to_json(); })
      .def_property_readonly("dtype", [](const Model& mm) {
             return std::string(mm.dtype() == at::kFloat ? "float32" : mm.dtype() == at::kBFloat16 ? "bfloat16" : "float16");
           })
      .def_property_readonly("device", [](const Model& mm) { return mm.device().str(); })
      .def_property("kernels", [](const Model& mm) { return std::string(kernels_name(mm.kernels())); },
                    [](Model& mm, const std::string& k) { mm.set_kernels(parse_kernels(k)); },
                    "'auto' (the hand-written CPU kernels where they apply) or 'libtorch' (LibTorch's ops only)")
      .def("named_parameters", [](Model& mm) {
             std::vector<std::pair<std::string, at::Tensor>> out;
             for (auto& item : mm.named_parameters()) out.emplace_back(item.key(), item.value());
             return out;
           }, "(HF name, the C++ parameter itself) pairs")
      .def("forward", [](Model& mm, const at::Tensor& tokens, const std::optional<at::Tensor>& positions) {
             return mm.forward(tokens, positions.value_or(at::Tensor()));
           }, py::arg("tokens"), py::arg("positions") = py::none(), release())
      .def("forward_cached", [](Model& mm, const at::Tensor& tokens, KVCacheStore& cache,
                                const std::optional<at::Tensor>& positions) {
             return mm.forward(tokens, positions.value_or(at::Tensor()), cache);
           }, py::arg("tokens"), py::arg("cache"), py::arg("positions") = py::none(), release())
      .def("hidden_states", [](Model& mm, const at::Tensor& tokens, const std::optional<at::Tensor>& positions) {
             return mm.hidden_states(tokens, positions.value_or(at::Tensor()), nullptr);
           }, py::arg("tokens"), py::arg("positions") = py::none(), release())
      .def("logits", [](Model& mm, const at::Tensor& h) { return mm.logits(h); }, release())
      .def("make_cache", &Model::make_cache, py::arg("batch") = 1, py::arg("capacity") = 0)
      .def("train", [](Model& mm, bool on) { mm.train(on); }, py::arg("mode") = true)
      .def_property_readonly("training", [](const Model& mm) { return mm.is_training(); })
      .def("to", [](Model& mm, const std::string& device, const std::string& dtype) {
             auto dt = parse_dtype(dtype);
             at::Device dev(device.empty() ? mm.device().str() : device);
             mm.to(dev, dt.value_or(mm.dtype()));
           }, py::arg("device") = "", py::arg("dtype") = "", release())
      // LoRA / adapters
      .def("add_lora", [](Model& mm, int64_t r, double alpha, double dropout, std::vector<std::string> targets,
                          std::vector<int64_t> tokens) {
             LoraConfig c;
             c.r = r;
             c.alpha = alpha;
             c.dropout = dropout;
             c.target_modules = std::move(targets);
             c.trainable_token_indices = std::move(tokens);
             add_lora(mm, c);
           }, py::arg("r"), py::arg("alpha"), py::arg("dropout"), py::arg("target_modules"),
           py::arg("trainable_token_indices"))
      .def_property_readonly("has_adapter", [](const Model& mm) { return has_lora(mm); })
      .def("adapter_config", [](const Model& mm) { return lora_config_dict(lora_config(mm)); })
      .def("mark_only_adapter_trainable", [](Model& mm) { mark_only_adapter_trainable(mm); })
      .def("set_adapter_enabled", [](Model& mm, bool on) { set_adapter_enabled(mm, on); })
      .def("merge_adapter", [](Model& mm) { merge_adapter(mm); })
      .def("unmerge_adapter", [](Model& mm) { unmerge_adapter(mm); })
      .def("merge_and_unload", [](Model& mm) { merge_and_unload(mm); })
      .def("save_adapter", [](const Model& mm, const std::string& dir, const std::string& base) {
             save_adapter(mm, dir, base);
           }, py::arg("dir"), py::arg("base_model") = "", release())
      .def("load_adapter", [](Model& mm, const std::string& dir, bool merge) { load_adapter(mm, dir, merge); },
           py::arg("dir"), py::arg("merge") = false, release())
      .def("save_pretrained", [](Model& mm, const std::string& dir, const Tokenizer* tok) {
             save_hf_directory(dir, mm.config(), model_tensors(mm), tok);
           }, py::arg("dir"), py::arg("tokenizer") = nullptr, release());

  m.def("read_adapter_config", [](const std::string& dir) { return lora_config_dict(read_adapter_config(dir)); });

  m.def("load", [](const std::string& path, const std::string& dtype, const std::string& marks,
                   const std::string& tokenizer, const std::string& device) {
          Loaded r;
          {
            py::gil_scoped_release nogil;
            r = load(path, dtype, marks, tokenizer, device);
          }
          return py::make_tuple(r.model, r.tokenizer ? py::cast(*r.tokenizer) : py::none(),
                                r.marks.present() ? r.marks.left() : -1);
        }, py::arg("path"), py::arg("dtype") = "auto", py::arg("marks") = "find", py::arg("tokenizer") = "",
        py::arg("device") = "cpu",
        "(Model, Tokenizer or None, index of <MARK_L> or -1); marks: 'add', 'find' or 'none'");

  // ---- retrieval
  py::class_<Retriever, std::shared_ptr<Retriever>>(m, "Retriever")
      .def("retrieve", [](Retriever& r, const std::string& q, int64_t k) {
             std::vector<Passage> ps;
             {
               py::gil_scoped_release nogil;
               ps = r.retrieve(q, k);
             }
             py::list out;
             for (const auto& p : ps) {
               py::dict d;
               d["id"] = p.id;
               d["title"] = p.title;
               d["text"] = p.text;
               d["score"] = p.score;
               d["document"] = p.document();
               out.append(d);
             }
             return out;
           }, py::arg("query"), py::arg("k") = 1)
      .def("size", &Retriever::size)
      .def("forbid_titles", [](Retriever& r, const std::vector<std::string>& titles) {
             TitleFilter f = r.title_filter();
             for (const auto& t : titles) f.add(t);
             r.set_title_filter(std::move(f));
           })
      .def("forbid_titles_file", [](Retriever& r, const std::string& path) {
             r.set_title_filter(TitleFilter::from_file(path));
           });
  m.def("open_index", [](const std::string& dir, const std::string& encoder_model) {
          py::gil_scoped_release nogil;
          IndexInfo info = read_index_info(dir);
          std::shared_ptr<TextEncoder> encoder;
          if (info.kind == "dense") {
            const std::string path = encoder_model.empty() ? info.encoder : encoder_model;
            if (path.empty()) throw InvalidArgument(dir + ": a dense index needs an encoder model");
            Checkpoint ck = read_checkpoint(path);
            Tokenizer tok = load_tokenizer(ck);
            encoder = std::make_shared<ModelEncoder>(load_model(ck), std::move(tok), path, info.max_tokens);
          }
          return std::shared_ptr<Retriever>(open_index(dir, encoder));
        }, py::arg("dir"), py::arg("encoder_model") = "");
  m.def("build_bm25_index", [](const std::string& corpus, const std::string& format, const Tokenizer& tok,
                               int64_t max_tokens, const std::string& dir) {
          py::gil_scoped_release nogil;
          const CorpusFormat f = parse_corpus_format(format);
          std::vector<Passage> ps = read_corpus(corpus, f, tok, max_tokens);
          IndexInfo info;
          info.kind = "bm25";
          info.passages = int64_t(ps.size());
          info.max_tokens = max_tokens;
          info.corpus = corpus;
          info.format = format;
          build_bm25_index(ps, info, dir);
          return int64_t(ps.size());
        }, py::arg("corpus"), py::arg("format"), py::arg("tokenizer"), py::arg("max_tokens"), py::arg("dir"));

  // ---- contexts and the RALM loops
  py::class_<AnyContext>(m, "Context")
      .def(py::init([](ModelPtr model, const std::string& mode, int64_t marks_vocab, bool marks, bool kv_reuse,
                       int64_t max_length, int64_t reserve, double window_keep, int64_t capacity) {
             return std::make_unique<AnyContext>(std::move(model), mode, marks_vocab,
                                                 make_context_options(marks, kv_reuse, max_length, reserve, window_keep),
                                                 capacity);
           }), py::arg("model"), py::arg("mode"), py::arg("marks_vocab"), py::arg("marks") = true,
           py::arg("kv_reuse") = true, py::arg("max_length") = 0, py::arg("reserve") = 16, py::arg("window_keep") = 0.5,
           py::arg("capacity") = 0)
      .def("reset", [](AnyContext& c, std::vector<int64_t> input) { c.visit([&](auto& x) { x.reset(input); }); })
      .def("place", [](AnyContext& c, const std::vector<std::vector<int64_t>>& docs) {
             c10::InferenceMode g;
             return c.visit([&](auto& x) { return x.place(docs); });
           }, release(), "places the documents; returns the logits after the layout's last slot [V]")
      .def("append", [](AnyContext& c, const std::vector<int64_t>& tokens, bool all_rows) {
             c10::InferenceMode g;
             return c.visit([&](auto& x) { return x.append(tokens, all_rows); });
           }, py::arg("tokens"), py::arg("all_rows") = false, release())
      .def("layout", [](AnyContext& c) { return c.visit([](auto& x) { return std::vector<int64_t>(x.layout()); }); })
      .def("text", [](AnyContext& c) { return c.visit([](auto& x) { return x.text(); }); })
      .def("stats", [](AnyContext& c) { return stats_dict(c.visit([](auto& x) { return ContextStats(x.stats()); })); })
      .def("cache_size", [](AnyContext& c) { return c.cache().size(); });

  m.def("ralm_generate", [](AnyContext& c, Retriever* retriever, const Tokenizer& tok, const std::vector<int64_t>& prompt,
                            int64_t max_new_tokens, int64_t stride, int64_t query_tokens, int64_t doc_tokens, int64_t k,
                            double temperature, int64_t top_k, double top_p, uint64_t seed,
                            const std::vector<int64_t>& stop_ids) {
          RalmResult r;
          {
            py::gil_scoped_release nogil;
            DocumentSource source(retriever, tok, make_ralm_options(stride, query_tokens, doc_tokens, k));
            SamplingOptions so;
            so.temperature = temperature;
            so.top_k = top_k;
            so.top_p = top_p;
            so.seed = seed;
            Sampler sampler(so);
            r = c.visit([&](auto& x) { return ralm_generate(x, source, prompt, max_new_tokens, sampler, stop_ids); });
          }
          return py::make_tuple(r.ids, stats_dict(r.stats));
        }, py::arg("context"), py::arg("retriever"), py::arg("tokenizer"), py::arg("prompt"), py::arg("max_new_tokens"),
        py::arg("stride") = 16, py::arg("query_tokens") = 32, py::arg("doc_tokens") = 128, py::arg("k") = 1,
        py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0,
        py::arg("stop_ids") = std::vector<int64_t>{});

  m.def("ralm_evaluate", [](AnyContext& c, Retriever* retriever, const Tokenizer& tok, const std::vector<int64_t>& ids,
                            int64_t stride, int64_t query_tokens, int64_t doc_tokens, int64_t k,
                            const std::function<void(int64_t, int64_t)>& progress) {
          EvalResult r;
          {
            py::gil_scoped_release nogil;
            DocumentSource source(retriever, tok, make_ralm_options(stride, query_tokens, doc_tokens, k));
            std::function<void(int64_t, int64_t)> cb;
            if (progress) cb = [&](int64_t d, int64_t t) {
                py::gil_scoped_acquire gil;
                progress(d, t);
              };
            r = c.visit([&](auto& x) { return ralm_evaluate(x, source, ids, cb); });
          }
          py::dict d;
          d["nll"] = r.nll;
          d["tokens"] = r.tokens;
          d["ppl"] = r.ppl();
          d["stats"] = stats_dict(r.stats);
          return d;
        }, py::arg("context"), py::arg("retriever"), py::arg("tokenizer"), py::arg("ids"), py::arg("stride") = 16,
        py::arg("query_tokens") = 32, py::arg("doc_tokens") = 128, py::arg("k") = 1, py::arg("progress") = nullptr);
}
