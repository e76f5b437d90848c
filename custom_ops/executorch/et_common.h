// What the ExecuTorch op bindings share: the core's parallel-for hook backed by ExecuTorch's threadpool, and the
// output resize of the linear ops.
#ifndef BONSAI_ET_COMMON_H
#define BONSAI_ET_COMMON_H

#include <executorch/runtime/kernel/kernel_includes.h>
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

// Resizes out to x's shape with the last dim replaced by n (x.dim() in [1, 8], checked by the caller).
inline executorch::runtime::Error resize_last_dim(executorch::aten::Tensor& out, const executorch::aten::Tensor& x,
                                                  int64_t n) {
  executorch::aten::SizesType sizes[8];
  for (int64_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(n);
  return executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())});
}

}  // namespace bonsai_et

#endif  // BONSAI_ET_COMMON_H
