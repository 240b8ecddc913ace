// The one header applications include.
#pragma once

#include "flashback/checkpoint.hpp"
#include "flashback/config.hpp"
#include "flashback/context.hpp"
#include "flashback/dtype.hpp"
#include "flashback/error.hpp"
#include "flashback/generate.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/llama.hpp"
#include "flashback/lora.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/peft.hpp"
#include "flashback/ralm.hpp"
#include "flashback/runtime.hpp"
#include "flashback/sampling.hpp"
#include "flashback/tokenizer.hpp"
