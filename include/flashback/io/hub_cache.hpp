// Models in the local Hugging Face hub cache (huggingface_hub's layout), found by folder or by repo id:
//   <cache>/models--<org>--<name>/refs/main            the commit the "main" ref points at
//   <cache>/models--<org>--<name>/snapshots/<commit>/  config.json, *.safetensors, tokenizer files
// flashback never downloads: a repo id resolves only to what `huggingface-cli download` (or
// from_pretrained in HF) already put there.
#pragma once

#include <string>

namespace flashback {

// `path` itself when it is a file or an ordinary folder; a hub cache repo folder -> the snapshot refs/main
// names (or its only snapshot); a repo id "org/name" that is no path -> that snapshot in the local cache
// ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub). Anything else: `path` unchanged (the
// loader then says it does not exist). A hub folder without a usable snapshot is a FormatError naming it.
std::string resolve_model_path(const std::string& path);

}  // namespace flashback
