// Internal: the 256-bit building blocks that the AVX2 and AVX-512 ternary kernels share (avx2.cpp, avx512.cpp).
// Everything is in an anonymous namespace and included by each ISA translation unit, so each one compiles its own
// copy with its own target flags: no inline function is shared across flag sets (an ODR merge could otherwise
// hand AVX-512-encoded code to an AVX2-only CPU).
//
// YmmBlocks is the part of the ternary_kernels.h block type that both ISAs read the same way: one block plane is
// exactly one ymm of unsigned codes c = t + 1 lined up with 32 int8 activations. Each ISA derives from it and
// adds only its multiply-accumulate (dot, flush) and its tiles.
#ifndef BONSAI_X86_YMM_BLOCKS_H
#define BONSAI_X86_YMM_BLOCKS_H

#include <immintrin.h>
#include <string.h>

#include "../kernel_table.h"

namespace bonsai {
namespace {

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

// dense_i8_kernels.h's scale_batch: out[j] = s_j * d[j] for 8 groups' bf16 scales s (int4: the scales of 8
// (scale, offset) pairs), widened by a shift into the high half of an fp32.
template <int Bits>
inline void scale_batch8(const uint16_t* s, const float* d, float* out) {
  const __m256i bits = Bits == 4 ? _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)s), 16)  // pair[0]
                                 : _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)s)), 16);
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_loadu_ps(d)));
}

struct YmmBlocks {
  static constexpr int kStepBlocks = 1;
  static constexpr bool kUnsignedCodes = true;
  static constexpr bool kPairedActs = false;
  // Decode streams the weights from DRAM: prefetch the same block of the rows kPrefetchTiles tiles ahead (rows
  // are contiguous, so this runs a few KiB ahead of the loads; 1-8 tiles measured within noise of each other).
  // Prefetches never fault, so running past the last row is harmless.
  static constexpr int64_t kPrefetchTiles = 4;
  using Packed = __m256i;
  using Codes = __m256i;  // unsigned codes c = t + 1, one per byte
  using Act = __m256i;
  using Sum = __m256i;    // int32

  static Packed load(const uint8_t* block, int64_t) { return _mm256_loadu_si256((const __m256i*)block); }
  static void prefetch(const uint8_t* block, int64_t tile_bytes) {
    __builtin_prefetch((const void*)(uintptr_t(block) + kPrefetchTiles * tile_bytes), 0, 3);  // T0
  }
  template <int I>
  static Codes plane(Packed packed) {
    return _mm256_and_si256(_mm256_srli_epi16(packed, 2 * I), _mm256_set1_epi8(kCodeMask));
  }
  template <int I>
  static Act act(const int8_t* qb, int64_t) { return _mm256_loadu_si256((const __m256i*)(qb + I * kLanes)); }
  static Sum sum_zero() { return _mm256_setzero_si256(); }
  static int32_t hsum(Sum sum) { return hsum_i32(sum); }
  // fp16 block scale -> float32, exact (F16C: both ISA files are built with -mf16c and dispatch checks it).
  static float half(uint16_t h) { return _cvtsh_ss(h); }

  using Rows4 = __m128i;
  using F4 = __m128;
  // The full sums of 4 rows' int32 vectors, row r in lane r: two rounds of pairwise adds within each 128-bit
  // half, then the halves added (integer adds: exact in any order).
  static Rows4 hsum4(const Sum (&s)[4]) {
    const __m256i quads = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
  }
  static F4 f4_zero() { return _mm_setzero_ps(); }
  static void store4(float* p, F4 v) { _mm_storeu_ps(p, v); }
  static F4 scales4(const uint16_t* s, int64_t stride) {
    return _mm_cvtph_ps(_mm_setr_epi16(short(s[0]), short(s[stride]), short(s[2 * stride]), short(s[3 * stride]), 0,
                                       0, 0, 0));
  }
  // 4-row tiles of one-block steps (ternary_kernels.h), one block at a time: a gather of the 4 rows' scales.
  static constexpr int64_t kScaleGroup = 1;
  using GroupScales = F4;
  static GroupScales group_scales(const uint16_t* s, int64_t stride, int64_t) { return scales4(s, stride); }
  static F4 scale_rows4(F4 acc, Rows4 sums, int32_t sub, F4 scales) {
    const __m128 blocks = _mm_cvtepi32_ps(_mm_sub_epi32(sums, _mm_set1_epi32(sub)));
    return _mm_add_ps(acc, _mm_mul_ps(blocks, scales));  // not fused: -ffp-contract=off
  }
  static F4 scale_group(F4 acc, const Rows4 (&sums)[1], const int32_t* sub, F4 scales, int64_t) {
    return scale_rows4(acc, sums[0], sub[0], scales);
  }
};

// The block scales of a 4-row tile, 8 blocks at a time (ternary_kernels.h kScaleGroup = 8): one 16-byte load per
// row, transposed once to the layout of the row sums, instead of a 4-row gather per block.
struct ScaleGroup8 {
  static constexpr int64_t kBlocks = 8;
  __m256 pair[4];  // blocks 2i (low half) and 2i + 1 (high half), row r in lane r of each half

  // Rows s, s + stride, ... of `blocks` <= 8 scales; nothing past a row's last block is read (the last row's ends
  // the buffer), and absent blocks get scale 0.
  static ScaleGroup8 load(const uint16_t* s, int64_t stride, int64_t blocks) {
    if (blocks < kBlocks) {
      alignas(16) uint16_t part[4][kBlocks] = {};
      for (int r = 0; r < 4; ++r) memcpy(part[r], s + r * stride, size_t(blocks) * sizeof(uint16_t));
      return transpose(part[0], kBlocks);
    }
    return transpose(s, stride);
  }
  static ScaleGroup8 transpose(const uint16_t* s, int64_t stride) {
    const __m128i h[4] = {_mm_loadu_si128((const __m128i*)s), _mm_loadu_si128((const __m128i*)(s + stride)),
                          _mm_loadu_si128((const __m128i*)(s + 2 * stride)),
                          _mm_loadu_si128((const __m128i*)(s + 3 * stride))};
    const __m128i r01[2] = {_mm_unpacklo_epi16(h[0], h[1]), _mm_unpackhi_epi16(h[0], h[1])};
    const __m128i r23[2] = {_mm_unpacklo_epi16(h[2], h[3]), _mm_unpackhi_epi16(h[2], h[3])};
    ScaleGroup8 g;
    for (int i = 0; i < 2; ++i) {
      g.pair[2 * i] = _mm256_cvtph_ps(_mm_unpacklo_epi32(r01[i], r23[i]));
      g.pair[2 * i + 1] = _mm256_cvtph_ps(_mm_unpackhi_epi32(r01[i], r23[i]));
    }
    return g;
  }
  // acc_r + float(sum_rb - sub[b]) * s_rb for the group's blocks b in order; sums[i] holds blocks 2i (low half)
  // and 2i + 1 (high half), row r in lane r of each. Absent blocks have sum 0, sub 0 and scale 0 and add +0
  // (acc is never -0).
  __m128 acc_blocks(__m128 acc, const __m256i (&sums)[4], const int32_t* sub, int64_t blocks) const {
    int32_t tail[kBlocks];
    if (blocks < kBlocks) {
      memset(tail, 0, sizeof tail);
      memcpy(tail, sub, size_t(blocks) * sizeof(int32_t));
      sub = tail;
    }
    for (int i = 0; i < 4; ++i) {
      const __m256i sub2 = _mm256_setr_m128i(_mm_set1_epi32(sub[2 * i]), _mm_set1_epi32(sub[2 * i + 1]));
      const __m256 products = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums[i], sub2)), pair[i]);
      acc = _mm_add_ps(acc, _mm256_castps256_ps128(products));  // not fused: -ffp-contract=off
      acc = _mm_add_ps(acc, _mm256_extractf128_ps(products, 1));
    }
    return acc;
  }
};

}  // namespace
}  // namespace bonsai

#endif  // BONSAI_X86_YMM_BLOCKS_H
