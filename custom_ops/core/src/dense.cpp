// Weight-only quantized dense linear for the output head (and any non-ternary linear): fp32 activations, weights
// in bf16, int8 per output channel, or int4 per group of 32 along K (docs/FORMAT.md, "Dense weights").
// Float activations make the result depend only on float summation order, never on an activation quantizer, so
// every runtime agrees with the eager model to float rounding.
#include <string.h>

#include <string>

#include "bonsai/kernels.h"
#include "status.h"

namespace bonsai {
namespace {

constexpr int kLanes = 16;  // independent partial sums: lets the compiler vectorize without reassociation flags

struct DenseArgs {
  const float* x;
  int64_t m, k;
  const void* w;
  int32_t bits;
  const float* scales;
  int64_t n, n_groups;
  float* y;
  int64_t rows_per_task;
};

inline float bf16_to_f32(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

inline int8_t low_nibble(uint8_t b) { return int8_t(uint8_t(b << 4)) >> 4; }
inline int8_t high_nibble(uint8_t b) { return int8_t(b) >> 4; }

// Weight (row n, column k) widened to float, for one row's pointer.
template <int Bits>
inline float weight_at(const uint8_t* row, int64_t k) {
  if constexpr (Bits == 16) {
    uint16_t v;
    memcpy(&v, row + 2 * k, 2);
    return bf16_to_f32(v);
  } else if constexpr (Bits == 8) {
    return float(int8_t(row[k]));
  } else {
    const uint8_t b = row[k >> 1];
    return float((k & 1) ? high_nibble(b) : low_nibble(b));
  }
}

// sum_{k in [k0, k1)} w[k] * x[k]
template <int Bits>
float dot_range(const uint8_t* row, const float* x, int64_t k0, int64_t k1) {
  float part[kLanes] = {};
  int64_t k = k0;
  for (; k + kLanes <= k1; k += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += weight_at<Bits>(row, k + l) * x[k + l];
  float acc = 0.f;
  for (; k < k1; ++k) acc += weight_at<Bits>(row, k) * x[k];
  for (int l = 0; l < kLanes; ++l) acc += part[l];
  return acc;
}

int64_t row_bytes_of(int32_t bits, int64_t k) { return bits == 16 ? 2 * k : bits == 8 ? k : (k + 1) / 2; }

template <int Bits>
void dense_rows(const DenseArgs& a, int64_t n0, int64_t n1) {
  const int64_t stride = row_bytes_of(Bits, a.k);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = static_cast<const uint8_t*>(a.w) + n * stride;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* x = a.x + m * a.k;
      float y;
      if constexpr (Bits == 4) {
        y = 0.f;
        for (int64_t g = 0; g < a.n_groups; ++g) {
          const int64_t k0 = g * BONSAI_DENSE_INT4_GROUP;
          const int64_t k1 = k0 + BONSAI_DENSE_INT4_GROUP < a.k ? k0 + BONSAI_DENSE_INT4_GROUP : a.k;
          y += a.scales[n * a.n_groups + g] * dot_range<4>(row, x, k0, k1);
        }
      } else {
        y = dot_range<Bits>(row, x, 0, a.k) * a.scales[n];
      }
      a.y[m * a.n + n] = y;
    }
  }
}

void dense_task(void* ctx, int64_t task) {
  const auto& a = *static_cast<const DenseArgs*>(ctx);
  const int64_t n0 = task * a.rows_per_task;
  const int64_t n1 = n0 + a.rows_per_task < a.n ? n0 + a.rows_per_task : a.n;
  if (a.bits == 16) dense_rows<16>(a, n0, n1);
  else if (a.bits == 8) dense_rows<8>(a, n0, n1);
  else dense_rows<4>(a, n0, n1);
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_dense_linear(const float* x, int64_t m, int64_t k, const void* weight, int32_t weight_bits,
                                   const float* scales, int64_t n, float* y, const bonsai_parallel* parallel) {
  using bonsai::fail;
  if (!x || !weight || !scales || !y) return fail(BONSAI_ERR_NULL, "bonsai_dense_linear: null pointer");
  if (m <= 0 || n <= 0 || k <= 0 || k > (int64_t(1) << 24) || n > (int64_t(1) << 31) || m > (int64_t(1) << 31))
    return fail(BONSAI_ERR_SHAPE, "bonsai_dense_linear: expected M, N, K > 0, got M=" + std::to_string(m) +
                                      " N=" + std::to_string(n) + " K=" + std::to_string(k));
  if (weight_bits != 16 && weight_bits != 8 && weight_bits != 4)
    return fail(BONSAI_ERR_ACT_BITS, "bonsai_dense_linear: weight_bits must be 16, 8 or 4, got " +
                                         std::to_string(weight_bits));
  bonsai::clear_error();
  const int64_t groups = (k + BONSAI_DENSE_INT4_GROUP - 1) / BONSAI_DENSE_INT4_GROUP;
  const int32_t threads = parallel && parallel->parallel_for ? parallel->num_threads : 1;
  const int64_t tasks = threads > 1 ? threads : 1;
  bonsai::DenseArgs args{x, m, k, weight, weight_bits, scales, n, groups, y, (n + tasks - 1) / tasks};
  if (tasks > 1) {
    parallel->parallel_for(parallel->runtime_ctx, tasks, bonsai::dense_task, &args);
  } else {
    bonsai::dense_task(&args, 0);
  }
  return BONSAI_OK;
}
