// The op library's thread setting, for a host (bonsai_runner) that owns the process's threads.
#ifndef BONSAI_ET_THREADS_H
#define BONSAI_ET_THREADS_H

#include <stdint.h>

// Every bonsai op call, prefill and decode alike, then runs on the library's own pool of `threads` threads, and
// ExecuTorch's pool (XNNPACK's, fixed when a program loads) may be left at one thread. 0: follow ExecuTorch's
// pool (the default, for hosts such as the Python runtime that set only that one).
extern "C" __attribute__((visibility("default"))) void bonsai_et_set_threads(int32_t threads);

#endif  // BONSAI_ET_THREADS_H
