// Process-wide runtime settings.
#pragma once

namespace flashback {

// Sets LibTorch's intra-op thread count (LibTorch here starts with 1):
// n > 0, else $FLASHBACK_THREADS, else $OMP_NUM_THREADS, else every core.
// Returns the count in effect.
int init_threads(int n = 0);

}  // namespace flashback
