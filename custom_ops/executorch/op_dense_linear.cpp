// ExecuTorch kernel for bonsai::dense_linear.out (the quantized head): the core validates the tensors
// (bonsai_check_dense_linear), then runs the kernel.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include "bonsai/kernels.h"
#include "et_common.h"

namespace bonsai_et {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// dense_linear.out(Tensor x, Tensor weight, Tensor scales, int in_features, int weight_bits, int act_bits=0, *,
//                  Tensor(a!) out)
Tensor& dense_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& scales,
                         int64_t in_features, int64_t weight_bits, int64_t act_bits, Tensor& out) {
  int64_t m = 0, n = 0;
  const TensorDesc xd(x), wd(weight), sd(scales);
  const int checked = bonsai_check_dense_linear("bonsai::dense_linear", xd.get(), wd.get(), sd.get(), in_features,
                                                weight_bits, act_bits, &m, &n);
  ET_KERNEL_CHECK_MSG(ctx, checked == BONSAI_OK, InvalidArgument, out, "%s", bonsai_last_error());
  if (!linear_out_ready(ctx, "bonsai::dense_linear", x, weight, scales, n, out)) return out;
  if (m == 0) return out;  // an empty x: nothing to compute
  const bonsai_parallel par = et_parallel(m);
  const int status = bonsai_dense_linear(x.const_data_ptr<float>(), m, in_features, weight.const_data_ptr(),
                                         static_cast<int32_t>(weight_bits), scales.const_data_ptr(), n,
                                         static_cast<int32_t>(act_bits), out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, Internal, out, "bonsai::dense_linear: %s", bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "dense_linear.out", bonsai_et::dense_linear_out);
