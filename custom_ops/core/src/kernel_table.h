// Internal: the table of kernels that one ISA provides, and the per-ISA tables. The dispatch point (dispatch.cpp)
// is the only place that picks one; the C entry points (api.cpp) validate arguments, prepare activations and
// split the work over threads before calling into it.
//
// Conventions shared by every kernel:
//   - `nblocks` = num_blocks(K); activation rows are padded to nblocks * kBlockK with zeros by the caller, so
//     kernels only ever see whole blocks (the weight padding is code 1 = 0 anyway);
//   - weights: row n starts at w + n * w_stride (w_stride = row_bytes(K)); kernels handle rows [n0, n1);
//   - outputs: element (m, n) lives at out[m * out_stride + n];
//   - no alignment is assumed anywhere (unaligned loads only).
#ifndef BONSAI_KERNEL_TABLE_H
#define BONSAI_KERNEL_TABLE_H

#include <stdint.h>

#include "bonsai/ternary_format.h"

namespace bonsai {

struct KernelTable {
  const char* name;
  // x float32[k] -> q int8[padded_k(k)] (tail zeroed) and *d; bit-exact with formats.quantize_activations.
  void (*quantize_row_i8)(const float* x, int64_t k, int8_t* q, float* d);
  // acc[n] = sum_k q[k] * T[n, k] for one token (decode).
  void (*gemv_i8)(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0, int64_t n1,
                  int32_t* acc);
  // acc[m, n] for m in [0, m_count): q rows at q + m * q_stride (prefill).
  void (*gemm_i8)(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                  int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride);
  // y[n] = scale[n] * sum_k T[n, k] * x[k] for one float token.
  void (*gemv_f32)(const float* x, int64_t nblocks, const uint8_t* w, int64_t w_stride, const float* scales,
                   int64_t n0, int64_t n1, float* y);
  // y[m, n] for m in [0, m_count): x rows at x + m * x_stride.
  void (*gemm_f32)(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                   int64_t w_stride, const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride);
};

// One table per translation unit; each is compiled only with its own ISA flags and is referenced only after
// dispatch.cpp has checked the CPU. Tables of other architectures are not linked at all.
extern const KernelTable kRefTable;
#if defined(__x86_64__) || defined(_M_X64)
extern const KernelTable kAvx2Table;
// AVX2's table with the integer kernels replaced by VNNI ones (built at dispatch time, not at static init).
KernelTable avx512_table();
#endif
#if defined(__aarch64__)
extern const KernelTable kNeonTable;     // plain ARMv8 NEON (any aarch64 CPU)
extern const KernelTable kDotprodTable;  // ARMv8.2 dot product (vdotq_s32)
#endif

// The table in use (never null; see dispatch.cpp), or null when BONSAI_FORCE_ISA named an unusable ISA.
const KernelTable* active_table();

}  // namespace bonsai

#endif  // BONSAI_KERNEL_TABLE_H
