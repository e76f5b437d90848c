// AVX-512 VNNI kernels (Ice Lake, Sapphire Rapids, Zen 4 and later). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni; reached only after dispatch.cpp has seen all four in cpuid and the OS saves the
// AVX-512 state.
//
// vpdpbusd multiplies unsigned bytes with signed bytes and adds groups of 4 into int32 in one instruction, so
// the codes c = t + 1 in {0, 1, 2} feed it directly and sum_k t*q = sum_k c*q - sum_k q. The GEMM uses 256-bit
// registers: one block plane is exactly 32 bytes, and on current cores ymm vpdpbusd has the same MAC throughput
// as zmm (two ymm ports vs one zmm port) without pairing blocks; AVX-512VL doubles the register file to 32,
// which allows the larger GEMM tile. The GEMV, bound by unpacking work rather than MACs, uses zmm (see below). The float path (act_bits = 0) and activation quantization are the AVX2
// ones: this table copies them from kAvx2Table in avx512_table().
#include <immintrin.h>

#include "../float_kernels.h"
#include "../kernel_table.h"

namespace bonsai {
namespace {

// Tile sizes. GEMV: 4 rows give 4 independent accumulator chains per activation load (decode is
// memory-bound; more rows only add prefetch streams). GEMM: 4 tokens x 4 rows = 16 accumulators, 4 code planes
// and temporaries within the 32 ymm registers; each unpacked weight block serves 4 tokens.
constexpr int kGemvRows = 4;  // leftover tokens of a GEMM; decode itself uses the zmm tile below
constexpr int kGemmTokens = 4;
constexpr int kGemmRows = 4;
// Decode streams the weights from DRAM: the GEMV tile prefetches the same block of the rows kPrefetchTiles
// tiles ahead (rows are contiguous, so this runs a few KiB ahead of the loads; 1-8 tiles measured within
// noise of each other). Prefetches never fault, so running past the last row is harmless.
constexpr int kPrefetchTiles = 4;

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

int32_t sum_q(const int8_t* q, int64_t nblocks) {
  const __m256i ones8 = _mm256_set1_epi8(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t i = 0; i < nblocks * kBlockK; i += 32)
    acc = _mm256_dpbusd_epi32(acc, ones8, _mm256_loadu_si256((const __m256i*)(q + i)));
  return hsum_i32(acc);
}

// vpdpbusd has a latency of ~5 cycles: a GEMV tile (1 token x 4 rows) with one accumulator per row would wait
// on a chain of 4 dependent vpdpbusd per block. It keeps one accumulator per plane instead (16 chains); GEMM
// tiles already have MR x NR independent chains.
template <int MR>
constexpr int chains() { return MR == 1 ? 4 : 1; }

template <int MR, int NR>
void tile_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int32_t* acc, int64_t acc_stride) {
  constexpr int C = chains<MR>();
  __m256i sum[MR][NR][C];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < C; ++c) sum[m][r][c] = _mm256_setzero_si256();
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* block = w + r * w_stride + b * kBlockBytes;
      if (MR == 1) _mm_prefetch((const char*)(uintptr_t(block) + kPrefetchTiles * NR * w_stride), _MM_HINT_T0);
      const __m256i packed = _mm256_loadu_si256((const __m256i*)block);
      const __m256i codes[4] = {plane<0>(packed), plane<1>(packed), plane<2>(packed), plane<3>(packed)};
      for (int m = 0; m < MR; ++m) {
        const int8_t* qb = q + m * q_stride + b * kBlockK;
        for (int i = 0; i < 4; ++i) {
          __m256i& s = sum[m][r][i % C];
          s = _mm256_dpbusd_epi32(s, codes[i], _mm256_loadu_si256((const __m256i*)(qb + i * kLanes)));
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) {
      __m256i total = sum[m][r][0];
      for (int c = 1; c < C; ++c) total = _mm256_add_epi32(total, sum[m][r][c]);
      acc[m * acc_stride + r] = hsum_i32(total) - qsum[m];
    }
}

template <int MR, int NR>
void rows_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_i8<MR, NR>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
  for (; n < n1; ++n) tile_i8<MR, 1>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
}

// ---- GEMV (decode): two blocks per zmm and no shifts.
// Masking byte j with 3 << 2i leaves 4^i * c_i, which vpdpbusd multiplies as an unsigned byte (at most 128) by
// the activations. Each plane i keeps its own accumulator, so the factor 4^i is divided out exactly (an
// arithmetic shift of a multiple of 4^i) when the plane sums are flushed: 1 load + 4 and + 4 vpdpbusd per 64
// weight bytes instead of 3 shifts + 4 and + 4 vpdpbusd per 32. The zmm activation operand pairs the same plane
// of blocks b and b + 1, built once per block pair and shared by the tile's rows.
// Rows per GEMV tile: 16 plane accumulators (independent vpdpbusd chains) and 4 activation pairs in the 32 zmm
// registers; each activation pair serves 4 rows. With the L2 prefetch below, 4 rows measured ~15-25% faster
// than 2 and 1 (whole model, 1 and 2 threads).
constexpr int kZmmRows = 4;
// Software prefetch of the GEMV stream into L2, 16 KiB ahead. Measured on a Sapphire-Rapids-class Xeon (whole
// model, L3-resident): ~10-20% faster than prefetching into L1 (T0) 4 KiB ahead, which is limited by the L1
// fill buffers; T1 at 8 or 32 KiB and T1 + a near T0 were no better; no prefetch or NTA was ~2x slower.
constexpr int64_t kGemvPrefetchBytes = 16384;
constexpr int64_t kFlushBlocks = 256;  // |plane sum| grows by <= 4 * 64 * 2 * 128 per block pair: 2^23 per flush
static_assert(kFlushBlocks / 2 * 4 * 64 * 2 * 128 < (int64_t(1) << 31), "scaled plane sums must not overflow");

// Plane i of 64 packed bytes, still scaled by 4^i.
template <int I>
inline __m512i scaled_plane(__m512i packed) {
  return _mm512_and_si512(packed, _mm512_set1_epi8(char(kCodeMask << (2 * I))));
}

// Activations of plane I for blocks b (low half) and b + 1 (high half): two masked loads, the second from 32
// bytes before block b + 1's plane so that its kept lanes 4..7 land on it (all addresses lie inside q).
template <int I>
inline __m512i q_pair(const int8_t* qb) {
  const __m512i lo = _mm512_maskz_loadu_epi64(0x0f, qb + I * kLanes);
  return _mm512_mask_loadu_epi64(lo, 0xf0, qb + kBlockK + I * kLanes - 32);
}

// Unscaled sum of the four plane accumulators.
inline __m512i unscale(const __m512i s[4]) {
  __m512i t = _mm512_add_epi32(s[0], _mm512_srai_epi32(s[1], 2));
  t = _mm512_add_epi32(t, _mm512_srai_epi32(s[2], 4));
  return _mm512_add_epi32(t, _mm512_srai_epi32(s[3], 6));
}

// acc[r] = sum_k q[k] * T[r, k] for NR rows; the odd last block, if any, goes through the ymm tile.
template <int NR>
void gemv_tile_zmm(const int8_t* q, int32_t qsum, int64_t nblocks, const uint8_t* w, int64_t w_stride,
                   int32_t* acc) {
  __m512i total[NR];
  for (int r = 0; r < NR; ++r) total[r] = _mm512_setzero_si512();
  const int64_t pairs_end = nblocks & ~int64_t(1);
  for (int64_t b0 = 0; b0 < pairs_end; b0 += kFlushBlocks) {
    const int64_t b1 = b0 + kFlushBlocks < pairs_end ? b0 + kFlushBlocks : pairs_end;
    __m512i s[NR][4];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < 4; ++i) s[r][i] = _mm512_setzero_si512();
    for (int64_t b = b0; b < b1; b += 2) {
      const int8_t* qb = q + b * kBlockK;
      const __m512i q0 = q_pair<0>(qb), q1 = q_pair<1>(qb), q2 = q_pair<2>(qb), q3 = q_pair<3>(qb);
      for (int r = 0; r < NR; ++r) {
        const uint8_t* block = w + r * w_stride + b * kBlockBytes;
        _mm_prefetch((const char*)(uintptr_t(block) + kGemvPrefetchBytes), _MM_HINT_T1);
        const __m512i packed = _mm512_loadu_si512(block);
        s[r][0] = _mm512_dpbusd_epi32(s[r][0], scaled_plane<0>(packed), q0);
        s[r][1] = _mm512_dpbusd_epi32(s[r][1], scaled_plane<1>(packed), q1);
        s[r][2] = _mm512_dpbusd_epi32(s[r][2], scaled_plane<2>(packed), q2);
        s[r][3] = _mm512_dpbusd_epi32(s[r][3], scaled_plane<3>(packed), q3);
      }
    }
    for (int r = 0; r < NR; ++r) total[r] = _mm512_add_epi32(total[r], unscale(s[r]));
  }
  int32_t tail[NR] = {};
  if (pairs_end < nblocks) {  // one block left: its sums (including -qsum) come from the ymm tile
    const int8_t* qt = q + pairs_end * kBlockK;
    tile_i8<1, NR>(qt, 0, &qsum, 1, w + pairs_end * kBlockBytes, w_stride, tail, 0);
    qsum = 0;
  }
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_reduce_add_epi32(total[r]) + tail[r] - qsum;
}

void gemv_t2_i8_avx512(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0,
                       int64_t n1, int32_t* acc) {
  const int32_t qsum = sum_q(q, nblocks);
  int64_t n = n0;
  for (; n + kZmmRows <= n1; n += kZmmRows)
    gemv_tile_zmm<kZmmRows>(q, qsum, nblocks, w + n * w_stride, w_stride, acc + n);
  for (; n < n1; ++n) gemv_tile_zmm<1>(q, qsum, nblocks, w + n * w_stride, w_stride, acc + n);
}

void gemm_t2_i8_avx512(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                       int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  int32_t qsum[kGemmTokens];
  int64_t m = 0;
  for (; m + kGemmTokens <= m_count; m += kGemmTokens) {
    for (int j = 0; j < kGemmTokens; ++j) qsum[j] = sum_q(q + (m + j) * q_stride, nblocks);
    rows_i8<kGemmTokens, kGemmRows>(q + m * q_stride, q_stride, qsum, nblocks, w, w_stride, n0, n1,
                                    acc + m * acc_stride, acc_stride);
  }
  for (; m < m_count; ++m) {  // leftover tokens one at a time
    qsum[0] = sum_q(q + m * q_stride, nblocks);
    rows_i8<1, kGemvRows>(q + m * q_stride, 0, qsum, nblocks, w, w_stride, n0, n1, acc + m * acc_stride, 0);
  }
}


// Vector traits of the float kernels (float_kernels.h): 16 floats per zmm. The dense head and attention use
// them; the ternary float path stays AVX2's.
struct Avx512Vec {
  using F = __m512;
  static constexpr int W = 16;
  static constexpr int kMR = 4, kNR = 6;  // dense prefill tile: 24 accumulators + 6 weights + 1 activation
  static constexpr int kAttnCols = 8;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F exp2i(F n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static float hsum(F v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(F v) { return _mm512_reduce_max_ps(v); }
  static void prefetch(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T0); }
  template <int Bits>
  static void widen(const uint8_t* p, F* out) {
    if constexpr (Bits == 16) {
      for (int i = 0; i < 2; ++i) {
        const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + 32 * i)));
        out[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      }
    } else if constexpr (Bits == 8) {
      out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
      out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))));
    } else {
      // As in AVX2's widen<4>: low nibbles are codes 0..15 of the chunk, high nibbles codes 16..31; one
      // zero-extending convert widens each half.
      const __m128i b = _mm_loadu_si128((const __m128i*)p), low4 = _mm_set1_epi8(15);
      out[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, low4)));
      out[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), low4)));
    }
  }
};

}  // namespace

KernelTable avx512_table() {
  KernelTable table = kAvx2Table;
  table.name = "avx512";
  table.gemv_i8 = gemv_t2_i8_avx512;
  table.gemm_i8 = gemm_t2_i8_avx512;
  table.dense_f32 = fk::dense_f32<Avx512Vec>;
  table.attend = fk::attend<Avx512Vec>;
  return table;
}

}  // namespace bonsai
