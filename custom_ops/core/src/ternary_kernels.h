// Internal: the ternary GEMV / GEMM kernels of the KernelTable (int8 and float activations), written once over a
// small per-ISA building-block type T and instantiated by each ISA file (avx2.cpp, avx512.cpp, neon.cpp) with its
// own target flags. Everything here is in an anonymous namespace, so every translation unit gets its own copy
// compiled for its own ISA (no ODR sharing across flag sets). This file owns the row loops, the token tiles, the
// accumulator chains and the int8 correction term; T only says how one block is read and multiplied.
//
// T provides
//   tiles:    kGemvRows (rows of a decode tile), kGemmTokens x kGemmRows (the prefill tile), kGemvChains
//             (independent accumulators per row of a decode tile), kFlushBlocks (blocks summed in Part before
//             they are widened into Sum);
//   weights:  Packed, kStepBlocks (1, or 2 when one register holds two blocks of a row), load(block, blocks):
//             `blocks` (<= kStepBlocks) consecutive blocks of one row; prefetch(block, tile_bytes): the decode
//             stream's prefetch, tile_bytes = bytes of one tile of rows (__builtin_prefetch: GCC 12 emitted no
//             _mm_prefetch reached through these templates); plane<I>(Packed) -> Codes: plane I
//             (weights [32I, 32I + 32) of each block), as the ISA multiplies it;
//   int8:     Act, act<I>(qb, blocks): the activations that line up with plane I of `blocks` blocks at qb (in
//             the blocks' own layout, or with kPairedActs in pair_acts(q, nblocks, out)'s, which decode_acts
//             builds into a buffer of the thread once per task: the K bytes of every task of a call, small
//             beside the task's rows);
//             Part, part_zero(), dot(Part, Codes, Act); Sum, sum_zero(), flush(Sum, Part[C]): add a row's C
//             chains (chain c = the planes c, c + C, ...) to its Sum; hsum(Sum) -> int32; kUnsignedCodes: Codes
//             hold c = t + 1, so sum_k q is subtracted;
//   float:    V (float_kernels.h's vector type) and widen(Codes, V::F*): the 32 weights t of a plane as floats
//             in K order (only for kStepBlocks == 1);
//   scales:   the t2g kernels: half(uint16_t) -> float, the exact widening of an fp16 block scale; F4 (4 floats),
//             f4_zero(), store4(float*, F4): a 4-row tile's running sums, row r in lane r. 4-row tiles take
//             kScaleGroup blocks (whole steps) at a time: Block4, block4(Part[4][C]) (one step's 4 row sums,
//             reduced as far as the type likes), block4_zero(), GroupScales, group_scales(s, stride, blocks) (the
//             4 rows' scales of `blocks` <= kScaleGroup blocks at s, s + stride, ...) and scale_group(F4 acc,
//             Block4[kScaleGroup / kStepBlocks], const int32_t* sub, GroupScales, blocks): per block j in order,
//             per row r, acc_r + float(sum_rj - sub[j]) * scale_rj, a float32 product then a sum, like the scalar
//             path (sub only with unsigned codes).
#ifndef BONSAI_TERNARY_KERNELS_H
#define BONSAI_TERNARY_KERNELS_H

#include <vector>

#include "kernel_table.h"

namespace bonsai {
namespace {
namespace tk {

// Rows of a GEMM are taken in blocks of about this many weight bytes, kept in L1/L2 while every token tile
// passes over them (the AVX2 kernel's blocking, now every ISA's).
constexpr int64_t kGemmBlockBytes = 16 * 1024;
// Tokens whose activation sums one GEMM call keeps at a time (a stack array).
constexpr int64_t kMaxTokens = 256;

// sum_k q[k] over whole blocks: the correction term of unsigned codes (compiled, and vectorized, per ISA).
inline int32_t sum_q(const int8_t* q, int64_t nblocks) {
  int32_t s = 0;
  for (int64_t i = 0; i < nblocks * kBlockK; ++i) s += q[i];
  return s;
}

// The decode tiles' activations: q itself, or q rearranged by T::pair_acts into a buffer of the thread running
// the task (reused across calls: no allocation per decode step once it has grown).
template <class T>
const int8_t* decode_acts(const int8_t* q, int64_t nblocks) {
  if constexpr (!T::kPairedActs) {
    return q;
  } else {
    thread_local std::vector<int8_t> buf;
    const size_t bytes = size_t((nblocks + 1) / 2 * 2 * kBlockK);
    if (buf.size() < bytes) buf.resize(bytes);
    T::pair_acts(q, nblocks, buf.data());
    return buf.data();
  }
}

// Plane I of NR rows' steps times MR tokens' activations: each activation vector is loaded once and serves the
// NR rows, and plane I feeds accumulator chain I % C.
template <class T, int I, int MR, int NR, int C>
inline void plane_products(const typename T::Packed (&packed)[NR], const int8_t* qb, int64_t q_stride,
                           int64_t blocks, typename T::Part (&part)[MR][NR][C]) {
  typename T::Codes c[NR];
  for (int r = 0; r < NR; ++r) c[r] = T::template plane<I>(packed[r]);
  for (int m = 0; m < MR; ++m) {
    const typename T::Act a = T::template act<I>(qb + m * q_stride, blocks);
    for (int r = 0; r < NR; ++r) part[m][r][I % C] = T::dot(part[m][r][I % C], c[r], a);
  }
}

// One step (T::kStepBlocks blocks, fewer at the end of a row) of NR rows for MR tokens.
template <class T, int MR, int NR, int C>
inline __attribute__((always_inline)) void step_i8(const int8_t* q, int64_t q_stride, const uint8_t* w,
                                                   int64_t w_stride, int64_t b, int64_t blocks,
                                                   typename T::Part (&part)[MR][NR][C]) {
  typename T::Packed packed[NR];
  for (int r = 0; r < NR; ++r) {
    const uint8_t* block = w + r * w_stride + b * kBlockBytes;
    if (MR == 1) T::prefetch(block, NR * w_stride);
    packed[r] = T::load(block, blocks);
  }
  const int8_t* qb = q + b * kBlockK;
  plane_products<T, 0>(packed, qb, q_stride, blocks, part);
  plane_products<T, 1>(packed, qb, q_stride, blocks, part);
  plane_products<T, 2>(packed, qb, q_stride, blocks, part);
  plane_products<T, 3>(packed, qb, q_stride, blocks, part);
}

// acc[m, r] = sum_k q[m, k] * T[r, k] for MR tokens x NR rows over all blocks. Decode tiles (MR = 1) split each
// row's sum into T::kGemvChains chains, so consecutive multiply-adds do not wait on each other, and prefetch
// their weight stream; prefill tiles already have MR x NR chains.
template <class T, int MR, int NR>
void tile_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int32_t* acc, int64_t acc_stride) {
  constexpr int C = MR == 1 ? T::kGemvChains : 1;
  constexpr int64_t S = T::kStepBlocks;
  static_assert(T::kFlushBlocks % S == 0, "only the last step of a row may be partial");
  typename T::Sum sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = T::sum_zero();
  for (int64_t b0 = 0; b0 < nblocks; b0 += T::kFlushBlocks) {
    const int64_t b1 = nblocks - b0 > T::kFlushBlocks ? b0 + T::kFlushBlocks : nblocks;
    typename T::Part part[MR][NR][C];
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r)
        for (int c = 0; c < C; ++c) part[m][r][c] = T::part_zero();
    const int64_t whole = b0 + (b1 - b0) / S * S;
    for (int64_t b = b0; b < whole; b += S) step_i8<T, MR, NR, C>(q, q_stride, w, w_stride, b, S, part);
    if (whole < b1) step_i8<T, MR, NR, C>(q, q_stride, w, w_stride, whole, b1 - whole, part);
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r) sum[m][r] = T::flush(sum[m][r], part[m][r]);
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r)
      acc[m * acc_stride + r] = T::hsum(sum[m][r]) - (T::kUnsignedCodes ? qsum[m] : 0);
}

// Rows [n0, n1) for MR tokens: NR-row tiles, then single rows.
template <class T, int MR, int NR>
void rows_i8(const int8_t* q, int64_t q_stride, const int32_t* qsum, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_i8<T, MR, NR>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
  for (; n < n1; ++n) tile_i8<T, MR, 1>(q, q_stride, qsum, nblocks, w + n * w_stride, w_stride, acc + n, acc_stride);
}

template <class T>
void gemv_i8(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0, int64_t n1,
             int32_t* acc) {
  const int32_t qsum = T::kUnsignedCodes ? sum_q(q, nblocks) : 0;
  rows_i8<T, 1, T::kGemvRows>(decode_acts<T>(q, nblocks), 0, &qsum, nblocks, w, w_stride, n0, n1, acc, 0);
}

template <class T>
void gemm_i8(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
             int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  static_assert(!T::kPairedActs, "prefill tiles read the activations in the blocks' layout");
  int32_t qsums[kMaxTokens];
  for (int64_t t0 = 0; t0 < m_count; t0 += kMaxTokens) {
    const int64_t t1 = t0 + kMaxTokens < m_count ? t0 + kMaxTokens : m_count;
    for (int64_t m = t0; m < t1; ++m) qsums[m - t0] = T::kUnsignedCodes ? sum_q(q + m * q_stride, nblocks) : 0;
    int64_t block_rows = kGemmBlockBytes / w_stride;
    block_rows = block_rows < T::kGemmRows ? T::kGemmRows : block_rows - block_rows % T::kGemmRows;
    for (int64_t nb = n0; nb < n1; nb += block_rows) {
      const int64_t nb1 = nb + block_rows < n1 ? nb + block_rows : n1;
      int64_t m = t0;
      for (; m + T::kGemmTokens <= t1; m += T::kGemmTokens)
        rows_i8<T, T::kGemmTokens, T::kGemmRows>(q + m * q_stride, q_stride, qsums + (m - t0), nblocks, w, w_stride,
                                                 nb, nb1, acc + m * acc_stride, acc_stride);
      for (; m < t1; ++m)  // leftover tokens one at a time
        rows_i8<T, 1, T::kGemvRows>(q + m * q_stride, 0, qsums + (m - t0), nblocks, w, w_stride, nb, nb1,
                                    acc + m * acc_stride, 0);
    }
  }
}

// ---- t2g: block scales (FORMAT.md "Scales"), int8 activations ----
// z[m, r] = sum_b float(acc[m, r, b]) * s[r, b] for MR tokens x NR rows, block by block in block order (each
// block's int32 sum is complete before it is scaled, and the float32 products and sums round exactly as the
// reference's; the core is built with -ffp-contract=off, so no FMA merges them).
//
// 4-row tiles: per block, the reductions and scale loads cost about as many vector ops as the multiplies, so a
// type may batch them over kScaleGroup blocks (e.g. one load of 8 scales per row and a transpose instead of a
// gather per block; several blocks' row sums reduced together). Each step of kStepBlocks blocks gives one Block4;
// steps past the row's end are block4_zero() and add nothing.
template <class T, int MR>
void tile_t2g_i8_rows4(const int8_t* q, int64_t q_stride, const int32_t* qsums, int64_t nblocks, const uint8_t* w,
                       int64_t w_stride, const uint16_t* scales, float* z, int64_t z_stride) {
  constexpr int C = MR == 1 ? T::kGemvChains : 1;
  constexpr int64_t G = T::kScaleGroup, S = T::kStepBlocks;
  static_assert(G % S == 0, "a scale group is whole steps");
  typename T::F4 acc4[MR];
  for (int m = 0; m < MR; ++m) acc4[m] = T::f4_zero();
  for (int64_t g = 0; g < nblocks; g += G) {
    const int64_t blocks = nblocks - g < G ? nblocks - g : G;
    // The tile's block scales, widened once for its MR tokens, before the group's multiplies: a cache miss on
    // them (the weights are prefetched, the scales are not) then overlaps those.
    const typename T::GroupScales group = T::group_scales(scales + g, nblocks, blocks);
    typename T::Block4 blk[MR][G / S];
#pragma GCC unroll 16
    for (int64_t j = 0; j < G / S; ++j) {
      if (j * S < blocks) {
        typename T::Part part[MR][4][C];
        for (int m = 0; m < MR; ++m)
          for (int r = 0; r < 4; ++r)
            for (int c = 0; c < C; ++c) part[m][r][c] = T::part_zero();
        const int64_t step = blocks - j * S < S ? blocks - j * S : S;
        step_i8<T, MR, 4, C>(q, q_stride, w, w_stride, g + j * S, step, part);
        for (int m = 0; m < MR; ++m) blk[m][j] = T::block4(part[m]);
      } else {
        for (int m = 0; m < MR; ++m) blk[m][j] = T::block4_zero();
      }
    }
    for (int m = 0; m < MR; ++m) acc4[m] = T::scale_group(acc4[m], blk[m], qsums + m * nblocks + g, group, blocks);
  }
  for (int m = 0; m < MR; ++m) T::store4(z + m * z_stride, acc4[m]);
}

// Tiles of other row counts (and single rows), one block at a time, each row's block sums scaled on their own.
template <class T, int MR, int NR>
void tile_t2g_i8(const int8_t* q, int64_t q_stride, const int32_t* qsums, int64_t nblocks, const uint8_t* w,
                 int64_t w_stride, const uint16_t* scales, float* z, int64_t z_stride) {
  constexpr int C = MR == 1 ? T::kGemvChains : 1;
  static_assert(T::kStepBlocks == 1, "these tiles step one block at a time");
  float acc[MR][NR] = {};
  for (int64_t b = 0; b < nblocks; ++b) {
    typename T::Part part[MR][NR][C];
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < NR; ++r)
        for (int c = 0; c < C; ++c) part[m][r][c] = T::part_zero();
    step_i8<T, MR, NR, C>(q, q_stride, w, w_stride, b, 1, part);
    for (int m = 0; m < MR; ++m) {
      const int32_t sub = T::kUnsignedCodes ? qsums[m * nblocks + b] : 0;
      for (int r = 0; r < NR; ++r)
        acc[m][r] = acc[m][r] + float(T::hsum(T::flush(T::sum_zero(), part[m][r])) - sub) *
                                    T::half(scales[r * nblocks + b]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) z[m * z_stride + r] = acc[m][r];
}

// Rows [n0, n1): NR-row tiles of type T (activations qt, in T's layout), then single rows of type T1 (the same
// type, or, where T reads two blocks per step, a one-block type; activations q).
template <class T, class T1, int MR, int NR>
void rows_t2g_i8(const int8_t* qt, const int8_t* q, int64_t q_stride, const int32_t* qsums, int64_t nblocks,
                 const uint8_t* w, int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* z,
                 int64_t z_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    if constexpr (NR == 4)
      tile_t2g_i8_rows4<T, MR>(qt, q_stride, qsums, nblocks, w + n * w_stride, w_stride, scales + n * nblocks, z + n,
                               z_stride);
    else
      tile_t2g_i8<T, MR, NR>(qt, q_stride, qsums, nblocks, w + n * w_stride, w_stride, scales + n * nblocks, z + n,
                             z_stride);
  }
  for (; n < n1; ++n)
    tile_t2g_i8<T1, MR, 1>(q, q_stride, qsums, nblocks, w + n * w_stride, w_stride, scales + n * nblocks, z + n,
                           z_stride);
}

// Token tiles over cache-sized blocks of rows, as gemm_i8. One token runs the decode tiles of Tv (its GEMV
// type, which may read two blocks per step), everything else T.
template <class T, class Tv = T>
void gemm_t2g_i8(const int8_t* q, int64_t q_stride, const int32_t* qsums, int64_t m_count, int64_t nblocks,
                 const uint8_t* w, int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* z,
                 int64_t z_stride) {
  static_assert(!T::kPairedActs, "prefill tiles read the activations in the blocks' layout");
  if (m_count == 1) {
    rows_t2g_i8<Tv, T, 1, Tv::kGemvRows>(decode_acts<Tv>(q, nblocks), q, 0, qsums, nblocks, w, w_stride, scales, n0,
                                         n1, z, 0);
    return;
  }
  int64_t block_rows = kGemmBlockBytes / w_stride;
  block_rows = block_rows < T::kGemmRows ? T::kGemmRows : block_rows - block_rows % T::kGemmRows;
  for (int64_t nb = n0; nb < n1; nb += block_rows) {
    const int64_t nb1 = nb + block_rows < n1 ? nb + block_rows : n1;
    int64_t m = 0;
    for (; m + T::kGemmTokens <= m_count; m += T::kGemmTokens)
      rows_t2g_i8<T, T, T::kGemmTokens, T::kGemmRows>(q + m * q_stride, q + m * q_stride, q_stride,
                                                      qsums + m * nblocks, nblocks, w, w_stride, scales, nb, nb1,
                                                      z + m * z_stride, z_stride);
    for (; m < m_count; ++m)  // leftover tokens one at a time
      rows_t2g_i8<T, T, 1, T::kGemvRows>(q + m * q_stride, q + m * q_stride, 0, qsums + m * nblocks, nblocks, w,
                                         w_stride, scales, nb, nb1, z + m * z_stride, 0);
  }
}

// ---- float activations: channel scales (t2) and block scales (t2g) ----
// y[m, r] for MR tokens x NR rows, one FMA chain per (token, row): channel scales (block_scales null) scale the
// row's sum, block scales (Blocks) each block's sum (its own chain, added with one FMA per block).
template <class T, int MR, int NR, bool Blocks>
void tile_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, const uint16_t* block_scales, float* y, int64_t y_stride) {
  using V = typename T::V;
  using F = typename V::F;
  constexpr int NV = kLanes / V::W;
  static_assert(T::kStepBlocks == 1, "the float path reads one block at a time");
  F sum[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) sum[m][r] = V::zero();
  auto plane = [&](F (&part)[MR], int i, typename T::Codes codes, int64_t b) {
    F t[NV];
    T::widen(codes, t);
    for (int m = 0; m < MR; ++m) {
      const float* xb = x + m * x_stride + b * kBlockK + i * kLanes;
      F s = part[m];
      for (int v = 0; v < NV; ++v) s = V::fma(t[v], V::load(xb + v * V::W), s);
      part[m] = s;
    }
  };
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int r = 0; r < NR; ++r) {
      F part[MR];
      for (int m = 0; m < MR; ++m) part[m] = Blocks ? V::zero() : sum[m][r];
      const typename T::Packed packed = T::load(w + r * w_stride + b * kBlockBytes, 1);
      plane(part, 0, T::template plane<0>(packed), b);
      plane(part, 1, T::template plane<1>(packed), b);
      plane(part, 2, T::template plane<2>(packed), b);
      plane(part, 3, T::template plane<3>(packed), b);
      if constexpr (Blocks) {
        const F s = V::set1(T::half(block_scales[r * nblocks + b]));
        for (int m = 0; m < MR; ++m) sum[m][r] = V::fma(s, part[m], sum[m][r]);
      } else {
        for (int m = 0; m < MR; ++m) sum[m][r] = part[m];
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * y_stride + r] = Blocks ? V::hsum(sum[m][r]) : scales[r] * V::hsum(sum[m][r]);
}

template <class T, int MR, int NR, bool Blocks>
void rows_f32(const float* x, int64_t x_stride, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, const uint16_t* block_scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    tile_f32<T, MR, NR, Blocks>(x, x_stride, nblocks, w + n * w_stride, w_stride, Blocks ? nullptr : scales + n,
                                Blocks ? block_scales + n * nblocks : nullptr, y + n, y_stride);
  for (; n < n1; ++n)
    tile_f32<T, MR, 1, Blocks>(x, x_stride, nblocks, w + n * w_stride, w_stride, Blocks ? nullptr : scales + n,
                               Blocks ? block_scales + n * nblocks : nullptr, y + n, y_stride);
}

// Token tiles, then leftover tokens one at a time (one token: the decode tile).
template <class T, bool Blocks>
void tokens_f32(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                int64_t w_stride, const float* scales, const uint16_t* block_scales, int64_t n0, int64_t n1, float* y,
                int64_t y_stride) {
  int64_t m = 0;
  if (m_count > 1)
    for (; m + T::kGemmTokens <= m_count; m += T::kGemmTokens)
      rows_f32<T, T::kGemmTokens, T::kGemmRows, Blocks>(x + m * x_stride, x_stride, nblocks, w, w_stride, scales,
                                                        block_scales, n0, n1, y + m * y_stride, y_stride);
  for (; m < m_count; ++m)
    rows_f32<T, 1, T::kGemvRows, Blocks>(x + m * x_stride, 0, nblocks, w, w_stride, scales, block_scales, n0, n1,
                                         y + m * y_stride, 0);
}

template <class T>
void gemv_f32(const float* x, int64_t nblocks, const uint8_t* w, int64_t w_stride, const float* scales, int64_t n0,
              int64_t n1, float* y) {
  tokens_f32<T, false>(x, 0, 1, nblocks, w, w_stride, scales, nullptr, n0, n1, y, 0);
}

template <class T>
void gemm_f32(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w, int64_t w_stride,
              const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  tokens_f32<T, false>(x, x_stride, m_count, nblocks, w, w_stride, scales, nullptr, n0, n1, y, y_stride);
}

template <class T>
void gemm_t2g_f32(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                  int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  tokens_f32<T, true>(x, x_stride, m_count, nblocks, w, w_stride, nullptr, scales, n0, n1, y, y_stride);
}

}  // namespace tk
}  // namespace
}  // namespace bonsai

#endif  // BONSAI_TERNARY_KERNELS_H
