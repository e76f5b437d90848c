// Internal: the dense head with int8 activations (bonsai_dense_linear, act_bits 8), written once over a traits
// type Q and instantiated by each ISA file with its own target flags (anonymous namespace, as float_kernels.h).
//
// Q provides what float_kernels.h's V does (F, W, zero, set1, fma, add, hsum, prefetch, widen<16>, load), and
//   scale_batch<Bits>(s, d, out): out[j] = s_j * d[j] for 8 groups' bf16 scales s (int4: the scales of 8
//     (scale, offset) pairs);
//   kGroupsPerDot (G, 1 or 2) and group_dot<Bits>(w, q): the int32 products of G consecutive groups' 32 weights
//     each (int8 codes, or int4 codes 0..15 as a group's 16 nibble bytes) with their 32 int8 activations each,
//     summed exactly into W lanes (group i in lanes [i W / G, (i + 1) W / G)) and converted to float (each lane
//     holds at most 32 G / W products of |.| <= 128 * 127: exact in float);
//   group_scale(sd): F with sd[i] in group i's lanes.
//
// Per row and group, y += lanes * (s * d_g): the group's weight scale times its activation scale, one broadcast.
// Against the float kernels this drops the widening of every weight to float (four converts per 8 weights),
// which bounded the int8 head at about 11 GB/s on one AVX2 core.
#ifndef BONSAI_DENSE_I8_KERNELS_H
#define BONSAI_DENSE_I8_KERNELS_H

#include <string.h>

#include "float_kernels.h"
#include "kernel_table.h"

namespace bonsai {
namespace {
namespace dk {

constexpr int64_t kScaleBatch = 8;  // groups whose s * d_g products are formed together, per row

// R rows of one token: each row two accumulator chains (even and odd dots), all rows reading the same group of
// activations from L1. Whole groups are read in place; a partial last group through a zero-padded copy.
template <class Q, int Bits, int R>
inline void dense_i8_tile(const DenseProblem& p, int64_t m, int64_t n, int64_t row_bytes, float* y) {
  using F = typename Q::F;
  constexpr int G = Q::kGroupsPerDot;
  static_assert(kScaleBatch % G == 0, "a scale batch is whole dots");
  constexpr int64_t cb = fk::chunk_bytes(Bits);
  constexpr int64_t kPrefetchEvery = 64 / cb;  // one prefetch per cache line of each row
  constexpr int64_t kPrefetchAhead = 4;        // tiles ahead (rows are contiguous)
  const int8_t* q = p.xq + m * p.x_stride;
  const float* d = p.xd + m * p.groups;
  const uint8_t* w = p.w + n * p.w_stride;
  // Each row's even and odd dots in two chains, indexed at compile time (a runtime chain index kept them on the
  // stack: one load and store per multiply-add).
  F even[R], odd[R];
  for (int r = 0; r < R; ++r) even[r] = odd[r] = Q::zero();
  const int64_t full = row_bytes / cb;
  for (int64_t c0 = 0; c0 < p.groups; c0 += kScaleBatch) {
    const int64_t count = c0 + kScaleBatch < p.groups ? kScaleBatch : p.groups - c0;
    alignas(64) float sd[R][kScaleBatch] = {};  // absent groups of a last dot: scale 0 (their products are 0)
    for (int r = 0; r < R; ++r) {
      const uint16_t* sr = p.group_scales + ((n + r) * p.groups + c0) * (Bits == 4 ? 2 : 1);
      if (count == kScaleBatch) Q::template scale_batch<Bits>(sr, d + c0, sd[r]);
      else
        for (int64_t j = 0; j < count; ++j) sd[r][j] = p.scale<Bits>(n + r, c0 + j) * d[c0 + j];
    }
    // Dot j: groups c0 + j .. c0 + j + G - 1 of the R rows, into `acc`.
    auto dot = [&](int64_t j, F (&acc)[R]) {
      const int64_t c = c0 + j;
      // The row's last G groups: a partial group's weights, and the activations of groups past the row's end
      // (the next token's, or past the buffer), through zero-padded copies.
      const bool whole = c + G <= full;
      alignas(64) int8_t qbuf[G * kDenseChunk];
      const int8_t* qc = q + c * kDenseChunk;
      if (!whole) {
        memset(qbuf, 0, sizeof qbuf);
        memcpy(qbuf, qc, size_t((p.groups - c < G ? p.groups - c : G) * kDenseChunk));
        qc = qbuf;
      }
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = w + r * p.w_stride + c * cb;
        F part;
        if (whole) {
          if (c % kPrefetchEvery == 0) Q::prefetch(src + kPrefetchAhead * R * p.w_stride);
          part = Q::template group_dot<Bits>(src, qc);
        } else {
          alignas(64) uint8_t buf[G * cb] = {};
          memcpy(buf, src, size_t(row_bytes - c * cb));
          part = Q::template group_dot<Bits>(buf, qc);
        }
        acc[r] = Q::fma(part, Q::group_scale(sd[r] + j), acc[r]);
      }
    };
    for (int64_t j = 0; j < count; j += 2 * G) {
      dot(j, even);
      if (j + G < count) dot(j + G, odd);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float s = Q::hsum(Q::add(even[r], odd[r]));
    y[n + r] = Bits == 4 ? s + fk::offset_term<Q>(p, n + r) : s;
  }
}

// One tile of R rows for tokens [m0, m1): with several tokens the tile serves every token while its rows are in
// L1, so the rows are read from memory once per call.
template <class Q, int Bits, int R>
inline void dense_i8_tokens(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n, int64_t row_bytes) {
  for (int64_t m = m0; m < m1; ++m) {
    DenseProblem t = p;
    if (Bits == 4) t.group_sums = p.group_sums + m * 2 * p.groups;  // this token's (0, d_g * sum q) pairs
    dense_i8_tile<Q, Bits, R>(t, m, n, row_bytes, p.y + m * p.y_stride);
  }
}

template <class Q, int Bits>
void dense_i8_rows(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t row_bytes = dense_row_bytes(Bits, p.k);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) dense_i8_tokens<Q, Bits, 4>(p, m0, m1, n, row_bytes);
  for (; n < n1; ++n) dense_i8_tokens<Q, Bits, 1>(p, m0, m1, n, row_bytes);
}

template <class Q>
void dense_i8(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.bits == 8) dense_i8_rows<Q, 8>(p, m0, m1, n0, n1);
  else dense_i8_rows<Q, 4>(p, m0, m1, n0, n1);
}

}  // namespace dk
}  // namespace
}  // namespace bonsai

#endif  // BONSAI_DENSE_I8_KERNELS_H
