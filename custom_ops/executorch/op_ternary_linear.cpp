// ExecuTorch kernel for bonsai::ternary_linear.out: validates the tensors, then calls the shared kernel core
// with ExecuTorch's threadpool as the parallel-for hook. No math here (custom_ops/core does it).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include "bonsai/kernels.h"
#include "et_common.h"

namespace bonsai_et {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// ternary_linear.out(Tensor x, Tensor packed, Tensor scales, int in_features, int act_bits, *, Tensor(a!) out)
Tensor& ternary_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& packed, const Tensor& scales,
                           int64_t in_features, int64_t act_bits, Tensor& out) {
  const int64_t k = in_features;
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "bonsai::ternary_linear: x and out must be float32");
  ET_KERNEL_CHECK_MSG(ctx, packed.scalar_type() == ScalarType::Byte && packed.dim() == 2, InvalidArgument, out,
                      "bonsai::ternary_linear: packed must be uint8 [N, row_bytes(K)]");
  ET_KERNEL_CHECK_MSG(ctx, scales.scalar_type() == ScalarType::Float && scales.dim() == 1, InvalidArgument, out,
                      "bonsai::ternary_linear: scales must be float32 [N]");
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && x.dim() <= 8 && k > 0 && x.size(x.dim() - 1) == k, InvalidArgument,
                      out, "bonsai::ternary_linear: x's last dim must equal in_features=%lld", (long long)k);
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_default_dim_order(x) &&
                      executorch::runtime::tensor_is_default_dim_order(packed), InvalidArgument, out,
                      "bonsai::ternary_linear: x and packed must be contiguous");
  const int64_t n = packed.size(0);
  ET_KERNEL_CHECK_MSG(ctx, packed.size(1) == bonsai_row_bytes(k) && scales.size(0) == n, InvalidArgument, out,
                      "bonsai::ternary_linear: packed [%lld, %lld] / scales [%lld] do not fit K=%lld",
                      (long long)n, (long long)packed.size(1), (long long)scales.size(0), (long long)k);
  ET_KERNEL_CHECK_MSG(ctx, act_bits == 0 || act_bits == 8, InvalidArgument, out,
                      "bonsai::ternary_linear: act_bits must be 0 or 8, got %lld", (long long)act_bits);

  ET_KERNEL_CHECK_MSG(ctx, resize_last_dim(out, x, n) == Error::Ok,
                      InvalidArgument, out, "bonsai::ternary_linear: cannot resize out");
  const int64_t m = x.numel() / k;
  if (m == 0) return out;

  const bonsai_parallel par = et_parallel();
  const int status = bonsai_ternary_linear(x.const_data_ptr<float>(), m, k, packed.const_data_ptr<uint8_t>(),
                                           packed.size(1), scales.const_data_ptr<float>(), n,
                                           static_cast<int32_t>(act_bits), out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, Internal, out, "bonsai::ternary_linear: %s", bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "ternary_linear.out", bonsai_et::ternary_linear_out);
