// NEON kernels for aarch64, built twice: as is (table "neon", plain ARMv8 NEON that every aarch64 CPU has) and
// through neon_dotprod.cpp with BONSAI_NEON_DOTPROD=1 and -march=armv8.2-a+dotprod (table "dotprod", reached only
// after dispatch.cpp has seen HWCAP_ASIMDDP). Only the int8 inner product differs between the two builds.
//
// Codes are turned into signed t = c - 1 in {-1, 0, 1}, so no correction term is needed: vdotq_s32 (or
// vmull_s8 + vpadalq_s16 without dotprod) multiplies t with the int8 activations directly.
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "../float_kernels.h"
#include "../kernel_table.h"

#ifndef BONSAI_NEON_DOTPROD
#define BONSAI_NEON_DOTPROD 0
#endif

#if BONSAI_NEON_DOTPROD
#define BONSAI_NEON_KERNEL(op) op##_dotprod
#else
#define BONSAI_NEON_KERNEL(op) op##_neon
#endif

namespace bonsai {
namespace {

// Tile sizes. GEMV: 4 rows share each activation load. GEMM: 4 tokens x 2 rows = 8 accumulators plus 8 code
// registers (4 planes x 2 halves) of one row and activation temporaries, within the 32 NEON registers.
constexpr int kGemvRows = 4;
constexpr int kGemmTokens = 4;
constexpr int kGemmRows = 2;
// Decode streams the weights from DRAM: the GEMV tile prefetches the same block of the rows kPrefetchTiles tiles
// ahead (rows are contiguous). Prefetches never fault, so running past the last row is harmless.
constexpr int kPrefetchTiles = 4;

// Signed weights of one block: t[2*i + h] = weights [32i + 16h, 32i + 16h + 16) of the block.
inline void unpack_block(const uint8_t* block, int8x16_t t[8]) {
  const uint8x16_t lo = vld1q_u8(block), hi = vld1q_u8(block + 16);
  const uint8x16_t mask = vdupq_n_u8(kCodeMask);
  const int8x16_t offset = vdupq_n_s8(kCodeOffset);
  t[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(lo, mask)), offset);
  t[1] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(hi, mask)), offset);
  t[2] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(lo, 2), mask)), offset);
  t[3] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(hi, 2), mask)), offset);
  t[4] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(lo, 4), mask)), offset);
  t[5] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(hi, 4), mask)), offset);
  t[6] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(lo, 6)), offset);
  t[7] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(hi, 6)), offset);
}

// acc[0..C) += sum over one block of t * q (q: the block's 128 activations in K order). With C > 1 the products
// alternate between C independent accumulators, so consecutive sdot / pairwise adds do not wait on each other.
template <int C>
inline void dot_block(int32x4_t* acc, const int8x16_t t[8], const int8_t* q) {
#if BONSAI_NEON_DOTPROD
  for (int j = 0; j < 8; ++j) acc[j % C] = vdotq_s32(acc[j % C], t[j], vld1q_s8(q + 16 * j));
#else
  // 16 products of |t*q| <= 128 per int16 lane stay far below 32767 before widening.
  int16x8_t p[C];
  for (int c = 0; c < C; ++c) p[c] = vdupq_n_s16(0);
  for (int j = 0; j < 8; ++j) {
    const int8x16_t qj = vld1q_s8(q + 16 * j);
    p[j % C] = vmlal_s8(p[j % C], vget_low_s8(t[j]), vget_low_s8(qj));
    p[j % C] = vmlal_high_s8(p[j % C], t[j], qj);
  }
  for (int c = 0; c < C; ++c) acc[c] = vpadalq_s16(acc[c], p[c]);
#endif
}

// Independent accumulators per (token, row): GEMV tiles have only 4 rows in flight, so they split each row's
// chain in 4; GEMM tiles already have MR x NR chains.
template <int MR>
constexpr int chains() { return MR == 1 ? 4 : 1; }

void quantize_row_i8(const float* x, int64_t k, int8_t* q, float* d) {
  float32x4_t vmax = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= k; i += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(x + i)));
  float amax = vmaxvq_f32(vmax);
  for (; i < k; ++i) amax = fmaxf(amax, fabsf(x[i]));
  const int64_t kp = padded_k(k);
  if (amax == 0.0f) {
    memset(q, 0, size_t(kp));
    *d = 0.0f;
    return;
  }
  const float inv = float(kInt8QMax) / amax;
  const int32x4_t lo = vdupq_n_s32(-kInt8QMax), hi = vdupq_n_s32(kInt8QMax);
  i = 0;
  for (; i + 8 <= k; i += 8) {
    // vcvtnq rounds to nearest, ties to even, like numpy's rint.
    const int32x4_t a = vminq_s32(vmaxq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + i), inv)), lo), hi);
    const int32x4_t b = vminq_s32(vmaxq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + i + 4), inv)), lo), hi);
    vst1_s8(q + i, vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))));
  }
  for (; i < k; ++i) q[i] = int8_t(fminf(fmaxf(nearbyintf(x[i] * inv), -float(kInt8QMax)), float(kInt8QMax)));
  memset(q + k, 0, size_t(kp - k));
  *d = amax / float(kInt8QMax);
}

template <int MR, int NR>
void tile_i8(const int8_t* q, int64_t q_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride, int32_t* acc,
             int64_t acc_stride) {
  constexpr int C = chains<MR>();
  int32x4_t sum[MR][NR][C];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < C; ++c) sum[m][r][c] = vdupq_n_s32(0);
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* block = w + r * w_stride + b * kBlockBytes;
      if (MR == 1) __builtin_prefetch((const void*)(uintptr_t(block) + kPrefetchTiles * NR * w_stride));
      int8x16_t t[8];
      unpack_block(block, t);
      for (int m = 0; m < MR; ++m) dot_block<C>(sum[m][r], t, q + m * q_stride + b * kBlockK);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) {
      int32x4_t total = sum[m][r][0];
      for (int c = 1; c < C; ++c) total = vaddq_s32(total, sum[m][r][c]);
      acc[m * acc_stride + r] = vaddvq_s32(total);
    }
}

template <int MR, int NR>
void rows_i8(const int8_t* q, int64_t q_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0,
             int64_t n1, int32_t* acc, int64_t acc_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) tile_i8<MR, NR>(q, q_stride, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
  for (; n < n1; ++n) tile_i8<MR, 1>(q, q_stride, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
}

void BONSAI_NEON_KERNEL(gemv_t2_i8)(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride,
                                    int64_t n0, int64_t n1, int32_t* acc) {
  rows_i8<1, kGemvRows>(q, 0, nblocks, w, w_stride, n0, n1, acc, 0);
}

void BONSAI_NEON_KERNEL(gemm_t2_i8)(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks,
                                    const uint8_t* w, int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc,
                                    int64_t acc_stride) {
  int64_t m = 0;
  for (; m + kGemmTokens <= m_count; m += kGemmTokens)
    rows_i8<kGemmTokens, kGemmRows>(q + m * q_stride, q_stride, nblocks, w, w_stride, n0, n1, acc + m * acc_stride,
                                    acc_stride);
  for (; m < m_count; ++m)
    rows_i8<1, kGemvRows>(q + m * q_stride, 0, nblocks, w, w_stride, n0, n1, acc + m * acc_stride, 0);
}

// Float weights of 16 signed codes.
inline void to_float(int8x16_t t, float32x4_t f[4]) {
  const int16x8_t lo = vmovl_s8(vget_low_s8(t)), hi = vmovl_high_s8(t);
  f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  f[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
  f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  f[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

template <int MR, int NR>
void tile_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, float* y, int64_t y_stride) {
  float32x4_t sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      int8x16_t t[8];
      unpack_block(w + r * w_stride + b * kBlockBytes, t);
      for (int j = 0; j < 8; ++j) {  // t[j] covers K offsets [16j, 16j + 16) of the block
        float32x4_t f[4];
        to_float(t[j], f);
        for (int m = 0; m < MR; ++m) {
          const float* xb = x + m * x_stride + b * kBlockK + 16 * j;
          float32x4_t s = sum[m][r];
          for (int v = 0; v < 4; ++v) s = vfmaq_f32(s, f[v], vld1q_f32(xb + 4 * v));
          sum[m][r] = s;
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * y_stride + r] = scales[r] * vaddvq_f32(sum[m][r]);
}

template <int MR, int NR>
void rows_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_f32<MR, NR>(x, x_stride, nblocks, w + n * w_stride, w_stride, scales + n, y + n, y_stride);
  for (; n < n1; ++n) tile_f32<MR, 1>(x, x_stride, nblocks, w + n * w_stride, w_stride, scales + n, y + n, y_stride);
}

void BONSAI_NEON_KERNEL(gemv_t2_f32)(const float* x, int64_t nblocks, const uint8_t* w, int64_t w_stride,
                                     const float* scales, int64_t n0, int64_t n1, float* y) {
  rows_f32<1, kGemvRows>(x, 0, nblocks, w, w_stride, scales, n0, n1, y, 0);
}

void BONSAI_NEON_KERNEL(gemm_t2_f32)(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks,
                                     const uint8_t* w, int64_t w_stride, const float* scales, int64_t n0, int64_t n1,
                                     float* y, int64_t y_stride) {
  int64_t m = 0;
  for (; m + kGemmTokens <= m_count; m += kGemmTokens)
    rows_f32<kGemmTokens, kGemmRows>(x + m * x_stride, x_stride, nblocks, w, w_stride, scales, n0, n1,
                                     y + m * y_stride, y_stride);
  for (; m < m_count; ++m)
    rows_f32<1, kGemvRows>(x + m * x_stride, 0, nblocks, w, w_stride, scales, n0, n1, y + m * y_stride, 0);
}


// Vector traits of the float kernels (float_kernels.h): 4 floats per q register (the same in both builds).
struct NeonVec {
  using F = float32x4_t;
  static constexpr int W = 4;
  static constexpr int kMR = 4, kNR = 6;  // dense prefill tile: 24 accumulators + 6 weights + 1 activation
  static constexpr int kAttnCols = 8;
  static F zero() { return vdupq_n_f32(0.f); }
  static F set1(float v) { return vdupq_n_f32(v); }
  static F load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, F v) { vst1q_f32(p, v); }
  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static F max(F a, F b) { return vmaxq_f32(a, b); }
  static F round(F a) { return vrndnq_f32(a); }
  static F exp2i(F n) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23));
  }
  static float hsum(F v) { return vaddvq_f32(v); }
  static float hmax(F v) { return vmaxvq_f32(v); }
  static void prefetch(const void* p) { __builtin_prefetch(p); }
  static void widen_i8(int8x16_t b, F* out) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
    out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
  }
  template <int Bits>
  static void widen(const uint8_t* p, F* out) {
    if constexpr (Bits == 16) {
      for (int i = 0; i < 4; ++i) {
        const uint16x8_t v = vld1q_u16(reinterpret_cast<const uint16_t*>(p + 16 * i));
        out[2 * i] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
        out[2 * i + 1] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(v), 16));
      }
    } else if constexpr (Bits == 8) {
      widen_i8(vld1q_s8(reinterpret_cast<const int8_t*>(p)), out);
      widen_i8(vld1q_s8(reinterpret_cast<const int8_t*>(p + 16)), out + 4);
    } else {  // nibbles: low = codes 0..15 of the chunk, high = codes 16..31, each half in K order
      const uint8x16_t b = vld1q_u8(p);
      widen_i8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))), out);
      widen_i8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), out + 4);
    }
  }
};

}  // namespace

#if BONSAI_NEON_DOTPROD
const KernelTable kDotprodTable = {
    "dotprod", quantize_row_i8, gemv_t2_i8_dotprod, gemm_t2_i8_dotprod, gemv_t2_f32_dotprod, gemm_t2_f32_dotprod,
    fk::dense_f32<NeonVec>, fk::attend<NeonVec>,
};
#else
const KernelTable kNeonTable = {
    "neon", quantize_row_i8, gemv_t2_i8_neon, gemm_t2_i8_neon, gemv_t2_f32_neon, gemm_t2_f32_neon,
    fk::dense_f32<NeonVec>, fk::attend<NeonVec>,
};
#endif

}  // namespace bonsai
