// AVX-512 VNNI kernels (Ice Lake, Sapphire Rapids, Zen 4 and later). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni; reached only after dispatch.cpp has seen all four in cpuid and the OS saves the
// AVX-512 state.
//
// vpdpbusd multiplies unsigned bytes with signed bytes and adds groups of 4 into int32 in one instruction, so
// the codes c = t + 1 in {0, 1, 2} feed it directly and sum_k t*q = sum_k c*q - sum_k q. It is used on 256-bit
// registers: one block plane is exactly 32 bytes, and on current cores ymm vpdpbusd has the same MAC throughput
// as zmm (two ymm ports vs one zmm port) without pairing blocks. AVX-512VL doubles the register file to 32,
// which allows the larger GEMM tile. The float path (act_bits = 0) and activation quantization are the AVX2
// ones: this table copies them from kAvx2Table in avx512_table().
#include <immintrin.h>

#include "../kernel_table.h"

namespace bonsai {
namespace {

// Tile sizes. GEMV: 4 rows give 4 independent accumulator chains per activation load (decode is
// memory-bound; more rows only add prefetch streams). GEMM: 4 tokens x 4 rows = 16 accumulators, 4 code planes
// and temporaries within the 32 ymm registers; each unpacked weight block serves 4 tokens.
constexpr int kGemvRows = 4;
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

template <int MR, int NR>
void tile_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int32_t* acc, int64_t acc_stride) {
  __m256i sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = _mm256_setzero_si256();
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* block = w + r * w_stride + b * kBlockBytes;
      if (MR == 1) _mm_prefetch((const char*)(uintptr_t(block) + kPrefetchTiles * NR * w_stride), _MM_HINT_T0);
      const __m256i packed = _mm256_loadu_si256((const __m256i*)block);
      const __m256i c0 = plane<0>(packed), c1 = plane<1>(packed), c2 = plane<2>(packed), c3 = plane<3>(packed);
      for (int m = 0; m < MR; ++m) {
        const int8_t* qb = q + m * q_stride + b * kBlockK;
        __m256i s = sum[m][r];
        s = _mm256_dpbusd_epi32(s, c0, _mm256_loadu_si256((const __m256i*)qb));
        s = _mm256_dpbusd_epi32(s, c1, _mm256_loadu_si256((const __m256i*)(qb + 32)));
        s = _mm256_dpbusd_epi32(s, c2, _mm256_loadu_si256((const __m256i*)(qb + 64)));
        sum[m][r] = _mm256_dpbusd_epi32(s, c3, _mm256_loadu_si256((const __m256i*)(qb + 96)));
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m * acc_stride + r] = hsum_i32(sum[m][r]) - qsum[m];
}

template <int MR, int NR>
void rows_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_i8<MR, NR>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
  for (; n < n1; ++n) tile_i8<MR, 1>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
}

void gemv_t2_i8_avx512(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0,
                       int64_t n1, int32_t* acc) {
  const int32_t qsum = sum_q(q, nblocks);
  rows_i8<1, kGemvRows>(q, 0, &qsum, nblocks, w, w_stride, n0, n1, acc, 0);
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

}  // namespace

KernelTable avx512_table() {
  KernelTable table = kAvx2Table;
  table.name = "avx512";
  table.gemv_i8 = gemv_t2_i8_avx512;
  table.gemm_i8 = gemm_t2_i8_avx512;
  return table;
}

}  // namespace bonsai
