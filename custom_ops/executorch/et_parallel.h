// The kernel core's parallel-for hook backed by ExecuTorch's threadpool (shared by the op bindings).
#ifndef BONSAI_ET_PARALLEL_H
#define BONSAI_ET_PARALLEL_H

#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "bonsai/parallel.h"

namespace bonsai_et {

inline void et_parallel_for(void* /*runtime_ctx*/, int64_t n_tasks, bonsai_task_fn task, void* task_ctx) {
  executorch::extension::parallel_for(0, n_tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) task(task_ctx, i);
  });
}

inline bonsai_parallel et_parallel() {
  return {et_parallel_for, nullptr, static_cast<int32_t>(executorch::extension::get_thread_count())};
}

}  // namespace bonsai_et

#endif  // BONSAI_ET_PARALLEL_H
