// Process-wide runtime settings.
#pragma once

namespace flashback {

// Sets LibTorch's intra-op thread count (LibTorch here starts with 1):
// n > 0, else $FLASHBACK_THREADS, else $OMP_NUM_THREADS, else every core.
// Returns the count in effect.
int init_threads(int n = 0);

// Once per process: init_threads() when $FLASHBACK_THREADS is set, or unless
// the application already chose a thread count (anything but LibTorch 1.x's
// starting value of 1). load_model() calls it, so a model loaded from C++
// uses every core by default and $FLASHBACK_THREADS holds under any LibTorch.
void ensure_default_threads();

}  // namespace flashback
