// ExecuTorch kernel for bonsai::dense_linear.out (weight-only quantized head): validates, then calls the core.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include "bonsai/kernels.h"
#include "et_common.h"

namespace bonsai_et {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// dense_linear.out(Tensor x, Tensor weight, Tensor scales, int in_features, int weight_bits, *, Tensor(a!) out)
Tensor& dense_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& scales,
                         int64_t in_features, int64_t weight_bits, Tensor& out) {
  const int64_t k = in_features;
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float &&
                      scales.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "bonsai::dense_linear: x, scales and out must be float32");
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && x.dim() <= 8 && k > 0 && x.size(x.dim() - 1) == k && weight.dim() == 2,
                      InvalidArgument, out, "bonsai::dense_linear: x [..., K=%lld] and weight [N, *] expected",
                      (long long)k);
  const int64_t n = weight.size(0), groups = (k + BONSAI_DENSE_INT4_GROUP - 1) / BONSAI_DENSE_INT4_GROUP;
  const bool ok = (weight_bits == 16 && weight.scalar_type() == ScalarType::BFloat16 && weight.size(1) == k &&
                   scales.numel() == n) ||
                  (weight_bits == 8 && weight.scalar_type() == ScalarType::Char && weight.size(1) == k &&
                   scales.numel() == n) ||
                  (weight_bits == 4 && weight.scalar_type() == ScalarType::Byte && weight.size(1) == (k + 1) / 2 &&
                   scales.numel() == n * groups);
  ET_KERNEL_CHECK_MSG(ctx, ok, InvalidArgument, out,
                      "bonsai::dense_linear: weight/scales do not match weight_bits=%lld and K=%lld",
                      (long long)weight_bits, (long long)k);
  ET_KERNEL_CHECK_MSG(ctx, resize_last_dim(out, x, n) == Error::Ok,
                      InvalidArgument, out, "bonsai::dense_linear: cannot resize out");
  const int64_t m = x.numel() / k;
  if (m == 0) return out;
  const bonsai_parallel par = et_parallel();
  const int status = bonsai_dense_linear(x.const_data_ptr<float>(), m, k, weight.const_data_ptr(),
                                         static_cast<int32_t>(weight_bits), scales.const_data_ptr<float>(), n,
                                         out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, InvalidArgument, out, "bonsai::dense_linear: %s",
                      bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "dense_linear.out", bonsai_et::dense_linear_out);
