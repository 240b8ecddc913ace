#include "flashback/pretrained.hpp"

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/peft.hpp"
#include "flashback/shipped_adapters.hpp"

namespace flashback {

MarksPolicy parse_marks_policy(const std::string& name) {
  if (name == "add") return MarksPolicy::Add;
  if (name == "find") return MarksPolicy::Find;
  if (name == "none") return MarksPolicy::None;
  throw InvalidArgument("marks must be 'add', 'find' or 'none', not '" + name + "'");
}

Pretrained load_pretrained(const std::string& path, const PretrainedOptions& o) {
  Checkpoint ck = read_checkpoint(path, o.keep_quantized);
  Pretrained r;
  try {
    r.tokenizer = load_tokenizer(ck, o.tokenizer);
  } catch (const Error&) {
    // Marks need the tokenizer's vocabulary to be placed after.
    if (o.require_tokenizer || !o.tokenizer.empty() || o.marks == MarksPolicy::Add) throw;
  }
  // The shipped adapter carries the marks' rows: it belongs to a model given them.
  if (o.adapter.empty() && o.default_adapter && o.marks == MarksPolicy::Add && ck.tensors.count("model.norm.weight")) {
    r.adapter = find_shipped_adapter(model_fingerprint(ck), shipped_adapter_dirs(o.adapter_dirs));
    r.adapter_default = !r.adapter.empty();
  } else {
    r.adapter = o.adapter;
  }
  if (o.marks == MarksPolicy::Add) r.marks = add_marking_tokens(ck, *r.tokenizer);
  if (o.marks == MarksPolicy::Find && r.tokenizer) r.marks = find_marking_tokens(ck, *r.tokenizer);
  LoadOptions lo;
  lo.dtype = o.dtype;
  lo.device = o.device;
  lo.keep_quantized = o.keep_quantized;
  r.model = load_model(ck, lo);
  ck.tensors.clear();  // release the mapped file
  if (!r.adapter.empty()) {
    load_adapter(*r.model, r.adapter, o.merge_adapter && !r.model->keeps_quantized());  // blocks take no merge
    r.model->eval();
  }
  return r;
}

}  // namespace flashback
