// ExecuTorch kernel for bonsai::ternary_linear.out: the core validates the tensors (bonsai_check_ternary_linear),
// then runs the kernel with ExecuTorch's threadpool as the parallel-for hook. No math here (custom_ops/core does it).
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
  int64_t m = 0, n = 0;
  const TensorDesc xd(x), pd(packed), sd(scales);
  const int checked = bonsai_check_ternary_linear("bonsai::ternary_linear", xd.get(), pd.get(), sd.get(),
                                                  in_features, act_bits, &m, &n);
  ET_KERNEL_CHECK_MSG(ctx, checked == BONSAI_OK, InvalidArgument, out, "%s", bonsai_last_error());
  if (!linear_out_ready(ctx, "bonsai::ternary_linear", x, packed, scales, n, out)) return out;
  if (m == 0) return out;  // an empty x: nothing to compute

  const bonsai_parallel par = et_parallel();
  const int status = bonsai_ternary_linear(x.const_data_ptr<float>(), m, in_features,
                                           packed.const_data_ptr<uint8_t>(), packed.size(1),
                                           scales.const_data_ptr<float>(), n, static_cast<int32_t>(act_bits),
                                           out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, Internal, out, "bonsai::ternary_linear: %s", bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "ternary_linear.out", bonsai_et::ternary_linear_out);
