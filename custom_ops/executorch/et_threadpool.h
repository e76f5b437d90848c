// ExecuTorch's threadpool as the op library and bonsai_runner use it. The executorch wheel ships
// libexecutorch_threadpool.so but not threadpool.h; these declarations match the library's exported symbols
// (ExecuTorch 1.5: extension/threadpool/threadpool.h).
#ifndef BONSAI_ET_THREADPOOL_H
#define BONSAI_ET_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

#include <executorch/runtime/core/function_ref.h>

namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  // Runs fn(0 .. range - 1) on pthreadpool, which lets idle threads steal items; returns when all have run.
  void run(executorch::runtime::FunctionRef<void(size_t)> fn, size_t range);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

#endif  // BONSAI_ET_THREADPOOL_H
