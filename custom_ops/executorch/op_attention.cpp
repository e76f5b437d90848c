// ExecuTorch kernel for bonsai::attention.out: the core validates the tensors (bonsai_check_attention) and the
// position (bonsai_attention), then runs the cache attention.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include "bonsai/kernels.h"
#include "et_common.h"

namespace bonsai_et {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// attention.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos, *, Tensor(a!) out)
//   q [1, T, H, D], caches [1, Hkv, S, D] (float32 or fp16), input_pos [1] int64, out [1, T, H, D]
Tensor& attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& input_pos, Tensor& out) {
  const TensorDesc qd(q), kd(k_cache), vd(v_cache), pd(input_pos);
  const int checked = bonsai_check_attention("bonsai::attention", qd.get(), kd.get(), vd.get(), pd.get());
  ET_KERNEL_CHECK_MSG(ctx, checked == BONSAI_OK, InvalidArgument, out, "%s", bonsai_last_error());
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "bonsai::attention: out must be float32");
  ET_KERNEL_CHECK_MSG(ctx, contiguous(q, k_cache, v_cache), InvalidArgument, out,
                      "bonsai::attention: q and the caches must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, out,
                      "bonsai::attention: cannot resize out");
  const int64_t pos = input_pos.const_data_ptr<int64_t>()[0];  // any value: bonsai_attention checks the range
  const bonsai_parallel par = et_parallel(q.size(1));
  const int status =
      k_cache.scalar_type() == ScalarType::Half  // the checker let through float32 or fp16 caches, both alike
          ? bonsai_attention_f16(q.const_data_ptr<float>(), q.size(1), q.size(2), q.size(3),
                                 static_cast<const uint16_t*>(k_cache.const_data_ptr()),
                                 static_cast<const uint16_t*>(v_cache.const_data_ptr()), k_cache.size(1),
                                 k_cache.size(2), pos, out.mutable_data_ptr<float>(), &par)
          : bonsai_attention(q.const_data_ptr<float>(), q.size(1), q.size(2), q.size(3),
                             k_cache.const_data_ptr<float>(), v_cache.const_data_ptr<float>(), k_cache.size(1),
                             k_cache.size(2), pos, out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, InvalidArgument, out, "bonsai::attention: %s", bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "attention.out", bonsai_et::attention_out);
