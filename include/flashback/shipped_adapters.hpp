// Adapters that ship with flashback, found by the model they were trained for.
//
// A shipped adapter is a PEFT adapter directory (adapter_config.json +
// adapter_model.safetensors) with a flashback.json beside them:
//   {"fingerprint": "<model_fingerprint of its base>", "base_model": "...", ...}
// load_pretrained() applies the one whose fingerprint matches the checkpoint
// when the marking tokens are added (the layout the adapter was trained for),
// unless an adapter is given or the default is turned off.
//
// The fingerprint names the architecture and the final RMSNorm's weights
// rounded to bf16: the norms are stored unquantized in every GGUF quant type
// and in HF's bf16/fp32 safetensors alike, so one model has one fingerprint
// across formats, while a fine-tune or another model of the same shape does not.
#pragma once

#include <string>
#include <vector>

#include "flashback/checkpoint.hpp"

namespace flashback {

// "llama-v<vocab>-h<hidden>-l<layers>-a<heads>-kv<kv heads>-i<intermediate>-n<16 hex>";
// FormatError (naming the file) when the checkpoint has no model.norm.weight.
std::string model_fingerprint(const Checkpoint& checkpoint);

// Where shipped adapters are looked for, in order: $FLASHBACK_ADAPTERS
// (':'-separated), `extra` (a front end's own place: the CLI's
// <exe>/../share/flashback/adapters, the Python package's prefix), the install
// prefix's share/flashback/adapters, and the source tree's adapters/.
std::vector<std::string> shipped_adapter_dirs(const std::vector<std::string>& extra = {});

// The first adapter directory under `dirs` (each holds one subdirectory per
// adapter) whose flashback.json names `fingerprint`; "" when none does. A
// flashback.json that is not valid is a FormatError naming it.
std::string find_shipped_adapter(const std::string& fingerprint, const std::vector<std::string>& dirs);

// Writes `dir`/flashback.json (atomically) for an adapter trained on `checkpoint`.
void write_shipped_adapter_info(const std::string& dir, const Checkpoint& checkpoint, const std::string& base_model,
                                const std::string& description);

}  // namespace flashback
