// NEON kernels for aarch64, built twice: as is (table "neon", plain ARMv8 NEON that every aarch64 CPU has) and
// through neon_dotprod.cpp with BONSAI_NEON_DOTPROD=1 and -march=armv8.2-a+dotprod (table "dotprod", reached only
// after dispatch.cpp has seen HWCAP_ASIMDDP). Only the int8 inner product differs between the two builds.
//
// Codes are turned into signed t = c - 1 in {-1, 0, 1}, so no correction term is needed: vdotq_s32 (or
// vmull_s8 + vpadalq_s16 without dotprod) multiplies t with the int8 activations directly.
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "../dense_i8_kernels.h"
#include "../float_kernels.h"
#include "../kernel_table.h"
#include "../ternary_kernels.h"

#ifndef BONSAI_NEON_DOTPROD
#define BONSAI_NEON_DOTPROD 0
#endif

namespace bonsai {
namespace {

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

// Vector traits of the float kernels (float_kernels.h): 4 floats per q register (the same in both builds).
struct NeonVec {
  using F = float32x4_t;
  static constexpr int W = 4;
  static constexpr int kMR = 4, kNR = 6;  // dense prefill tile: 24 accumulators + 6 weights + 1 activation
  static constexpr int kAttnCols = 8;
  static F zero() { return vdupq_n_f32(0.f); }
  static F set1(float v) { return vdupq_n_f32(v); }
  // The bf16 pair[0] in every lane: the 32-bit pair duplicated and shifted (as the x86 traits).
  static F set1_bf16_pair(const uint16_t* pair) {
    uint32_t v;
    memcpy(&v, pair, sizeof v);
    return vreinterpretq_f32_u32(vshlq_n_u32(vdupq_n_u32(v), 16));
  }
  static F load(const float* p) { return vld1q_f32(p); }
  static F load_half(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }  // exact
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
  // dense_i8_kernels.h: one group's weight x activation products in 4 int32 lanes, as floats (int4 codes 0..15
  // are valid signed bytes). Without dotprod, int16 lanes take two products each (|.| <= 2 * 128 * 127).
  static int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t* q) {
    const int8x16_t q0 = vld1q_s8(q), q1 = vld1q_s8(q + 16);
#if BONSAI_NEON_DOTPROD
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, q0), w1, q1);
#else
    const int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(q0)), w0, q0);
    const int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(q1)), w1, q1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
  }
  static constexpr int kGroupsPerDot = 1;
  static F group_scale(const float* sd) { return vdupq_n_f32(*sd); }
  template <int Bits>
  static F group_dot(const uint8_t* w, const int8_t* q) {
    if constexpr (Bits == 8) {
      const int8_t* c = reinterpret_cast<const int8_t*>(w);
      return vcvtq_f32_s32(dot32(vld1q_s8(c), vld1q_s8(c + 16), q));
    } else {
      const uint8x16_t b = vld1q_u8(w);
      return vcvtq_f32_s32(dot32(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))),
                                 vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), q));
    }
  }
  template <int Bits>
  static void scale_batch(const uint16_t* s, const float* d, float* out) {
    for (int h = 0; h < 2; ++h) {
      const uint32x4_t bits = Bits == 4 ? vshlq_n_u32(vld1q_u32(reinterpret_cast<const uint32_t*>(s + 8 * h)), 16)
                                        : vshll_n_u16(vld1_u16(s + 4 * h), 16);
      vst1q_f32(out + 4 * h, vmulq_f32(vreinterpretq_f32_u32(bits), vld1q_f32(d + 4 * h)));
    }
  }
};

// Building blocks of the ternary kernels (ternary_kernels.h). Tiles: a decode tile's 4 rows share each
// activation load and split each row's sum into 4 chains; the prefill tile's 4 tokens x 2 rows = 8 accumulators
// plus 8 code registers (4 planes x 2 halves) of the rows and activation temporaries fit the 32 NEON registers.
struct NeonTernary {
  static constexpr int kGemvRows = 4, kGemmTokens = 4, kGemmRows = 2, kGemvChains = 4;
  static constexpr int kStepBlocks = 1;
  static constexpr bool kUnsignedCodes = false;
  static constexpr bool kPairedActs = false;
#if BONSAI_NEON_DOTPROD
  static constexpr int64_t kFlushBlocks = 256;  // int32 sums: flushing only bounds the loop
#else
  // Blocks whose int16 products are summed before vpadalq widens them: at most 16 products |t*q| <= 127 per
  // int16 lane and block.
  static constexpr int64_t kFlushBlocks = 8;
  static_assert(kFlushBlocks * 16 * 127 < 32768, "int16 partial sums must not overflow");
#endif
  // Decode streams the weights from DRAM: prefetch the same block of the rows kPrefetchTiles tiles ahead (rows
  // are contiguous). Prefetches never fault, so running past the last row is harmless.
  static constexpr int64_t kPrefetchTiles = 4;
  using V = NeonVec;
  using Packed = uint8x16x2_t;
  using Codes = int8x16x2_t;  // t of weights [32i, 32i + 16) and [32i + 16, 32i + 32) of the block
  using Act = int8x16x2_t;
#if BONSAI_NEON_DOTPROD
  using Part = int32x4_t;
#else
  using Part = int16x8_t;
#endif
  using Sum = int32x4_t;

  static Packed load(const uint8_t* block, int64_t) { return {{vld1q_u8(block), vld1q_u8(block + 16)}}; }
  static void prefetch(const uint8_t* block, int64_t tile_bytes) {
    __builtin_prefetch((const void*)(uintptr_t(block) + kPrefetchTiles * tile_bytes));
  }
  template <int I>
  static int8x16_t signed_codes(uint8x16_t bytes) {
    uint8x16_t c = bytes;
    if constexpr (I > 0) c = vshrq_n_u8(bytes, 2 * I);
    if constexpr (I < 3) c = vandq_u8(c, vdupq_n_u8(kCodeMask));
    return vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(kCodeOffset));
  }
  template <int I>
  static Codes plane(Packed p) { return {{signed_codes<I>(p.val[0]), signed_codes<I>(p.val[1])}}; }
  template <int I>
  static Act act(const int8_t* qb, int64_t) { return {{vld1q_s8(qb + I * kLanes), vld1q_s8(qb + I * kLanes + 16)}}; }
  static Sum sum_zero() { return vdupq_n_s32(0); }
#if BONSAI_NEON_DOTPROD
  static Part part_zero() { return vdupq_n_s32(0); }
  static Part dot(Part p, Codes t, Act a) { return vdotq_s32(vdotq_s32(p, t.val[0], a.val[0]), t.val[1], a.val[1]); }
  template <int C>
  static Sum flush(Sum sum, const Part (&part)[C]) {
    for (int c = 0; c < C; ++c) sum = vaddq_s32(sum, part[c]);
    return sum;
  }
#else
  static Part part_zero() { return vdupq_n_s16(0); }
  static Part dot(Part p, Codes t, Act a) {
    for (int h = 0; h < 2; ++h) {
      p = vmlal_s8(p, vget_low_s8(t.val[h]), vget_low_s8(a.val[h]));
      p = vmlal_high_s8(p, t.val[h], a.val[h]);
    }
    return p;
  }
  template <int C>
  static Sum flush(Sum sum, const Part (&part)[C]) {
    for (int c = 0; c < C; ++c) sum = vpadalq_s16(sum, part[c]);
    return sum;
  }
#endif
  static int32_t hsum(Sum sum) { return vaddvq_s32(sum); }
  // fp16 block scale -> float32, exact (aarch64's half-precision convert, part of the baseline).
  static float half(uint16_t h) {
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return float(v);
  }

  using Rows4 = int32x4_t;
  using F4 = float32x4_t;
  // The full sums of 4 rows' vectors, row r in lane r (pairwise adds: exact).
  static Rows4 hsum4(const Sum (&s)[4]) { return vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3])); }
  static F4 f4_zero() { return vdupq_n_f32(0.0f); }
  static void store4(float* p, F4 v) { vst1q_f32(p, v); }
  // t2g 4-row tiles (ternary_kernels.h), one block at a time: the block's 4 row sums in lanes, a gather of the 4
  // rows' scales; signed codes, so nothing is subtracted.
  static constexpr int64_t kScaleGroup = 1;
  using Block4 = Rows4;
  using GroupScales = F4;
  static Block4 block4_zero() { return vdupq_n_s32(0); }
  template <int C>
  static Block4 block4(const Part (&part)[4][C]) {
    const Sum sums[4] = {flush(sum_zero(), part[0]), flush(sum_zero(), part[1]), flush(sum_zero(), part[2]),
                         flush(sum_zero(), part[3])};
    return hsum4(sums);
  }
  static GroupScales group_scales(const uint16_t* s, int64_t stride, int64_t) {
    const uint16_t h[4] = {s[0], s[stride], s[2 * stride], s[3 * stride]};
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
  }
  static F4 scale_group(F4 acc, const Block4 (&sums)[1], const int32_t*, GroupScales scales, int64_t) {
    return vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(sums[0]), scales));  // not fused: -ffp-contract=off
  }
  // The 32 weights of a plane as floats, 4 at a time.
  static void widen(Codes t, float32x4_t* f) {
    V::widen_i8(t.val[0], f);
    V::widen_i8(t.val[1], f + 4);
  }
};

}  // namespace

#if BONSAI_NEON_DOTPROD
const KernelTable kDotprodTable = {
    "dotprod", quantize_row_i8, tk::gemv_i8<NeonTernary>, tk::gemm_i8<NeonTernary>, tk::gemv_f32<NeonTernary>,
    tk::gemm_f32<NeonTernary>, tk::gemm_t2g_i8<NeonTernary>, tk::gemm_t2g_f32<NeonTernary>, fk::dense_f32<NeonVec>,
    dk::dense_i8<NeonVec>, fk::attend<NeonVec>,
};
#else
const KernelTable kNeonTable = {
    "neon", quantize_row_i8, tk::gemv_i8<NeonTernary>, tk::gemm_i8<NeonTernary>, tk::gemv_f32<NeonTernary>,
    tk::gemm_f32<NeonTernary>, tk::gemm_t2g_i8<NeonTernary>, tk::gemm_t2g_f32<NeonTernary>, fk::dense_f32<NeonVec>,
    dk::dense_i8<NeonVec>, fk::attend<NeonVec>,
};
#endif

}  // namespace bonsai
