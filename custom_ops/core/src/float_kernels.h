// Internal: the float kernels of the dense head (bonsai_dense_linear) and of cache attention (bonsai_attention),
// written once over a small vector-traits type V and instantiated by each ISA file (avx2.cpp, avx512.cpp,
// neon.cpp) with its own target flags. Everything here is in an anonymous namespace, so every translation unit
// gets its own copy compiled for its own ISA (no ODR sharing across flag sets).
//
// V provides: F (vector of W floats), zero, set1, set1_bf16_pair (the bf16 pair[0] of a 32-bit pair, in every
// lane), load, store, add, mul, fma(a, b, c) = a * b + c, max, hsum, hmax, round (to nearest), exp2i (2^n for
// integral n in [-126, 127]), prefetch, and
// widen<Bits>(p, out[32 / W]): the 32 weights k..k+31 of a dense row chunk (bf16, int8 codes or int4 codes 0..15
// at p) as floats, in K order.
#ifndef BONSAI_FLOAT_KERNELS_H
#define BONSAI_FLOAT_KERNELS_H

#include <math.h>
#include <string.h>

#include <type_traits>

#include "kernel_table.h"

namespace bonsai {
namespace {
namespace fk {

// ---- Dense weight-only linear ----------------------------------------------------------------------------------

constexpr int64_t chunk_bytes(int bits) { return kDenseChunk * bits / 8; }

// Chunk c of a row as floats: whole chunks are widened in place; the last, partial one from a zero-padded copy
// (never reads past the row).
template <class V, int Bits>
inline void load_chunk(const uint8_t* row, int64_t c, int64_t row_bytes, typename V::F* out) {
  constexpr int64_t cb = chunk_bytes(Bits);
  const int64_t off = c * cb;
  if (off + cb <= row_bytes) {
    V::template widen<Bits>(row + off, out);
    return;
  }
  alignas(64) uint8_t buf[cb] = {};
  memcpy(buf, row + off, size_t(row_bytes - off));
  V::template widen<Bits>(buf, out);
}

// sum_g o[n, g] * (sum of x over group g), the offsets' term of int4 row n: one dot product of the row's bf16
// (scale, offset) pairs with the token's (0, group sum) pairs (DenseProblem::group_sums), 32 pairs' values per
// step, instead of a scalar decode, multiply and add per group inside the row's stream. The scales meet zeros (a
// non-finite scale, whose weights are non-finite anyway, makes the row NaN).
template <class V>
inline float offset_term(const DenseProblem& p, int64_t n) {
  using F = typename V::F;
  constexpr int NV = int(kDenseChunk) / V::W;
  const uint16_t* pairs = p.group_scales + n * p.groups * 2;
  const int64_t len = 2 * p.groups;
  F acc = V::zero();
  int64_t i = 0;
  for (; i + kDenseChunk <= len; i += kDenseChunk) {
    F v[NV];
    V::template widen<16>(reinterpret_cast<const uint8_t*>(pairs + i), v);
    for (int j = 0; j < NV; ++j) acc = V::fma(v[j], V::load(p.group_sums + i + j * V::W), acc);
  }
  float s = V::hsum(acc);
  for (i += 1; i < len; i += 2) s += bf16_to_f32(pairs[i]) * p.group_sums[i];
  return s;
}

// Decode (one token): R rows stream from memory together, each with two accumulator chains. Whole chunks are
// widened straight from the rows; only a partial last chunk goes through a zero-padded copy (kept out of the
// main loop so the accumulators stay in registers).
template <class V, int Bits, int R>
inline void dense_gemv_tile(const DenseProblem& p, const float* x, int64_t n, int64_t chunks, int64_t row_bytes) {
  using F = typename V::F;
  constexpr int NV = int(kDenseChunk) / V::W;
  constexpr int64_t cb = chunk_bytes(Bits);
  constexpr int64_t kPrefetchAhead = 4;  // tiles: rows are contiguous, so this is 4 * R rows ahead
  constexpr int64_t kPrefetchEvery = 64 / cb > 0 ? 64 / cb : 1;  // one prefetch per cache line
  F acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V::zero();
  const uint8_t* w = p.w + n * p.w_stride;
  // chain: 0 or 1, a compile-time constant at every call (a runtime index would keep acc on the stack)
  auto step = [&](int r, int64_t c, const uint8_t* src, auto chain) {
    F wv[NV];
    V::template widen<Bits>(src, wv);
    const float* xc = x + c * kDenseChunk;
    if (Bits != 16) {  // one scale per chunk (= group of 32): scale the chunk's partial sum
      F part = V::mul(wv[0], V::load(xc));
      for (int i = 1; i < NV; ++i) part = V::fma(wv[i], V::load(xc + i * V::W), part);
      // int4: the scale from its (scale, offset) pair in one broadcast load (set1_bf16_pair)
      const F s = Bits == 4 ? V::set1_bf16_pair(p.group_scales + ((n + r) * p.groups + c) * 2)
                            : V::set1(p.scale<Bits>(n + r, c));
      acc[r][chain()] = V::fma(s, part, acc[r][chain()]);
    } else {
      for (int i = 0; i < NV; ++i) acc[r][i & 1] = V::fma(wv[i], V::load(xc + i * V::W), acc[r][i & 1]);
    }
  };
  const int64_t full = row_bytes / cb;
  auto chunk = [&](int64_t c, auto chain) {
    for (int r = 0; r < R; ++r) {
      const uint8_t* src = w + r * p.w_stride + c * cb;
      if (c % kPrefetchEvery == 0) V::prefetch(src + kPrefetchAhead * R * p.w_stride);
      step(r, c, src, chain);
    }
  };
  using Even = std::integral_constant<int, 0>;
  using Odd = std::integral_constant<int, 1>;
  int64_t c = 0;
  if constexpr (Bits != 16)  // a chunk's scaled sum goes to chain c & 1
    for (; c + 2 <= full; c += 2) {
      chunk(c, Even{});
      chunk(c + 1, Odd{});
    }
  for (; c < full; ++c) chunk(c, Even{});  // bf16 alternates chains within a chunk; else one even chunk left
  if (full < chunks) {
    for (int r = 0; r < R; ++r) {
      alignas(64) uint8_t buf[cb] = {};
      memcpy(buf, w + r * p.w_stride + full * cb, size_t(row_bytes - full * cb));
      if (full & 1) step(r, full, buf, Odd{});
      else step(r, full, buf, Even{});
    }
  }
  for (int r = 0; r < R; ++r) {
    const float s = V::hsum(V::add(acc[r][0], acc[r][1]));
    p.y[n + r] = Bits == 16 ? s * p.scale<Bits>(n + r, 0) : Bits == 8 ? s : s + offset_term<V>(p, n + r);
  }
}

// Prefill: MR tokens x NR rows of float weights already widened and scaled (wf rows of kp floats).
template <class V, int MR, int NR>
inline void dense_micro(const float* x, int64_t x_stride, const float* wf, int64_t kp, float* y, int64_t y_stride) {
  using F = typename V::F;
  F acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = V::zero();
  for (int64_t k = 0; k < kp; k += V::W) {
    F wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = V::load(wf + r * kp + k);
    for (int m = 0; m < MR; ++m) {
      const F xv = V::load(x + m * x_stride + k);
      for (int r = 0; r < NR; ++r) acc[m][r] = V::fma(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * y_stride + r] = V::hsum(acc[m][r]);
}

template <class V, int MR, int NR>
inline void dense_micro_rows(const float* x, int64_t x_stride, const float* wf, int64_t kp, int64_t rows, float* y,
                             int64_t y_stride) {
  int64_t r = 0;
  for (; r + NR <= rows; r += NR) dense_micro<V, MR, NR>(x, x_stride, wf + r * kp, kp, y + r, y_stride);
  for (; r < rows; ++r) dense_micro<V, MR, 1>(x, x_stride, wf + r * kp, kp, y + r, y_stride);
}

template <class V, int Bits>
void dense_rows(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* scratch) {
  using F = typename V::F;
  constexpr int NV = int(kDenseChunk) / V::W;
  const int64_t chunks = dense_groups(p.k), kp = chunks * kDenseChunk;
  const int64_t row_bytes = dense_row_bytes(Bits, p.k);
  if (m1 - m0 == 1) {
    const float* x = p.x + m0 * p.x_stride;
    DenseProblem q = p;
    q.y = p.y + m0 * p.y_stride;
    if (Bits == 4) q.group_sums = p.group_sums + m0 * 2 * p.groups;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) dense_gemv_tile<V, Bits, 4>(q, x, n, chunks, row_bytes);
    for (; n < n1; ++n) dense_gemv_tile<V, Bits, 1>(q, x, n, chunks, row_bytes);
    return;
  }
  // Each block of rows is widened (and scaled) once into scratch, then serves every token from cache.
  for (int64_t nb = n0; nb < n1; nb += p.scratch_rows) {
    const int64_t rows = nb + p.scratch_rows < n1 ? p.scratch_rows : n1 - nb;
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = p.w + (nb + r) * p.w_stride;
      float* dst = scratch + r * kp;
      for (int64_t c = 0; c < chunks; ++c) {
        F wv[NV];
        load_chunk<V, Bits>(row, c, row_bytes, wv);
        const F s = V::set1(p.scale<Bits>(nb + r, c));
        // code * scale (+ offset): the product is exact, so mul-then-add and FMA give the same weight
        const F o = V::set1(Bits == 4 ? p.offset(nb + r, c) : 0.f);
        for (int i = 0; i < NV; ++i)
          V::store(dst + c * kDenseChunk + i * V::W, Bits == 4 ? V::fma(wv[i], s, o) : V::mul(wv[i], s));
      }
    }
    int64_t m = m0;
    float* y = p.y + nb;
    for (; m + V::kMR <= m1; m += V::kMR)
      dense_micro_rows<V, V::kMR, V::kNR>(p.x + m * p.x_stride, p.x_stride, scratch, kp, rows, y + m * p.y_stride,
                                          p.y_stride);
    for (; m < m1; ++m)
      dense_micro_rows<V, 1, V::kNR>(p.x + m * p.x_stride, p.x_stride, scratch, kp, rows, y + m * p.y_stride,
                                     p.y_stride);
  }
}

template <class V>
void dense_f32(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* scratch) {
  if (p.bits == 16) dense_rows<V, 16>(p, m0, m1, n0, n1, scratch);
  else if (p.bits == 8) dense_rows<V, 8>(p, m0, m1, n0, n1, scratch);
  else dense_rows<V, 4>(p, m0, m1, n0, n1, scratch);
}

// ---- Attention -------------------------------------------------------------------------------------------------

// e^x for x <= 0 (softmax after subtracting the max): Cody-Waite reduction and a degree-6 polynomial (Cephes
// expf coefficients), about 1 ulp; clamped at -87 so 2^n stays a normal float.
template <class V>
inline typename V::F exp_neg(typename V::F x) {
  using F = typename V::F;
  x = V::max(x, V::set1(-87.0f));
  const F n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  F r = V::fma(n, V::set1(-0.693359375f), x);
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  F poly = V::set1(1.9875691500e-4f);
  poly = V::fma(poly, r, V::set1(1.3981999507e-3f));
  poly = V::fma(poly, r, V::set1(8.3334519073e-3f));
  poly = V::fma(poly, r, V::set1(4.1665795894e-2f));
  poly = V::fma(poly, r, V::set1(1.6666665459e-1f));
  poly = V::fma(poly, r, V::set1(5.0000001201e-1f));
  const F e = V::add(V::fma(V::mul(poly, r), r, r), V::set1(1.0f));
  return V::mul(e, V::exp2i(n));
}

// A vector of cache elements as floats (cache_value's vector form).
template <class V>
inline typename V::F load_kv(const float* p) { return V::load(p); }
template <class V>
inline typename V::F load_kv(const uint16_t* p) { return V::load_half(p); }

// dot(a, b) over d floats for 4 cache rows b0..b3 at once (4 independent chains).
template <class V, class E>
inline void dot4(const float* a, const E* b, int64_t b_stride, int64_t d, float* out) {
  using F = typename V::F;
  F acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
  int64_t i = 0;
  for (; i + V::W <= d; i += V::W) {
    const F av = V::load(a + i);
    for (int j = 0; j < 4; ++j) acc[j] = V::fma(av, load_kv<V>(b + j * b_stride + i), acc[j]);
  }
  for (int j = 0; j < 4; ++j) {
    float s = V::hsum(acc[j]);
    for (int64_t t = i; t < d; ++t) s += a[t] * cache_value(b[j * b_stride + t]);
    out[j] = s;
  }
}

template <class V, class E>
inline float dot1(const float* a, const E* b, int64_t d) {
  using F = typename V::F;
  F acc = V::zero();
  int64_t i = 0;
  for (; i + V::W <= d; i += V::W) acc = V::fma(V::load(a + i), load_kv<V>(b + i), acc);
  float s = V::hsum(acc);
  for (; i < d; ++i) s += a[i] * cache_value(b[i]);
  return s;
}

// out[g] += sum_j p[g][j] * v_j over columns [c0, c0 + NC * W) for G heads, V rows read once for all heads.
template <class V, int G, int NC, class E>
inline void accumulate_v(const float* const* probs, const E* v, int64_t d, int64_t n_ctx, int64_t c0,
                         float* const* out) {
  using F = typename V::F;
  F acc[G][NC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) acc[g][c] = V::zero();
  for (int64_t j = 0; j < n_ctx; ++j) {
    const E* vj = v + j * d + c0;
    F vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = load_kv<V>(vj + c * V::W);
    for (int g = 0; g < G; ++g) {
      const F pj = V::set1(probs[g][j]);
      for (int c = 0; c < NC; ++c) acc[g][c] = V::fma(pj, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) V::store(out[g] + c0 + c * V::W, acc[g][c]);
}

template <class V, int G, class E>
inline void weighted_v(const float* const* probs, const E* v, int64_t d, int64_t n_ctx, float* const* out) {
  constexpr int NC = V::kAttnCols / G;
  int64_t c0 = 0;
  for (; c0 + NC * V::W <= d; c0 += NC * V::W) accumulate_v<V, G, NC>(probs, v, d, n_ctx, c0, out);
  for (; c0 + V::W <= d; c0 += V::W) accumulate_v<V, G, 1>(probs, v, d, n_ctx, c0, out);
  for (; c0 < d; ++c0)  // columns left over when D is not a multiple of W
    for (int g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t j = 0; j < n_ctx; ++j) s += probs[g][j] * cache_value(v[j * d + c0]);
      out[g][c0] = s;
    }
}

// Query token `token`, the query heads of KV head `kv` over caches of element type E: scores, softmax, weighted
// sum of V. scratch: at least group * (pos + token + 1) floats.
template <class V, class E>
void attend_cache(const AttentionProblem& a, const E* k_cache, const E* v_cache, int64_t token, int64_t kv,
                  float* scratch) {
  using F = typename V::F;
  const int64_t group = a.h / a.hkv, n_ctx = a.pos + token + 1, d = a.d;
  const E* k = k_cache + kv * a.s * d;
  const E* v = v_cache + kv * a.s * d;
  const float scale = 1.0f / sqrtf(float(d));
  for (int64_t g0 = 0; g0 < group; g0 += 2) {
    const int gn = group - g0 >= 2 ? 2 : 1;
    const float* probs[2];
    float* outs[2];
    float inv_sum[2];
    for (int g = 0; g < gn; ++g) {
      const int64_t head = kv * group + g0 + g;
      const float* q = a.q + (token * a.h + head) * d;
      float* s = scratch + g * n_ctx;
      int64_t j = 0;
      for (; j + 4 <= n_ctx; j += 4) dot4<V>(q, k + j * d, d, d, s + j);
      for (; j < n_ctx; ++j) s[j] = dot1<V>(q, k + j * d, d);
      // max and exp, vectorized; scores are scaled here
      F vmax = V::set1(-INFINITY);
      j = 0;
      for (; j + V::W <= n_ctx; j += V::W) vmax = V::max(vmax, V::load(s + j));
      float mx = V::hmax(vmax);
      for (; j < n_ctx; ++j) mx = s[j] > mx ? s[j] : mx;
      const F vscale = V::set1(scale), vshift = V::set1(mx * scale);
      F vsum = V::zero();
      j = 0;
      for (; j + V::W <= n_ctx; j += V::W) {
        const F e = exp_neg<V>(V::fma(V::load(s + j), vscale, V::mul(vshift, V::set1(-1.0f))));
        V::store(s + j, e);
        vsum = V::add(vsum, e);
      }
      float sum = V::hsum(vsum);
      for (; j < n_ctx; ++j) sum += s[j] = expf(s[j] * scale - mx * scale);
      probs[g] = s;
      outs[g] = a.out + (token * a.h + head) * d;
      inv_sum[g] = 1.0f / sum;
    }
    if (gn == 2) weighted_v<V, 2>(probs, v, d, n_ctx, outs);
    else weighted_v<V, 1>(probs, v, d, n_ctx, outs);
    for (int g = 0; g < gn; ++g) {
      const F vi = V::set1(inv_sum[g]);
      int64_t i = 0;
      for (; i + V::W <= d; i += V::W) V::store(outs[g] + i, V::mul(V::load(outs[g] + i), vi));
      for (; i < d; ++i) outs[g][i] *= inv_sum[g];
    }
  }
}

// The table's attention kernel: float32 or fp16 caches, whichever the problem holds.
template <class V>
void attend(const AttentionProblem& a, int64_t token, int64_t kv, float* scratch) {
  if (a.k16) attend_cache<V>(a, a.k16, a.v16, token, kv, scratch);
  else attend_cache<V>(a, a.k, a.v, token, kv, scratch);
}

}  // namespace fk
}  // namespace
}  // namespace bonsai

#endif  // BONSAI_FLOAT_KERNELS_H
