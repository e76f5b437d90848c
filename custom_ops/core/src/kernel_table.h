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

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bonsai/kernels.h"
#include "bonsai/ternary_format.h"

namespace bonsai {

// Dense weight-only linear (bonsai_dense_linear) as its kernels see it. Rows of K weights are read in chunks of
// kDenseChunk (= the scale group); x rows hold kp = ceil(K / kDenseChunk) * kDenseChunk floats, zero beyond K.
constexpr int64_t kDenseChunk = BONSAI_DENSE_GROUP;
static_assert(kDenseChunk == 32, "the SIMD widen<Bits> of every ISA decodes one group of 32 weights");
// Scale groups of a row of K weights (formats.dense_groups).
constexpr int64_t dense_groups(int64_t k) { return (k + kDenseChunk - 1) / kDenseChunk; }
// int4 rows hold whole groups (16 bytes each: low nibbles = the group's first 16 codes, high = the last 16).
constexpr int64_t dense_row_bytes(int bits, int64_t k) {
  return bits == 16 ? 2 * k : bits == 8 ? k : dense_groups(k) * (kDenseChunk / 2);
}

// bf16 (raw bits) -> float32: the high half of an fp32, exact.
inline float bf16_to_f32(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// IEEE fp16 (raw bits) -> float32, exact (every fp16 is a float32): the portable widening of the block scales.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {  // subnormal: normalize the significand
    int shift = 0;
    while (!(mant & 0x400)) mant <<= 1, ++shift;
    bits = sign | (uint32_t(113 - shift) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// A KV cache element as a float: float32 as is, fp16 (raw bits) widened exactly, so both cache types run the same
// arithmetic after the load (bonsai_attention, bonsai_attention_f16).
inline float cache_value(float x) { return x; }
inline float cache_value(uint16_t h) { return f16_to_f32(h); }

// x[0, n) as absmax int8 codes q (FORMAT.md: a token of the ternary layers' activations, a group of 32 of the
// dense head's); returns their scale d = amax / 127. q = clamp(rint(x * (127 / amax))) in float32, nearbyintf
// rounding half to even in the default mode like numpy's rint; all zeros give q = 0, d = 0 (no division by zero).
// The scalar definition: the reference table uses it, and the SIMD quantizers match it bit for bit.
inline float quantize_absmax(const float* x, int64_t n, int8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = fmaxf(amax, fabsf(x[i]));
  if (amax == 0.0f) {
    memset(q, 0, size_t(n));
    return 0.0f;
  }
  const float inv = float(kInt8QMax) / amax;
  for (int64_t i = 0; i < n; ++i)
    q[i] = int8_t(fminf(fmaxf(nearbyintf(x[i] * inv), -float(kInt8QMax)), float(kInt8QMax)));
  return amax / float(kInt8QMax);
}

struct DenseProblem {
  const float* x;  // [M, x_stride]
  int64_t x_stride, k;
  const uint8_t* w;  // [N, w_stride]
  int64_t w_stride;
  int32_t bits;                 // 16, 8 or 4
  const float* channel_scales;  // bits 16: [N]
  const uint16_t* group_scales; // bits 8: bf16 scales [N, groups]; bits 4: bf16 (scale, offset) [N, groups, 2]
  int64_t groups;               // ceil(K / kDenseChunk)
  // bits 4: [M, 2 * groups], (0, sum of x over group g) at 2g, 2g + 1: lined up with a row's (scale, offset)
  // pairs, so the offsets' term of a row is one dot product with its pairs (float_kernels.h, offset_term)
  const float* group_sums;
  float* y;                     // [M, y_stride]
  int64_t y_stride;
  int64_t scratch_rows;  // rows of kp floats in each task's scratch (M > 1 widens rows there once)
  // act_bits 8: xq [M, x_stride] int8 activations, zero past K, and xd [M, groups] their group scales d_g; the
  // int4 offsets' term then reads group_sums = (0, d_g * sum of xq over group g) pairs.
  const int8_t* xq = nullptr;
  const float* xd = nullptr;

  // Scale of chunk c of row n (bits 16: the row's); Bits is the kernel's instantiation of `bits`.
  template <int Bits>
  float scale(int64_t n, int64_t c) const {
    if constexpr (Bits == 16) return channel_scales[n];
    else if constexpr (Bits == 8) return bf16_to_f32(group_scales[n * groups + c]);
    else return bf16_to_f32(group_scales[(n * groups + c) * 2]);
  }
  // Offset of chunk c of row n (bits 4 only): W = code * scale + offset.
  float offset(int64_t n, int64_t c) const { return bf16_to_f32(group_scales[(n * groups + c) * 2 + 1]); }
};

// Causal GQA over the cache prefix (bonsai_attention): q/out [T, H, D], caches [Hkv, S, D], float32 (k, v) or
// fp16 (k16, v16: raw bits, bonsai_attention_f16; k and v null).
struct AttentionProblem {
  const float* q;
  const float* k;
  const float* v;
  const uint16_t* k16;
  const uint16_t* v16;
  float* out;
  int64_t t, h, d, hkv, s, pos;
};

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
  // Block scales (kScaleBlock): z[m, n] = sum over blocks b, in block order, of float(acc[m, n, b]) * s[n, b]
  // (FORMAT.md: the caller multiplies by d[m]). Row n's fp16 scales at scales + n * nblocks; qsums[m * nblocks +
  // b] = sum of token m's activations over block b (what unsigned-code kernels subtract). m_count >= 1.
  void (*gemm_t2g_i8)(const int8_t* q, int64_t q_stride, const int32_t* qsums, int64_t m_count, int64_t nblocks,
                      const uint8_t* w, int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* z,
                      int64_t z_stride);
  // y[m, n] = sum_b s[n, b] * sum_{k in b} T[n, k] * x[m, k] with float activations.
  void (*gemm_t2g_f32)(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                       int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride);
  // Dense: y[m, n] for m in [m0, m1), n in [n0, n1). scratch: p.scratch_rows * kp floats of this task (M > 1).
  void (*dense_f32)(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* scratch);
  // Dense with int8 activations (p.xq, p.xd): y[m, n] for m in [m0, m1), n in [n0, n1).
  void (*dense_i8)(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
  // Attention: query `token`, the H / Hkv query heads of KV head `kv`. scratch: (H / Hkv) * (pos + token + 1).
  void (*attend)(const AttentionProblem& a, int64_t token, int64_t kv, float* scratch);
};

// One table per translation unit; each is compiled only with its own ISA flags and is referenced only after
// dispatch.cpp has checked the CPU. Tables of other architectures are not linked at all.
extern const KernelTable kRefTable;
// The scalar float kernels of the reference table (dense.cpp, attention.cpp).
void dense_f32_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* scratch);
void dense_i8_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void attend_ref(const AttentionProblem& a, int64_t token, int64_t kv, float* scratch);
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
