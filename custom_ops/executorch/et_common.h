// What the ExecuTorch op bindings share: the core's parallel-for hook (et_parallel.cpp), the tensor descriptions
// for the core's validators, and the output checks and resize of the linear ops.
#ifndef BONSAI_ET_COMMON_H
#define BONSAI_ET_COMMON_H

#include <executorch/runtime/kernel/kernel_includes.h>

#include "bonsai/kernels.h"
#include "bonsai/parallel.h"

namespace bonsai_et {

// The parallel-for hook of a call over `tokens` tokens (et_parallel.cpp): ExecuTorch's threadpool, except for
// single-token calls (decode), which run on a pool of the library's own.
bonsai_parallel et_parallel(int64_t tokens);

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
      case ScalarType::Half: return BONSAI_DTYPE_F16;
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

// The output side both linear ops share, after the core's validator passed: out is float32, the inputs are
// contiguous, and out is resized to x's shape with the last dim n. False (with the error logged and set on ctx)
// otherwise.
inline bool linear_out_ready(executorch::runtime::KernelRuntimeContext& ctx, const char* op,
                             const executorch::aten::Tensor& x, const executorch::aten::Tensor& weight,
                             const executorch::aten::Tensor& scales, int64_t n, executorch::aten::Tensor& out) {
  using executorch::runtime::Error;
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == executorch::aten::ScalarType::Float, InvalidArgument, false,
                      "%s: out must be float32", op);
  ET_KERNEL_CHECK_MSG(ctx, contiguous(x, weight, scales), InvalidArgument, false,
                      "%s: x, weight and scales must be contiguous", op);
  executorch::aten::SizesType sizes[BONSAI_MAX_RANK];  // x.dim() in [1, BONSAI_MAX_RANK]: checked by the core
  for (int64_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(n);
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())}) ==
                               Error::Ok, InvalidArgument, false, "%s: cannot resize out to [..., %lld]", op,
                      (long long)n);
  return true;
}

}  // namespace bonsai_et

#endif  // BONSAI_ET_COMMON_H
