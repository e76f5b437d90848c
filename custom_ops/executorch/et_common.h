// What the ExecuTorch op bindings share: the core's parallel-for hook backed by ExecuTorch's threadpool, the
// tensor descriptions for the core's validators, and the output resize of the linear ops.
#ifndef BONSAI_ET_COMMON_H
#define BONSAI_ET_COMMON_H

#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "bonsai/kernels.h"
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

// An ExecuTorch tensor as the core's validators (bonsai_check_*) see it. The sizes are copied: ExecuTorch keeps
// them as int32. A rank above BONSAI_MAX_RANK is passed on as is (the core refuses it before reading dims).
class TensorDesc {
 public:
  explicit TensorDesc(const executorch::aten::Tensor& t)
      : desc_{dtype_of(t.scalar_type()), static_cast<int32_t>(t.dim()), dims_} {
    for (int64_t d = 0; d < t.dim() && d < BONSAI_MAX_RANK; ++d) dims_[d] = t.size(d);
  }
  TensorDesc(const TensorDesc&) = delete;  // desc_ points into this object
  TensorDesc& operator=(const TensorDesc&) = delete;
  const bonsai_tensor* get() const { return &desc_; }

 private:
  static int32_t dtype_of(executorch::aten::ScalarType type) {
    using executorch::aten::ScalarType;
    switch (type) {
      case ScalarType::Float: return BONSAI_DTYPE_F32;
      case ScalarType::BFloat16: return BONSAI_DTYPE_BF16;
      case ScalarType::Char: return BONSAI_DTYPE_I8;
      case ScalarType::Byte: return BONSAI_DTYPE_U8;
      case ScalarType::Long: return BONSAI_DTYPE_I64;
      default: return BONSAI_DTYPE_OTHER;
    }
  }
  int64_t dims_[BONSAI_MAX_RANK] = {};
  bonsai_tensor desc_;
};

// Whether every tensor is in the default (contiguous) dim order: the core reads plain row-major buffers.
template <typename... Tensors>
bool contiguous(const Tensors&... tensors) {
  return (executorch::runtime::tensor_is_default_dim_order(tensors) && ...);
}

// Resizes out to x's shape with the last dim replaced by n (x.dim() in [1, BONSAI_MAX_RANK], checked by the
// core's validator).
inline executorch::runtime::Error resize_last_dim(executorch::aten::Tensor& out, const executorch::aten::Tensor& x,
                                                  int64_t n) {
  executorch::aten::SizesType sizes[BONSAI_MAX_RANK];
  for (int64_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(n);
  return executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())});
}

}  // namespace bonsai_et

#endif  // BONSAI_ET_COMMON_H
