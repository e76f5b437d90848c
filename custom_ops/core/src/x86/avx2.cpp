// AVX2 kernels (Haswell and later, Zen). Compiled with -mavx2 -mfma only; reached only after dispatch.cpp has
// seen AVX2 and FMA in cpuid.
//
// Integer path: codes c = t + 1 are unsigned {0, 1, 2}, so vpmaddubsw(c, q) multiplies them with the signed int8
// activations without saturating (|2*128 + 2*128| < 32767), and sum_k t*q = sum_k c*q - sum_k q.
// Float path: codes are widened to float t = c - 1 and accumulated with FMA.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../dense_i8_kernels.h"
#include "../float_kernels.h"
#include "../kernel_table.h"
#include "../ternary_kernels.h"
#include "ymm_blocks.h"

namespace bonsai {
namespace {

// Vector traits of the float kernels (float_kernels.h): 8 floats per ymm.
struct Avx2Vec {
  using F = __m256;
  static constexpr int W = 8;
  static constexpr int kMR = 4, kNR = 3;  // dense prefill tile: 12 accumulators + 3 weights + 1 activation
  static constexpr int kAttnCols = 8;     // attention P.V: accumulators per pass (heads x vectors)
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  // The bf16 pair[0] in every lane: a 32-bit broadcast load of the pair and a shift (no scalar-to-vector move).
  static F set1_bf16_pair(const uint16_t* pair) {
    int32_t v;
    memcpy(&v, pair, sizeof v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_set1_epi32(v), 16));
  }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load_half(const uint16_t* p) {  // 8 fp16, widened exactly (F16C)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F exp2i(F n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static float hsum(F v) { return hsum_f32(v); }
  static float hmax(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void prefetch(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T0); }
  template <int Bits>
  static void widen(const uint8_t* p, F* out) {
    if constexpr (Bits == 16) {  // bf16 = the high half of an fp32
      for (int i = 0; i < 4; ++i) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * i)));
        out[i] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      }
    } else if constexpr (Bits == 8) {  // sign-extending loads of 8 bytes: no lane extracts or byte shifts
      for (int i = 0; i < 4; ++i)
        out[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8 * i))));
    } else {
      // 16 bytes: low nibbles are codes 0..15 of the chunk, high nibbles codes 16..31, each half in K order. A
      // zero-extending load widens 8 bytes to 32-bit lanes, then a mask gives their low nibbles and a shift their
      // high ones: two shuffle-port ops per chunk instead of six (splitting the nibbles in a 128-bit register
      // first needs byte shifts and register-source widenings, and the int4 head was bound by that port).
      const __m256i low4 = _mm256_set1_epi32(15);
      const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
      const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8)));
      out[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, low4));
      out[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, low4));
      out[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
      out[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
    }
  }
  // dense_i8_kernels.h: one group's weight x activation products in 8 int32 lanes, as floats. int8 codes are
  // signed, so vpmaddubsw takes |w| (128 for -128, still an unsigned byte) and the activations with w's sign;
  // int4 codes 0..15 are unsigned already. Pairs sum to at most 2 * 128 * 127 (no int16 saturation).
  static constexpr int kGroupsPerDot = 1;
  static F group_scale(const float* sd) { return _mm256_set1_ps(*sd); }
  template <int Bits>
  static F group_dot(const uint8_t* w, const int8_t* q) {
    const __m256i a = _mm256_loadu_si256((const __m256i*)q);
    __m256i pairs;
    if constexpr (Bits == 8) {
      const __m256i c = _mm256_loadu_si256((const __m256i*)w);
      pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(a, c));
    } else {
      const __m128i b = _mm_loadu_si128((const __m128i*)w);  // low nibbles: columns 0..15, high: 16..31
      const __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(15));
      pairs = _mm256_maddubs_epi16(codes, a);
    }
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  template <int Bits>
  static void scale_batch(const uint16_t* s, const float* d, float* out) { scale_batch8<Bits>(s, d, out); }
};

void quantize_row_i8_avx2(const float* x, int64_t k, int8_t* q, float* d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vmax = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  float amax = 0.0f;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  for (float v : lanes) amax = fmaxf(amax, v);
  for (; i < k; ++i) amax = fmaxf(amax, fabsf(x[i]));
  const int64_t kp = padded_k(k);
  if (amax == 0.0f) {
    memset(q, 0, size_t(kp));
    *d = 0.0f;
    return;
  }
  const float inv = float(kInt8QMax) / amax;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-kInt8QMax), hi = _mm256_set1_epi32(kInt8QMax);
  // packs interleaves 128-bit lanes; this permutation restores K order.
  const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i v[4];
    for (int j = 0; j < 4; ++j) {
      // cvtps rounds half to even in the default MXCSR mode, like numpy's rint.
      const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv));
      v[j] = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
    }
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i*)(q + i), _mm256_permutevar8x32_epi32(packed, unshuffle));
  }
  for (; i < k; ++i) q[i] = int8_t(fminf(fmaxf(nearbyintf(x[i] * inv), -float(kInt8QMax)), float(kInt8QMax)));
  memset(q + k, 0, size_t(kp - k));
  *d = amax / float(kInt8QMax);
}

// Building blocks of the ternary kernels (ternary_kernels.h). Tiles: a decode tile's 4 rows share every
// activation load and give 4 independent accumulator chains (4 accumulators + 4 code planes + temporaries fit the
// 16 ymm registers); the prefill tile's 4 tokens x 2 rows = 8 int16 sums + 2 code planes + 1 activation + 1
// product fit them too (the int32 sums, touched once per kFlushBlocks blocks, may live on the stack), and each
// unpacked block serves 4 tokens.
struct Avx2Ternary : YmmBlocks {
  static constexpr int kGemvRows = 4, kGemmTokens = 4, kGemmRows = 2, kGemvChains = 1;
  // Blocks whose int16 products are summed before one vpmaddwd widens them: a block adds at most
  // 4 planes x 2 x 2 x 127 = 2032 per int16 lane.
  static constexpr int64_t kFlushBlocks = 8;
  static_assert(kFlushBlocks * 4 * 2 * 2 * 128 < 32768, "int16 partial sums must not overflow");
  using V = Avx2Vec;
  using Part = __m256i;   // int16 pair sums of vpmaddubsw

  static Part part_zero() { return _mm256_setzero_si256(); }
  static Part dot(Part part, Codes c, Act a) {
    part = _mm256_add_epi16(part, _mm256_maddubs_epi16(c, a));
    // Pins the running sum to a register here: otherwise GCC reassociates the block's integer adds, issues all
    // 32 products of a prefill tile first and spills half of them to the stack (measured slower).
    __asm__("" : "+x"(part));
    return part;
  }
  template <int C>
  static Sum flush(Sum sum, const Part (&part)[C]) {
    for (int c = 0; c < C; ++c) sum = _mm256_add_epi32(sum, _mm256_madd_epi16(part[c], _mm256_set1_epi16(1)));
    return sum;
  }
  // t2g 4-row tiles (ternary_kernels.h), 8 blocks at a time: at decode the per-block reductions and scale gathers
  // cost as many vector uops as the block's multiplies. A block's 4 rows are narrowed into one int16 vector
  // (vpmaddwd pair sums repacked by vpackssdw: partial sums of at most 4 lanes, |.| <= 4 * 2032, never
  // saturate), and the 8 blocks' scales are ScaleGroup8's.
  static constexpr int64_t kScaleGroup = ScaleGroup8::kBlocks;
  using Block4 = __m256i;  // int16: in each 128-bit half, rows 0..3 in lane pairs (each a sum of 4 of its lanes)
  using GroupScales = ScaleGroup8;
  static Block4 block4_zero() { return _mm256_setzero_si256(); }
  template <int C>
  static Block4 block4(const Part (&part)[4][C]) {
    static_assert(C == 1, "one chain per row");
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i r01 = _mm256_packs_epi32(_mm256_madd_epi16(part[0][0], ones), _mm256_madd_epi16(part[1][0], ones));
    const __m256i r23 = _mm256_packs_epi32(_mm256_madd_epi16(part[2][0], ones), _mm256_madd_epi16(part[3][0], ones));
    return _mm256_packs_epi32(_mm256_madd_epi16(r01, ones), _mm256_madd_epi16(r23, ones));
  }
  static GroupScales group_scales(const uint16_t* s, int64_t stride, int64_t blocks) {
    return ScaleGroup8::load(s, stride, blocks);
  }
  static F4 scale_group(F4 acc, const Block4 (&blk)[kScaleGroup], const int32_t* sub, const GroupScales& g,
                        int64_t blocks) {
    __m256i sums[4];  // blocks 2i and 2i + 1: each block's lane pairs summed, then its two halves added
    for (int i = 0; i < 4; ++i) {
      const __m256i lo = _mm256_madd_epi16(blk[2 * i], _mm256_set1_epi16(1));
      const __m256i hi = _mm256_madd_epi16(blk[2 * i + 1], _mm256_set1_epi16(1));
      sums[i] = _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    return g.acc_blocks(acc, sums, sub, blocks);
  }
  // The 32 codes of a plane as floats t = c - 1, 8 at a time.
  static void widen(Codes codes, __m256* t) {
    const __m128i halves[2] = {_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1)};
    for (int j = 0; j < 4; ++j) {
      const __m128i bytes = (j % 2) ? _mm_srli_si128(halves[j / 2], 8) : halves[j / 2];
      t[j] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(kCodeOffset)));
    }
  }
};

}  // namespace

const KernelTable kAvx2Table = {
    "avx2", quantize_row_i8_avx2, tk::gemv_i8<Avx2Ternary>, tk::gemm_i8<Avx2Ternary>, tk::gemv_f32<Avx2Ternary>,
    tk::gemm_f32<Avx2Ternary>, tk::gemm_t2g_i8<Avx2Ternary>, tk::gemm_t2g_f32<Avx2Ternary>, fk::dense_f32<Avx2Vec>,
    dk::dense_i8<Avx2Vec>, fk::attend<Avx2Vec>,
};

}  // namespace bonsai
