// The parallel-for hook of the kernel core. The core never creates threads itself: each runtime (ExecuTorch's
// threadpool, ONNX Runtime's thread pool, the standalone pool below for tests and benchmarks) supplies a
// bonsai_parallel, and the core cuts its work into tasks that it hands to that hook.
#ifndef BONSAI_PARALLEL_H
#define BONSAI_PARALLEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The library is built with hidden visibility; only the C ABI is exported.
#if defined(_WIN32)
#define BONSAI_API __declspec(dllexport)
#else
#define BONSAI_API __attribute__((visibility("default")))
#endif

// One task of a parallel loop: process task index `task` of the loop described by `task_ctx`.
typedef void (*bonsai_task_fn)(void* task_ctx, int64_t task);

// Runs task(task_ctx, i) for every i in [0, n_tasks), possibly concurrently, and returns when all have
// finished. `runtime_ctx` is the runtime's own state (its thread pool).
typedef void (*bonsai_parallel_for_fn)(void* runtime_ctx, int64_t n_tasks, bonsai_task_fn task, void* task_ctx);

// What a runtime lends the core. A null bonsai_parallel pointer, a null parallel_for or num_threads <= 1 all
// mean "run inline on the calling thread". num_threads is how many tasks may run at once; the core cuts a few
// equal tasks per thread when the work allows (work_split.h), and the hook should give them to whichever thread
// is free, so that a thread slowed by another process takes fewer.
typedef struct bonsai_parallel {
  bonsai_parallel_for_fn parallel_for;
  void* runtime_ctx;
  int32_t num_threads;
} bonsai_parallel;

// Standalone pool of persistent std::threads for tests, benchmarks and the Python binding.
typedef struct bonsai_threadpool bonsai_threadpool;

// Creates a pool that runs loops on `num_threads` threads (the caller counts as one). Returns null on error
// (see bonsai_last_error()).
BONSAI_API bonsai_threadpool* bonsai_threadpool_create(int32_t num_threads);
BONSAI_API void bonsai_threadpool_destroy(bonsai_threadpool* pool);
// The hook to pass to the kernels; valid while the pool lives. A pool runs one loop at a time.
BONSAI_API bonsai_parallel bonsai_threadpool_parallel(bonsai_threadpool* pool);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // BONSAI_PARALLEL_H
