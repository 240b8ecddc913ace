// The model, its LoRA adapter and PEFT files, and loading as the CLI loads.
#include "bindings.hpp"
#include "flashback/checkpoint.hpp"
#include "flashback/dtype.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/lora.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/options.hpp"
#include "flashback/peft.hpp"
#include "flashback/pretrained.hpp"
#include "flashback/shipped_adapters.hpp"

namespace flashback::python {

namespace {
using Model = LlamaForCausalLMImpl;
using ModelPtr = std::shared_ptr<Model>;

// PEFT's adapter_config.json fields, as the adapter files write them.
py::object lora_config_dict(const LoraConfig& c) { return from_json(adapter_config_json(c)); }
}  // namespace

void bind_model(py::module_& m) {
  m.def("supports_dtype", [](const std::string& dtype, const std::string& device) {
    return supports_dtype(parse_dtype(dtype).value_or(at::kFloat), at::Device(device));
  });

  py::class_<KVCacheStore>(m, "KVCache")
      .def("size", &KVCacheStore::size)
      .def("capacity", &KVCacheStore::capacity)
      .def("batch", &KVCacheStore::batch)
      .def_property_readonly("dtype", [](const KVCacheStore& c) { return dtype_name(c.dtype()); })
      .def("bytes_allocated", &KVCacheStore::bytes_allocated)
      .def("truncate", &KVCacheStore::truncate, py::arg("n"));

  py::class_<Model, ModelPtr>(m, "Model")
      .def_static("random", [](const std::string& config_json, uint64_t seed, const std::string& dtype) {
            LlamaForCausalLMOptions o;
            o.dtype = parse_dtype(dtype).value_or(at::kFloat);
            auto model = std::make_shared<Model>(LlamaConfig::from_json(config_json, "config"), o);
            model->init_random(seed);
            return model;
          }, py::arg("config_json"), py::arg("seed") = 0, py::arg("dtype") = "float32")
      .def_property_readonly("config_json", [](const Model& mm) { return mm.config().to_json(); })
      .def_property_readonly("dtype", [](const Model& mm) { return dtype_name(mm.dtype()); })
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
           }, py::arg("tokens"), py::arg("positions") = py::none(), release_gil())
      .def("forward_cached", [](Model& mm, const at::Tensor& tokens, KVCacheStore& cache,
                                const std::optional<at::Tensor>& positions) {
             return mm.forward(tokens, positions.value_or(at::Tensor()), cache);
           }, py::arg("tokens"), py::arg("cache"), py::arg("positions") = py::none(), release_gil())
      .def("hidden_states", [](Model& mm, const at::Tensor& tokens, const std::optional<at::Tensor>& positions) {
             return mm.hidden_states(tokens, positions.value_or(at::Tensor()), nullptr);
           }, py::arg("tokens"), py::arg("positions") = py::none(), release_gil())
      .def("logits", [](Model& mm, const at::Tensor& h) { return mm.logits(h); }, py::arg("hidden"), release_gil())
      .def("make_cache", [](const Model& mm, int64_t batch, int64_t capacity, const std::string& kv_dtype) {
             return mm.make_cache(batch, capacity, RalmOptions::parse_kv_dtype(kv_dtype));
           }, py::arg("batch") = 1, py::arg("capacity") = 0, py::arg("kv_dtype") = "",
           "a KV cache for this model; kv_dtype '' or 'auto': the model's dtype")
      .def_property_readonly("quantized_weights", [](const Model& mm) { return mm.quantized_weights(); },
                             "the weights kept in their GGUF blocks (keep_quantized), by name")
      .def("train", [](Model& mm, bool on) { mm.train(on); }, py::arg("mode") = true)
      .def_property_readonly("training", [](const Model& mm) { return mm.is_training(); })
      .def("to", [](Model& mm, const std::string& device, const std::string& dtype) {
             auto dt = parse_dtype(dtype);
             at::Device dev(device.empty() ? mm.device().str() : device);
             mm.to(dev, dt.value_or(mm.dtype()));
           }, py::arg("device") = "", py::arg("dtype") = "", release_gil())
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
      .def("set_adapter_enabled", [](Model& mm, bool on) { set_adapter_enabled(mm, on); }, py::arg("enabled"))
      .def("merge_adapter", [](Model& mm) { merge_adapter(mm); })
      .def("unmerge_adapter", [](Model& mm) { unmerge_adapter(mm); })
      .def("merge_and_unload", [](Model& mm) { merge_and_unload(mm); })
      .def("save_adapter", [](const Model& mm, const std::string& dir, const std::string& base, const std::string& dtype) {
             save_adapter(mm, dir, base, parse_dtype(dtype));
           }, py::arg("dir"), py::arg("base_model") = "", py::arg("dtype") = "auto", release_gil())
      .def("load_adapter", [](Model& mm, const std::string& dir, bool merge) { load_adapter(mm, dir, merge); },
           py::arg("dir"), py::arg("merge") = false, release_gil())
      .def("save_pretrained", [](Model& mm, const std::string& dir, const Tokenizer* tok) {
             save_hf_directory(dir, mm.config(), model_tensors(mm), tok);
           }, py::arg("dir"), py::arg("tokenizer") = nullptr, release_gil())
      .def("save_gguf", [](Model& mm, const std::string& path, const Tokenizer& tok, const std::string& dtype) {
             save_gguf(path, mm.config(), model_tensors(mm), tok, parse_dtype(dtype).value_or(mm.dtype()));
           }, py::arg("path"), py::arg("tokenizer"), py::arg("dtype") = "auto", release_gil());

  m.def("dequantize", [](uint32_t ggml_type, const py::bytes& data, int64_t n) {
          const std::string bytes = data;
          at::Tensor out = at::empty({n}, at::kFloat);
          dequantize(ggml_type, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), n, out.data_ptr<float>(),
                     "dequantize");
          return out;
        }, py::arg("ggml_type"), py::arg("data"), py::arg("n"),
        "n values of ggml type `ggml_type` (Q4_0 = 2, ... Q6_K = 14) from their blocks, as fp32 [n]");
  m.def("read_adapter_config", [](const std::string& dir) { return lora_config_dict(read_adapter_config(dir)); },
        py::arg("dir"));
  m.def("default_lora_config", [] { return lora_config_dict(LoraConfig{}); }, "the paper's LoRA: r 16, alpha 32, ...");
  m.def("lora_target_names", &lora_target_names, "the projections LoRA may adapt, in canonical order");

  py::class_<MarkingToken>(m, "MarkingToken", "<MARK_L>, <MARK_R>: the last two rows of a vocabulary")
      .def(py::init<int64_t>(), py::arg("vocab_size"))
      .def_property_readonly("left", &MarkingToken::left)
      .def_property_readonly("right", &MarkingToken::right)
      .def("strip", &MarkingToken::strip, py::arg("logits"), "logits [..., V] -> [..., V - 2]: the marks out")
      .def("wrap", &MarkingToken::wrap, py::arg("docs"), "<MARK_L> docs... <MARK_R>");

  m.def("load", [](const std::string& path, const std::string& dtype, const std::string& marks,
                   const std::string& tokenizer, const std::string& device, const std::string& adapter, bool merge,
                   bool default_adapter, const std::vector<std::string>& adapter_dirs, bool keep_quantized) {
          PretrainedOptions o;
          o.keep_quantized = keep_quantized;
          o.adapter = adapter;
          o.default_adapter = default_adapter;
          o.adapter_dirs = adapter_dirs;
          o.merge_adapter = merge;
          o.tokenizer = tokenizer;
          o.require_tokenizer = false;
          o.dtype = parse_dtype(dtype);
          o.device = at::Device(device);
          o.marks = parse_marks_policy(marks);
          Pretrained p;
          {
            py::gil_scoped_release nogil;
            p = load_pretrained(path, o);
          }
          return py::make_tuple(ModelPtr(p.model.ptr()), p.tokenizer ? py::cast(*p.tokenizer) : py::none(),
                                p.marks.present() ? p.marks.left() : -1, p.adapter);
        }, py::arg("path"), py::arg("dtype") = "auto", py::arg("marks") = "find", py::arg("tokenizer") = "",
        py::arg("device") = "cpu", py::arg("adapter") = "", py::arg("merge_adapter") = false,
        py::arg("default_adapter") = true, py::arg("adapter_dirs") = std::vector<std::string>{},
        py::arg("keep_quantized") = false,
        "(Model, Tokenizer or None, index of <MARK_L> or -1, the adapter directory loaded or ''); marks: 'add', "
        "'find' or 'none'; with marks 'add' and no adapter, default_adapter loads the one shipped for this model; "
        "keep_quantized: a GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K layer projections stay in their blocks (CPU inference)");
  m.def("model_fingerprint", [](const std::string& path) { return model_fingerprint(read_checkpoint(path)); },
        py::arg("path"), "the identity shipped adapters are matched on (shipped_adapters.hpp)", release_gil());
  m.def("write_shipped_adapter_info", [](const std::string& dir, const std::string& model, const std::string& base,
                                         const std::string& description) {
          write_shipped_adapter_info(dir, read_checkpoint(model), base, description);
        }, py::arg("dir"), py::arg("model"), py::arg("base_model"), py::arg("description"), release_gil());
  m.def("shipped_adapter_dirs", [](const std::vector<std::string>& extra) { return shipped_adapter_dirs(extra); },
        py::arg("extra") = std::vector<std::string>{});
}

}  // namespace flashback::python
