// AVX2 kernels (Haswell and later, Zen). Compiled with -mavx2 -mfma only; reached only after dispatch.cpp has
// seen AVX2 and FMA in cpuid.
//
// Integer path: codes c = t + 1 are unsigned {0, 1, 2}, so vpmaddubsw(c, q) multiplies them with the signed int8
// activations without saturating (|2*128 + 2*128| < 32767), and sum_k t*q = sum_k c*q - sum_k q.
// Float path: codes are widened to float t = c - 1 and accumulated with FMA.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../float_kernels.h"
#include "../kernel_table.h"

namespace bonsai {
namespace {

// Tile sizes. GEMV: 4 weight rows share every activation load and give 4 independent accumulator chains
// (4 accumulators + 4 code planes + temporaries fit the 16 ymm registers). GEMM: 4 tokens x 2 rows = 8
// accumulators; each unpacked weight block is reused by 4 tokens.
constexpr int kGemvRows = 4;
constexpr int kGemmTokens = 4;
constexpr int kGemmRows = 2;
// Decode streams the weights from DRAM: the GEMV tile prefetches the same block of the rows kPrefetchTiles
// tiles ahead (rows are contiguous, so this runs a few KiB ahead of the loads; 1-8 tiles measured within
// noise of each other). Prefetches never fault, so running past the last row is harmless.
constexpr int kPrefetchTiles = 4;

// Plane I of a 32-byte block: the codes of weights [32I, 32I + 32) of the block, one per byte.
template <int I>
inline __m256i plane(__m256i packed) {
  return _mm256_and_si256(_mm256_srli_epi16(packed, 2 * I), _mm256_set1_epi8(kCodeMask));
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_f32(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Vector traits of the float kernels (float_kernels.h): 8 floats per ymm.
struct Avx2Vec {
  using F = __m256;
  static constexpr int W = 8;
  static constexpr int kMR = 4, kNR = 3;  // dense prefill tile: 12 accumulators + 3 weights + 1 activation
  static constexpr int kAttnCols = 8;     // attention P.V: accumulators per pass (heads x vectors)
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
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
      // 16 bytes: low nibbles are codes 0..15 of the chunk, high nibbles codes 16..31, each half in K order; two
      // masks split them and zero-extending loads widen 8 codes at a time.
      const __m128i b = _mm_loadu_si128((const __m128i*)p), low4 = _mm_set1_epi8(15);
      const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
      out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
      out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
      out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    }
  }
};

// sum_k q[k] over nblocks whole blocks: the correction term for unsigned codes.
int32_t sum_q(const int8_t* q, int64_t nblocks) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t i = 0; i < nblocks * kBlockK; i += 32) {
    const __m256i pairs = _mm256_maddubs_epi16(ones8, _mm256_loadu_si256((const __m256i*)(q + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones16));
  }
  return hsum_i32(acc);
}

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

// int16 pair sums of one packed block's codes x its 128 int8 activations qb (at most 2032 per lane).
inline __m256i block_dot(__m256i packed, const int8_t* qb) {
  __m256i p = _mm256_maddubs_epi16(plane<0>(packed), _mm256_loadu_si256((const __m256i*)qb));
  p = _mm256_add_epi16(p, _mm256_maddubs_epi16(plane<1>(packed), _mm256_loadu_si256((const __m256i*)(qb + 32))));
  p = _mm256_add_epi16(p, _mm256_maddubs_epi16(plane<2>(packed), _mm256_loadu_si256((const __m256i*)(qb + 64))));
  return _mm256_add_epi16(p, _mm256_maddubs_epi16(plane<3>(packed), _mm256_loadu_si256((const __m256i*)(qb + 96))));
}

// Blocks whose int16 products are summed before one vpmaddwd widens them: a block adds at most
// 4 planes x 2 x 2 x 127 = 2032 per int16 lane.
constexpr int64_t kInt16Blocks = 8;
static_assert(kInt16Blocks * 4 * 2 * 2 * 128 < 32768, "int16 partial sums must not overflow");

// Products of plane I of NR rows' blocks with MR tokens' 32 activations: each activation vector is loaded once
// and serves the NR rows.
template <int I, int MR, int NR>
inline void plane_products(const __m256i (&packed)[NR], const int8_t* qb, int64_t q_stride, __m256i (&part)[MR][NR]) {
  __m256i c[NR];
  for (int r = 0; r < NR; ++r) c[r] = plane<I>(packed[r]);
  for (int m = 0; m < MR; ++m) {
    const __m256i a = _mm256_loadu_si256((const __m256i*)(qb + m * q_stride + 32 * I));
    for (int r = 0; r < NR; ++r) {
      part[m][r] = _mm256_add_epi16(part[m][r], _mm256_maddubs_epi16(c[r], a));
      // Pins the running sum to a register here: otherwise GCC reassociates the block's integer adds, issues all
      // 32 products first and spills half of them to the stack (measured slower than the previous kernel).
      __asm__("" : "+x"(part[m][r]));
    }
  }
}

// acc[m, r] for MR tokens x NR rows over all blocks; the int16 sums of up to kInt16Blocks blocks are widened by
// one vpmaddwd. Per block:
// - decode (MR = 1): each row's block is unpacked into its 4 planes and dotted with the token's 128 activations,
//   with a prefetch of the same block kPrefetchTiles tiles ahead (the weights stream from DRAM);
// - prefill (MR > 1): plane by plane, each token's 32 activations are loaded once for the NR rows. MR x NR int16
//   sums + NR code planes + 1 product fit the 16 ymm registers; the int32 totals, touched once per kInt16Blocks
//   blocks, may live on the stack.
template <int MR, int NR>
void tile_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int32_t* acc, int64_t acc_stride) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = _mm256_setzero_si256();
  for (int64_t b0 = 0; b0 < nblocks; b0 += kInt16Blocks) {
    const int64_t b1 = b0 + kInt16Blocks < nblocks ? b0 + kInt16Blocks : nblocks;
    __m256i part[MR][NR];
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) part[m][r] = _mm256_setzero_si256();
    for (int64_t b = b0; b < b1; ++b) {
      if constexpr (MR == 1) {
        for (int r = 0; r < NR; ++r) {
          const uint8_t* block = w + r * w_stride + b * kBlockBytes;
          _mm_prefetch((const char*)(uintptr_t(block) + kPrefetchTiles * NR * w_stride), _MM_HINT_T0);
          const __m256i packed = _mm256_loadu_si256((const __m256i*)block);
          part[0][r] = _mm256_add_epi16(part[0][r], block_dot(packed, q + b * kBlockK));
        }
      } else {
        __m256i packed[NR];
        for (int r = 0; r < NR; ++r)
          packed[r] = _mm256_loadu_si256((const __m256i*)(w + r * w_stride + b * kBlockBytes));
        const int8_t* qb = q + b * kBlockK;
        plane_products<0>(packed, qb, q_stride, part);
        plane_products<1>(packed, qb, q_stride, part);
        plane_products<2>(packed, qb, q_stride, part);
        plane_products<3>(packed, qb, q_stride, part);
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) sum[m][r] = _mm256_add_epi32(sum[m][r], _mm256_madd_epi16(part[m][r], ones16));
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m * acc_stride + r] = hsum_i32(sum[m][r]) - qsum[m];
}

// Rows [n0, n1) for MR tokens: NR-row tiles, then single rows.
template <int MR, int NR>
void rows_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_i8<MR, NR>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
  for (; n < n1; ++n) tile_i8<MR, 1>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
}

void gemv_t2_i8_avx2(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0, int64_t n1,
                     int32_t* acc) {
  const int32_t qsum = sum_q(q, nblocks);
  rows_i8<1, kGemvRows>(q, 0, &qsum, nblocks, w, w_stride, n0, n1, acc, 0);
}

void gemm_t2_i8_avx2(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                     int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  // Rows in blocks of about kGemmBlockBytes of weights (kept in L1/L2 while every token tile passes over them);
  // the activation sums are computed once per call.
  constexpr int64_t kGemmBlockBytes = 16 * 1024, kMaxTokens = 256;
  int32_t qsums[kMaxTokens];
  for (int64_t t0 = 0; t0 < m_count; t0 += kMaxTokens) {
    const int64_t t1 = t0 + kMaxTokens < m_count ? t0 + kMaxTokens : m_count;
    for (int64_t m = t0; m < t1; ++m) qsums[m - t0] = sum_q(q + m * q_stride, nblocks);
    int64_t block_rows = kGemmBlockBytes / w_stride;
    block_rows = block_rows < kGemmRows ? kGemmRows : block_rows - block_rows % kGemmRows;
    for (int64_t nb = n0; nb < n1; nb += block_rows) {
      const int64_t nb1 = nb + block_rows < n1 ? nb + block_rows : n1;
      int64_t m = t0;
      for (; m + kGemmTokens <= t1; m += kGemmTokens)
        rows_i8<kGemmTokens, kGemmRows>(q + m * q_stride, q_stride, qsums + (m - t0), nblocks, w, w_stride, nb, nb1,
                                        acc + m * acc_stride, acc_stride);
      for (; m < t1; ++m)  // leftover tokens one at a time
        rows_i8<1, kGemvRows>(q + m * q_stride, 0, qsums + (m - t0), nblocks, w, w_stride, nb, nb1,
                              acc + m * acc_stride, 0);
    }
  }
}

// 8 codes of plane bytes [8J, 8J + 8) as floats t = c - 1.
template <int J>
inline __m256 weights_f32(__m256i codes) {
  const __m128i half = J < 2 ? _mm256_castsi256_si128(codes) : _mm256_extracti128_si256(codes, 1);
  const __m128i bytes = (J % 2) ? _mm_srli_si128(half, 8) : half;
  const __m256i t = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(kCodeOffset));
  return _mm256_cvtepi32_ps(t);
}

template <int MR, int NR>
void tile_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, float* y, int64_t y_stride) {
  __m256 sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      const __m256i packed = _mm256_loadu_si256((const __m256i*)(w + r * w_stride + b * kBlockBytes));
      const __m256i planes[4] = {plane<0>(packed), plane<1>(packed), plane<2>(packed), plane<3>(packed)};
      for (int i = 0; i < 4; ++i) {
        const __m256 t0 = weights_f32<0>(planes[i]), t1 = weights_f32<1>(planes[i]);
        const __m256 t2 = weights_f32<2>(planes[i]), t3 = weights_f32<3>(planes[i]);
        for (int m = 0; m < MR; ++m) {
          const float* xb = x + m * x_stride + b * kBlockK + i * kLanes;
          __m256 s = sum[m][r];
          s = _mm256_fmadd_ps(t0, _mm256_loadu_ps(xb), s);
          s = _mm256_fmadd_ps(t1, _mm256_loadu_ps(xb + 8), s);
          s = _mm256_fmadd_ps(t2, _mm256_loadu_ps(xb + 16), s);
          sum[m][r] = _mm256_fmadd_ps(t3, _mm256_loadu_ps(xb + 24), s);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * y_stride + r] = scales[r] * hsum_f32(sum[m][r]);
}

template <int MR, int NR>
void rows_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_f32<MR, NR>(x, x_stride, nblocks, w + n * w_stride, w_stride, scales + n, y + n, y_stride);
  for (; n < n1; ++n) tile_f32<MR, 1>(x, x_stride, nblocks, w + n * w_stride, w_stride, scales + n, y + n, y_stride);
}

void gemv_t2_f32_avx2(const float* x, int64_t nblocks, const uint8_t* w, int64_t w_stride, const float* scales,
                      int64_t n0, int64_t n1, float* y) {
  rows_f32<1, kGemvRows>(x, 0, nblocks, w, w_stride, scales, n0, n1, y, 0);
}

void gemm_t2_f32_avx2(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                      int64_t w_stride, const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  int64_t m = 0;
  for (; m + kGemmTokens <= m_count; m += kGemmTokens)
    rows_f32<kGemmTokens, kGemmRows>(x + m * x_stride, x_stride, nblocks, w, w_stride, scales, n0, n1,
                                     y + m * y_stride, y_stride);
  for (; m < m_count; ++m)
    rows_f32<1, kGemvRows>(x + m * x_stride, 0, nblocks, w, w_stride, scales, n0, n1, y + m * y_stride, 0);
}

}  // namespace

const KernelTable kAvx2Table = {
    "avx2", quantize_row_i8_avx2, gemv_t2_i8_avx2, gemm_t2_i8_avx2, gemv_t2_f32_avx2, gemm_t2_f32_avx2,
    fk::dense_f32<Avx2Vec>, fk::attend<Avx2Vec>,
};

}  // namespace bonsai
