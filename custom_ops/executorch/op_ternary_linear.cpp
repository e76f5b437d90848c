// ExecuTorch kernel for bonsai::ternary_linear.out: the core validates the tensors (bonsai_check_ternary_linear)
// and, once per weight buffer, the codes (bonsai_check_ternary_codes),
// then runs the kernel with ExecuTorch's threadpool as the parallel-for hook. No math here (custom_ops/core does it).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <mutex>
#include <set>
#include <tuple>

#include "bonsai/kernels.h"
#include "et_common.h"

namespace bonsai_et {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

namespace {

// ExecuTorch does not tell a kernel which inputs are the program's constants, so the codes of a weight buffer are
// checked on its first call and the buffer remembered by address, size and a sample of its bytes (one pass over
// the weights per call would double what decode reads). A buffer freed and reused at the same address for weights
// of the same size and sampled bytes is not scanned again.
using SeenBuffer = std::tuple<const uint8_t*, int64_t, uint64_t>;
constexpr size_t kMaxSeenBuffers = 1 << 16;  // weights fed as inputs may change address every call

uint64_t sample_bytes(const uint8_t* p, int64_t bytes) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over 64 evenly spaced bytes and the last one
  for (int64_t i = 0; i < 64; ++i) h = (h ^ p[i * bytes / 64]) * 1099511628211ull;
  return (h ^ p[bytes - 1]) * 1099511628211ull;
}

bool codes_checked(const uint8_t* packed, int64_t n, int64_t row_bytes) {
  static std::mutex mutex;
  static std::set<SeenBuffer> seen;
  const SeenBuffer key{packed, n * row_bytes, sample_bytes(packed, n * row_bytes)};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (seen.count(key)) return true;
  }
  if (bonsai_check_ternary_codes("bonsai::ternary_linear", packed, n, row_bytes) != BONSAI_OK) return false;
  std::lock_guard<std::mutex> lock(mutex);
  if (seen.size() >= kMaxSeenBuffers) seen.clear();
  seen.insert(key);
  return true;
}

}  // namespace

// ternary_linear.out(Tensor x, Tensor packed, Tensor scales, int in_features, int act_bits, int scale_layout=0, *,
//                    Tensor(a!) out); scale_layout 0: scales f32 [N]; 1: f16 [N, num_blocks(K)] (docs/FORMAT.md)
Tensor& ternary_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& packed, const Tensor& scales,
                           int64_t in_features, int64_t act_bits, int64_t scale_layout, Tensor& out) {
  int64_t m = 0, n = 0;
  const TensorDesc xd(x), pd(packed), sd(scales);
  const int checked = bonsai_check_ternary_linear_ex("bonsai::ternary_linear", xd.get(), pd.get(), sd.get(),
                                                     in_features, act_bits, scale_layout, &m, &n);
  ET_KERNEL_CHECK_MSG(ctx, checked == BONSAI_OK, InvalidArgument, out, "%s", bonsai_last_error());
  ET_KERNEL_CHECK_MSG(ctx, codes_checked(packed.const_data_ptr<uint8_t>(), n, packed.size(1)), InvalidArgument,
                      out, "%s", bonsai_last_error());
  if (!linear_out_ready(ctx, "bonsai::ternary_linear", x, packed, scales, n, out)) return out;
  if (m == 0) return out;  // an empty x: nothing to compute

  const bonsai_parallel par = et_parallel(m);
  const int status = bonsai_ternary_linear_ex(x.const_data_ptr<float>(), m, in_features,
                                              packed.const_data_ptr<uint8_t>(), packed.size(1),
                                              scales.const_data_ptr(), static_cast<int32_t>(scale_layout), n,
                                              static_cast<int32_t>(act_bits), out.mutable_data_ptr<float>(), &par);
  ET_KERNEL_CHECK_MSG(ctx, status == BONSAI_OK, Internal, out, "bonsai::ternary_linear: %s", bonsai_last_error());
  return out;
}

}  // namespace bonsai_et

EXECUTORCH_LIBRARY(bonsai, "ternary_linear.out", bonsai_et::ternary_linear_out);
