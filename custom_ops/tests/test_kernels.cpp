// C++ tests of the kernel core through its C ABI: every ISA table this CPU supports against an independent
// scalar oracle written here (bit-exact integers, float within rounding), over awkward shapes, unaligned
// buffers and thread counts, plus invalid-argument checks. Covers the ternary linear, the dense head
// (bonsai_dense_linear, every weight format) and cache attention. Run natively (also under ASan) and under qemu-aarch64.
//
// Usage: test_kernels [--expect-isa NAME]   (NAME: the table "auto" must pick on this CPU)
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <initializer_list>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bonsai/kernels.h"
#include "bonsai/ternary_format.h"

namespace {

int g_failures = 0;

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) {                                               \
      ++g_failures;                                              \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                              \
      fprintf(stderr, "\n");                                     \
    }                                                            \
  } while (0)

// Awkward sizes: below, at and above the 128-weight block and the kernels' row/token tiles.
const int64_t kTokens[] = {1, 2, 3, 5, 8, 9};
const int64_t kRows[] = {1, 3, 4, 5, 17, 33};
const int64_t kDepths[] = {1, 31, 127, 128, 129, 300, 513, 1153};  // 1153: a whole group of 8 block scales, then 2
const int32_t kThreadCounts[] = {1, 3};
constexpr int64_t kLongK = 257 * bonsai::kBlockK + 77;  // 258 blocks
// act_bits = 0 sums in float in a kernel-specific order: allow this many ulps of sum_k |x| * scale.
constexpr float kFloatRelTol = 1e-5f;

using bonsai::kBlockBytes;
using bonsai::kBlockK;
using bonsai::kLanes;

// Independent packer (formats.pack): bits 2i..2i+1 of byte j of a block = code of weight 32i + j.
std::vector<uint8_t> pack(const std::vector<int8_t>& t, int64_t n, int64_t k) {
  const int64_t rb = bonsai::row_bytes(k);
  std::vector<uint8_t> packed(size_t(n * rb), 0x55);  // 0x55 = four codes 1 = zero weights (the padding)
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      uint8_t& byte = packed[size_t(r * rb + (c / kBlockK) * kBlockBytes + (c % kBlockK) % kLanes)];
      const int shift = 2 * int((c % kBlockK) / kLanes);
      byte = uint8_t((byte & ~(3 << shift)) | ((t[size_t(r * k + c)] + bonsai::kCodeOffset) << shift));
    }
  }
  return packed;
}

// formats.quantize_activations for one row.
float quantize(const float* x, int64_t k, int8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = fmaxf(amax, fabsf(x[i]));
  if (amax == 0.0f) {
    memset(q, 0, size_t(k));
    return 0.0f;
  }
  const float inv = 127.0f / amax;
  for (int64_t i = 0; i < k; ++i) q[i] = int8_t(fminf(fmaxf(nearbyintf(x[i] * inv), -127.0f), 127.0f));
  return amax / 127.0f;
}

struct Case {
  int64_t m, n, k;
  std::vector<int8_t> t;  // [n, k]
  std::vector<uint8_t> packed;
  std::vector<float> x, scales;
  std::vector<int8_t> q;  // oracle quantization of x
  std::vector<float> d;
  std::vector<int32_t> acc;  // oracle accumulators [m, n]
};

Case make_case(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  Case c{m, n, k, {}, {}, {}, {}, {}, {}, {}};
  std::uniform_int_distribution<int> tern(-1, 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n * k; ++i) c.t.push_back(int8_t(tern(rng)));
  c.packed = pack(c.t, n, k);
  for (int64_t i = 0; i < m * k; ++i) c.x.push_back(normal(rng));
  // Exact ties of x * inv (127 / amax = 1 for amax = 127) exercise round-half-to-even; the last row is all zero.
  if (m >= 2) {
    for (int64_t i = 0; i < k; ++i) c.x[size_t(i)] = float(i % 7) - 3.5f;
    c.x[0] = 127.0f;
    for (int64_t i = 0; i < k; ++i) c.x[size_t((m - 1) * k + i)] = 0.0f;
  }
  for (int64_t i = 0; i < n; ++i) c.scales.push_back(0.5f + float(i % 5) * 0.25f);
  c.q.resize(size_t(m * k));
  for (int64_t r = 0; r < m; ++r) c.d.push_back(quantize(&c.x[size_t(r * k)], k, &c.q[size_t(r * k)]));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t o = 0; o < n; ++o) {
      int32_t s = 0;
      for (int64_t i = 0; i < k; ++i) s += int32_t(c.q[size_t(r * k + i)]) * c.t[size_t(o * k + i)];
      c.acc.push_back(s);
    }
  return c;
}

// Copies `v` to an address one element past an aligned boundary: kernels must not assume alignment.
template <typename T>
struct Unaligned {
  std::vector<T> storage;
  T* ptr;
  explicit Unaligned(const std::vector<T>& v) : storage(v.size() + 1) {
    ptr = storage.data() + 1;
    memcpy(ptr, v.data(), v.size() * sizeof(T));
  }
  explicit Unaligned(size_t count) : storage(count + 1), ptr(storage.data() + 1) {}
};

void check_blocks(const char* where, const Case& c, const uint8_t* w, const float* x, const bonsai_parallel* par,
                  std::mt19937& rng);

void check_case(const char* isa, const Case& c, const bonsai_parallel* par) {
  const int64_t rb = bonsai::row_bytes(c.k);
  Unaligned<uint8_t> w(c.packed);
  Unaligned<float> x(c.x);
  Unaligned<int8_t> q(c.q);
  char where[128];
  snprintf(where, sizeof where, "%s M=%lld N=%lld K=%lld threads=%d", isa, (long long)c.m, (long long)c.n,
           (long long)c.k, par ? par->num_threads : 1);

  Unaligned<int32_t> acc(c.acc.size());
  CHECK(bonsai_int8_accumulate(q.ptr, c.m, c.k, w.ptr, rb, c.n, acc.ptr, par) == BONSAI_OK, "%s", where);
  CHECK(memcmp(acc.ptr, c.acc.data(), c.acc.size() * 4) == 0, "int8_accumulate mismatch, %s", where);

  Unaligned<float> y(size_t(c.m * c.n));
  CHECK(bonsai_ternary_linear(x.ptr, c.m, c.k, w.ptr, rb, c.scales.data(), c.n, 8, y.ptr, par) == BONSAI_OK, "%s",
        where);
  for (int64_t r = 0; r < c.m; ++r)
    for (int64_t o = 0; o < c.n; ++o) {
      const float want = (float(c.acc[size_t(r * c.n + o)]) * c.d[size_t(r)]) * c.scales[size_t(o)];
      const float got = y.ptr[r * c.n + o];
      CHECK(memcmp(&want, &got, 4) == 0, "act_bits=8 y[%lld,%lld] %.9g != %.9g, %s", (long long)r, (long long)o, got,
            want, where);
    }

  CHECK(bonsai_ternary_linear(x.ptr, c.m, c.k, w.ptr, rb, c.scales.data(), c.n, 0, y.ptr, par) == BONSAI_OK, "%s",
        where);
  for (int64_t r = 0; r < c.m; ++r)
    for (int64_t o = 0; o < c.n; ++o) {
      double want = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < c.k; ++i) {
        want += double(c.t[size_t(o * c.k + i)]) * c.x[size_t(r * c.k + i)];
        magnitude += fabs(double(c.x[size_t(r * c.k + i)]));
      }
      want *= c.scales[size_t(o)];
      const double tol = kFloatRelTol * (magnitude * c.scales[size_t(o)] + 1e-30);
      CHECK(fabs(y.ptr[r * c.n + o] - want) <= tol, "act_bits=0 y[%lld,%lld] %.9g vs %.9g, %s", (long long)r,
            (long long)o, y.ptr[r * c.n + o], want, where);
    }
  std::mt19937 rng(uint32_t(c.m * 131 + c.n * 7 + c.k));
  check_blocks(where, c, w.ptr, x.ptr, par, rng);
}

// ---- block scales (scale_layout 1): fp16 per 128-weight block ------------------------------------------------------

// An fp16's value computed independently of the kernels' widening: sign * significand * 2^exponent in double.
float f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, mant = h & 1023;
  const double v = e ? ldexp(1024 + mant, e - 25) : ldexp(mant, -24);
  return float(h & 0x8000 ? -v : v);
}

// Finite fp16 bit patterns of either sign: mostly ordinary exponents, some subnormals and zeros.
std::vector<uint16_t> block_scales(int64_t n, int64_t k, std::mt19937& rng) {
  std::vector<uint16_t> s;
  std::uniform_int_distribution<int> mant(0, 1023), exp(1, 30), kind(0, 9), sign(0, 1);
  for (int64_t i = 0; i < n * bonsai::num_blocks(k); ++i) {
    const int e = kind(rng) == 0 ? 0 : exp(rng);
    s.push_back(uint16_t((sign(rng) << 15) | (e << 10) | mant(rng)));
  }
  return s;
}

// FORMAT.md's stated order: z = z + float(acc_b) * s_b over blocks in order, then y = z * d, each rounded.
void check_blocks(const char* where, const Case& c, const uint8_t* w, const float* x, const bonsai_parallel* par,
                  std::mt19937& rng) {
  const int64_t rb = bonsai::row_bytes(c.k), nb = bonsai::num_blocks(c.k);
  const std::vector<uint16_t> scales = block_scales(c.n, c.k, rng);
  Unaligned<uint16_t> s(scales);
  Unaligned<float> y(size_t(c.m * c.n));
  CHECK(bonsai_ternary_linear_ex(x, c.m, c.k, w, rb, s.ptr, bonsai::kScaleBlock, c.n, 8, y.ptr, par) == BONSAI_OK,
        "%s: %s", where, bonsai_last_error());
  for (int64_t r = 0; r < c.m; ++r)
    for (int64_t o = 0; o < c.n; ++o) {
      float z = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t acc = 0;
        for (int64_t i = b * kBlockK; i < c.k && i < (b + 1) * kBlockK; ++i)
          acc += int32_t(c.q[size_t(r * c.k + i)]) * c.t[size_t(o * c.k + i)];
        volatile float product = float(acc) * f16_value(scales[size_t(o * nb + b)]);  // rounded, never fused
        z = z + product;
      }
      const float want = z * c.d[size_t(r)], got = y.ptr[r * c.n + o];
      CHECK(memcmp(&want, &got, 4) == 0, "block scales act_bits=8 y[%lld,%lld] %.9g != %.9g, %s", (long long)r,
            (long long)o, got, want, where);
    }
  const int64_t ids[2] = {c.n - 1, 0};  // the ternary embedding lookup of the same table: exact trit * scale
  Unaligned<float> rows(size_t(2 * c.k));
  CHECK(bonsai_ternary_gather(w, c.n, c.k, rb, s.ptr, bonsai::kScaleBlock, ids, 2, rows.ptr) == BONSAI_OK, "%s",
        where);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < c.k; ++j) {
      const float want = float(c.t[size_t(ids[i] * c.k + j)]) * f16_value(scales[size_t(ids[i] * nb + j / kBlockK)]);
      CHECK(memcmp(&want, &rows.ptr[i * c.k + j], 4) == 0, "gather row %lld col %lld, %s", (long long)ids[i],
            (long long)j, where);
    }
  CHECK(bonsai_ternary_linear_ex(x, c.m, c.k, w, rb, s.ptr, bonsai::kScaleBlock, c.n, 0, y.ptr, par) == BONSAI_OK,
        "%s", where);
  for (int64_t r = 0; r < c.m; ++r)
    for (int64_t o = 0; o < c.n; ++o) {
      double want = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < c.k; ++i) {
        const double wv = c.t[size_t(o * c.k + i)] * double(f16_value(scales[size_t(o * nb + i / kBlockK)]));
        want += wv * c.x[size_t(r * c.k + i)];
        magnitude += fabs(wv * c.x[size_t(r * c.k + i)]);
      }
      CHECK(fabs(y.ptr[r * c.n + o] - want) <= kFloatRelTol * magnitude + 1e-30,
            "block scales act_bits=0 y[%lld,%lld] %.9g vs %.9g, %s", (long long)r, (long long)o, y.ptr[r * c.n + o],
            want, where);
    }
}

// ---- dense head: independent oracle in double over the decoded weights -------------------------------------------

float bf16_round(float v, uint16_t* bits) {  // the bf16 nearest to v (ties to even), and its raw bits
  uint32_t u;
  memcpy(&u, &v, 4);
  u += 0x7fff + ((u >> 16) & 1);
  *bits = uint16_t(u >> 16);
  const uint32_t back = uint32_t(*bits) << 16;
  float f;
  memcpy(&f, &back, 4);
  return f;
}

// act_bits 8: the oracle sees the activations as the kernels quantize them (kernels.h), dequantized in double.
std::vector<double> dense_activations(const std::vector<float>& x, int64_t m, int64_t k, int32_t act_bits) {
  std::vector<double> xd(x.begin(), x.end());
  if (act_bits == 0) return xd;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g0 = 0; g0 < k; g0 += BONSAI_DENSE_GROUP) {
      const int64_t g1 = g0 + BONSAI_DENSE_GROUP < k ? g0 + BONSAI_DENSE_GROUP : k;
      float amax = 0.0f;
      for (int64_t i = g0; i < g1; ++i) amax = fmaxf(amax, fabsf(x[size_t(r * k + i)]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, d = amax / 127.0f;
      for (int64_t i = g0; i < g1; ++i)
        xd[size_t(r * k + i)] = double(fminf(fmaxf(nearbyintf(x[size_t(r * k + i)] * inv), -127.0f), 127.0f)) * d;
    }
  return xd;
}

void check_dense(int32_t bits, int64_t m, int64_t n, int64_t k, const bonsai_parallel* par, std::mt19937& rng,
                 const char* isa, int32_t act_bits = 0) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> nibble(0, 15), byte(-128, 127);
  const int64_t groups = (k + BONSAI_DENSE_GROUP - 1) / BONSAI_DENSE_GROUP;
  const int64_t rb = bits == 16 ? 2 * k : bits == 8 ? k : groups * (BONSAI_DENSE_GROUP / 2);
  std::vector<uint8_t> w(size_t(n * rb), 0);
  std::vector<double> wf(size_t(n * k));  // decoded weight: code * scale (+ offset)
  // bf16: one float32 scale per row; int8: one bf16 scale (raw bits) per group; int4: (scale, offset) per group.
  const int64_t per_group = bits == 4 ? 2 : 1;
  std::vector<float> scales(size_t(bits == 16 ? n : n * groups * per_group));
  std::vector<uint16_t> scale_bits(scales.size());
  for (size_t i = 0; i < scales.size(); ++i) {
    scales[i] = (bits == 4 && i % 2) ? -2.0f * fabsf(normal(rng)) : 0.01f + fabsf(normal(rng));
    if (bits != 16) scales[i] = bf16_round(scales[i], &scale_bits[i]);
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      double v;
      if (bits == 16) {
        uint16_t b;
        v = bf16_round(normal(rng), &b);
        memcpy(&w[size_t(r * rb + 2 * c)], &b, 2);
      } else if (bits == 8) {
        const int q = byte(rng);
        w[size_t(r * rb + c)] = uint8_t(int8_t(q));
        v = q;
      } else {
        const int q = nibble(rng), j = int(c % BONSAI_DENSE_GROUP);  // low nibbles: the group's first 16 codes
        w[size_t(r * rb + c / BONSAI_DENSE_GROUP * (BONSAI_DENSE_GROUP / 2) + j % (BONSAI_DENSE_GROUP / 2))] |=
            uint8_t(q << (j < BONSAI_DENSE_GROUP / 2 ? 0 : 4));
        v = q;
      }
      const size_t si = size_t(bits == 16 ? r : (r * groups + c / BONSAI_DENSE_GROUP) * per_group);
      wf[size_t(r * k + c)] = v * scales[si] + (bits == 4 ? double(scales[si + 1]) : 0.0);
    }
  if (bits == 4)  // garbage (code 15) in the padding codes of the last group must be ignored
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = k; c < groups * BONSAI_DENSE_GROUP; ++c) {
        const int64_t j = c % BONSAI_DENSE_GROUP;
        w[size_t(r * rb + c / BONSAI_DENSE_GROUP * (BONSAI_DENSE_GROUP / 2) + j % (BONSAI_DENSE_GROUP / 2))] |=
            uint8_t(15 << (j < BONSAI_DENSE_GROUP / 2 ? 0 : 4));
      }
  std::vector<float> xv(size_t(m * k));
  for (float& v : xv) v = normal(rng);
  Unaligned<uint8_t> wu(w);
  Unaligned<float> xu(xv), y(size_t(m * n));
  char where[160];
  snprintf(where, sizeof where, "dense %s bits=%d act_bits=%d M=%lld N=%lld K=%lld threads=%d", isa, bits, act_bits,
           (long long)m, (long long)n, (long long)k, par ? par->num_threads : 1);
  const void* sp = bits == 16 ? static_cast<const void*>(scales.data()) : scale_bits.data();
  CHECK(bonsai_dense_linear(xu.ptr, m, k, wu.ptr, bits, sp, n, act_bits, y.ptr, par) == BONSAI_OK, "%s: %s", where,
        bonsai_last_error());
  const std::vector<double> xa = dense_activations(xv, m, k, act_bits);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t o = 0; o < n; ++o) {
      double want = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        want += wf[size_t(o * k + i)] * xa[size_t(r * k + i)];
        magnitude += fabs(wf[size_t(o * k + i)] * xa[size_t(r * k + i)]);
        if (bits == 4) {  // the kernels sum code * scale and offset * x apart: both terms' magnitudes count
          const size_t si = size_t((o * groups + i / BONSAI_DENSE_GROUP) * 2);
          magnitude += fabs(double(scales[si + 1]) * xa[size_t(r * k + i)]);
        }
      }
      const double got = y.ptr[r * n + o];
      CHECK(fabs(got - want) <= kFloatRelTol * magnitude + 1e-30, "y[%lld,%lld] %.9g vs %.9g, %s", (long long)r,
            (long long)o, got, want, where);
    }
}

// ---- attention: oracle in double ---------------------------------------------------------------------------------

void check_attention(int64_t t, int64_t h, int64_t hkv, int64_t d, int64_t pos, const bonsai_parallel* par,
                     std::mt19937& rng, const char* isa) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t s = pos + t + 3;  // a few unwritten positions past the prefix, filled with NaN: must stay unread
  std::vector<float> q(size_t(t * h * d)), kc(size_t(hkv * s * d)), vc(size_t(hkv * s * d));
  for (float& v : q) v = 2.0f * normal(rng);
  for (int64_t g = 0; g < hkv; ++g)
    for (int64_t j = 0; j < s; ++j)
      for (int64_t i = 0; i < d; ++i) {
        const size_t at = size_t((g * s + j) * d + i);
        kc[at] = j < pos + t ? normal(rng) : NAN;
        vc[at] = j < pos + t ? normal(rng) : NAN;
      }
  Unaligned<float> qu(q), ku(kc), vu(vc), out(q.size());
  char where[160];
  snprintf(where, sizeof where, "attention %s T=%lld H=%lld Hkv=%lld D=%lld pos=%lld threads=%d", isa,
           (long long)t, (long long)h, (long long)hkv, (long long)d, (long long)pos, par ? par->num_threads : 1);
  CHECK(bonsai_attention(qu.ptr, t, h, d, ku.ptr, vu.ptr, hkv, s, pos, out.ptr, par) == BONSAI_OK, "%s: %s", where,
        bonsai_last_error());
  std::vector<double> p;
  for (int64_t tok = 0; tok < t; ++tok)
    for (int64_t head = 0; head < h; ++head) {
      const int64_t g = head / (h / hkv), n_ctx = pos + tok + 1;
      const float* qv = &q[size_t((tok * h + head) * d)];
      p.assign(size_t(n_ctx), 0.0);
      double mx = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j < n_ctx; ++j) {
        for (int64_t i = 0; i < d; ++i) p[size_t(j)] += double(qv[i]) * kc[size_t((g * s + j) * d + i)];
        p[size_t(j)] /= sqrt(double(d));
        mx = fmax(mx, p[size_t(j)]);
      }
      for (double& v : p) sum += v = exp(v - mx);
      for (int64_t i = 0; i < d; ++i) {
        double want = 0.0;
        for (int64_t j = 0; j < n_ctx; ++j) want += p[size_t(j)] / sum * vc[size_t((g * s + j) * d + i)];
        const float got = out.ptr[(tok * h + head) * d + i];
        CHECK(fabs(got - want) <= 2e-5 * 5.0, "out[%lld,%lld,%lld] %.9g vs %.9g, %s", (long long)tok,
              (long long)head, (long long)i, got, want, where);
      }
    }
}

// fp16 caches (bonsai_attention_f16) against float32 caches holding the same values: equal bit for bit, as the
// kernels widen each fp16 exactly and then compute alike. Values of either sign across 2^-9..2^3, some subnormal
// and zero; the unwritten positions are fp16 NaN.
void check_attention_f16(int64_t t, int64_t h, int64_t hkv, int64_t d, int64_t pos, const bonsai_parallel* par,
                         std::mt19937& rng, const char* isa) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> mant(0, 1023), exp(6, 18), kind(0, 15), sign(0, 1);
  const int64_t s = pos + t + 3;
  std::vector<float> q(size_t(t * h * d)), kf(size_t(hkv * s * d)), vf(kf.size());
  std::vector<uint16_t> kh(kf.size()), vh(kf.size());
  for (float& v : q) v = 2.0f * normal(rng);
  for (size_t i = 0; i < kf.size(); ++i) {
    const bool written = int64_t(i / size_t(d)) % s < pos + t;
    for (auto [half, wide] : {std::pair{&kh[i], &kf[i]}, std::pair{&vh[i], &vf[i]}}) {
      const int e = kind(rng) == 0 ? 0 : exp(rng);
      *half = written ? uint16_t((sign(rng) << 15) | (e << 10) | mant(rng)) : uint16_t(0x7e00);
      *wide = written ? f16_value(*half) : NAN;
    }
  }
  Unaligned<float> qu(q), ku(kf), vu(vf), want(q.size()), got(q.size());
  Unaligned<uint16_t> khu(kh), vhu(vh);
  char where[160];
  snprintf(where, sizeof where, "attention_f16 %s T=%lld H=%lld Hkv=%lld D=%lld pos=%lld threads=%d", isa,
           (long long)t, (long long)h, (long long)hkv, (long long)d, (long long)pos, par ? par->num_threads : 1);
  CHECK(bonsai_attention(qu.ptr, t, h, d, ku.ptr, vu.ptr, hkv, s, pos, want.ptr, par) == BONSAI_OK, "%s: %s", where,
        bonsai_last_error());
  CHECK(bonsai_attention_f16(qu.ptr, t, h, d, khu.ptr, vhu.ptr, hkv, s, pos, got.ptr, par) == BONSAI_OK, "%s: %s",
        where, bonsai_last_error());
  for (size_t i = 0; i < q.size(); ++i)
    CHECK(memcmp(&got.ptr[i], &want.ptr[i], sizeof(float)) == 0, "out[%zu] %.9g vs float32 caches %.9g, %s", i,
          got.ptr[i], want.ptr[i], where);
}

void run_float_kernels(const char* isa, bonsai_parallel* pools, std::mt19937& rng) {
  const int64_t tokens[] = {1, 2, 5, 7};
  const int64_t rows[] = {1, 3, 7, 33};
  const int64_t depths[] = {1, 15, 31, 32, 33, 100};
  for (int32_t bits : {16, 8, 4})
    for (int64_t m : tokens)
      for (int64_t n : rows)
        for (int64_t k : depths) check_dense(bits, m, n, k, m == 2 ? &pools[1] : nullptr, rng, isa);
  for (int32_t bits : {16, 8, 4}) {
    check_dense(bits, 1, 301, 1536, &pools[1], rng, isa);  // Bonsai's K, decode, a real split
    check_dense(bits, 64, 70, 95, &pools[1], rng, isa);    // prefill tiles with leftovers
    check_dense(bits, 1, 37, 600, &pools[1], rng, isa);    // int4's offset term: a whole step of pairs and a tail
  }
  for (int32_t bits : {8, 4}) {  // int8 activations: partial groups, tiles and leftovers, batches of 8 scales
    for (int64_t m : tokens)
      for (int64_t n : rows)
        for (int64_t k : depths) check_dense(bits, m, n, k, m == 2 ? &pools[1] : nullptr, rng, isa, 8);
    check_dense(bits, 1, 301, 1536, &pools[1], rng, isa, 8);
    check_dense(bits, 3, 37, 600, &pools[1], rng, isa, 8);
  }
  for (int64_t d : {1, 7, 16, 33, 96})
    for (int64_t t : {1, 3})
      check_attention(t, 4, 2, d, t == 1 ? 40 : 5, t == 3 ? &pools[1] : nullptr, rng, isa);
  check_attention(1, 16, 8, 96, 300, &pools[1], rng, isa);  // Bonsai's heads
  check_attention(2, 3, 3, 8, 0, nullptr, rng, isa);         // no GQA, first position
  for (int64_t d : {1, 7, 16, 33, 128})
    for (int64_t t : {1, 3})
      check_attention_f16(t, 4, 2, d, t == 1 ? 40 : 5, t == 3 ? &pools[1] : nullptr, rng, isa);
  check_attention_f16(1, 16, 8, 128, 300, &pools[1], rng, isa);  // Ternary-Bonsai's heads
  check_attention_f16(2, 3, 3, 8, 0, nullptr, rng, isa);
}

int run_isa(const char* isa, bonsai_parallel* pools, std::mt19937& rng) {
  if (bonsai_set_isa(isa) != BONSAI_OK) return 0;
  CHECK(strcmp(bonsai_isa_name(), isa) == 0, "set_isa(%s) left %s", isa, bonsai_isa_name());
  int cases = 0;
  for (int64_t m : kTokens)
    for (int64_t n : kRows)
      for (int64_t k : kDepths) {
        const Case c = make_case(m, n, k, rng);
        for (size_t p = 0; p < sizeof(kThreadCounts) / sizeof(kThreadCounts[0]); ++p)
          check_case(isa, c, kThreadCounts[p] > 1 ? &pools[p] : nullptr);
        ++cases;
      }
  // One prefill-sized case with Bonsai's K: full GEMM tiles and a real thread split.
  check_case(isa, make_case(64, 70, 1536, rng), &pools[1]);
  // Long rows: past the AVX-512 GEMV's flush interval (256 blocks) with an odd block count (258).
  check_case(isa, make_case(1, 5, kLongK, rng), nullptr);
  // More tokens than a GEMM call sums at once (256), with leftover tokens and rows.
  check_case(isa, make_case(263, 7, 200, rng), &pools[1]);
  // Block-scale 4-row tiles that take 8 blocks at a time: whole groups (8, 16 blocks), a partial last group (9, 17),
  // decode and a GEMM's leftover tokens, leftover rows.
  for (int64_t m : {1, 3})
    for (int64_t k : {8 * bonsai::kBlockK, 8 * bonsai::kBlockK + 76, 16 * bonsai::kBlockK, 16 * bonsai::kBlockK + 1})
      check_case(isa, make_case(m, 9, k, rng), m == 3 ? &pools[1] : nullptr);
  run_float_kernels(isa, pools, rng);
  return cases + 10;
}

void check_invalid_arguments() {
  const int64_t k = 130, rb = bonsai::row_bytes(k);
  std::vector<float> x(2 * k, 1.0f), s(3, 1.0f), y(6);
  std::vector<uint8_t> w(size_t(3 * rb), 0x55);
  std::vector<int8_t> q(2 * k, 1);
  std::vector<int32_t> acc(6);
  struct Bad {
    const char* what;
    int got, want;
  } cases[] = {
      {"null x", bonsai_ternary_linear(nullptr, 2, k, w.data(), rb, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_NULL},
      {"null w", bonsai_ternary_linear(x.data(), 2, k, nullptr, rb, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_NULL},
      {"null scales", bonsai_ternary_linear(x.data(), 2, k, w.data(), rb, nullptr, 3, 8, y.data(), nullptr), BONSAI_ERR_NULL},
      {"null y", bonsai_ternary_linear(x.data(), 2, k, w.data(), rb, s.data(), 3, 0, nullptr, nullptr), BONSAI_ERR_NULL},
      {"M=0", bonsai_ternary_linear(x.data(), 0, k, w.data(), rb, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"N<0", bonsai_ternary_linear(x.data(), 2, k, w.data(), rb, s.data(), -3, 8, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"K=0", bonsai_ternary_linear(x.data(), 2, 0, w.data(), 0, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"row bytes", bonsai_ternary_linear(x.data(), 2, k, w.data(), rb - 32, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"act_bits=4", bonsai_ternary_linear(x.data(), 2, k, w.data(), rb, s.data(), 3, 4, y.data(), nullptr), BONSAI_ERR_ACT_BITS},
      {"acc null q", bonsai_int8_accumulate(nullptr, 2, k, w.data(), rb, 3, acc.data(), nullptr), BONSAI_ERR_NULL},
      {"acc row bytes", bonsai_int8_accumulate(q.data(), 2, k, w.data(), rb + 1, 3, acc.data(), nullptr), BONSAI_ERR_SHAPE},
      {"acc N=0", bonsai_int8_accumulate(q.data(), 2, k, w.data(), rb, 0, acc.data(), nullptr), BONSAI_ERR_SHAPE},
      {"quantize K=0", bonsai_quantize_activations(x.data(), 2, 0, q.data(), y.data()), BONSAI_ERR_SHAPE},
      {"unknown isa", bonsai_set_isa("sse9"), BONSAI_ERR_ISA},
      {"dense null x", bonsai_dense_linear(nullptr, 2, k, w.data(), 8, s.data(), 3, 0, y.data(), nullptr), BONSAI_ERR_NULL},
      {"dense null w", bonsai_dense_linear(x.data(), 2, k, nullptr, 8, s.data(), 3, 0, y.data(), nullptr), BONSAI_ERR_NULL},
      {"dense K=0", bonsai_dense_linear(x.data(), 2, 0, w.data(), 8, s.data(), 3, 0, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"dense N=0", bonsai_dense_linear(x.data(), 2, 4, w.data(), 8, s.data(), 0, 0, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"dense bits=2", bonsai_dense_linear(x.data(), 2, 4, w.data(), 2, s.data(), 3, 0, y.data(), nullptr), BONSAI_ERR_ACT_BITS},
      {"dense act_bits=4", bonsai_dense_linear(x.data(), 2, 4, w.data(), 8, s.data(), 3, 4, y.data(), nullptr), BONSAI_ERR_ACT_BITS},
      {"dense bf16 act_bits=8", bonsai_dense_linear(x.data(), 2, 4, w.data(), 16, s.data(), 3, 8, y.data(), nullptr), BONSAI_ERR_ACT_BITS},
      {"attn null q", bonsai_attention(nullptr, 1, 2, 4, x.data(), x.data(), 1, 8, 0, y.data(), nullptr), BONSAI_ERR_NULL},
      {"attn H%Hkv", bonsai_attention(x.data(), 1, 3, 4, x.data(), x.data(), 2, 8, 0, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"attn pos", bonsai_attention(x.data(), 2, 2, 4, x.data(), x.data(), 1, 8, 7, y.data(), nullptr), BONSAI_ERR_SHAPE},
      {"attn pos<0", bonsai_attention(x.data(), 1, 2, 4, x.data(), x.data(), 1, 8, -1, y.data(), nullptr), BONSAI_ERR_SHAPE},
      // pos + T past INT64_MAX used to wrap negative, pass the range check and read far outside the caches.
      {"attn pos wraps", bonsai_attention(x.data(), 2, 2, 4, x.data(), x.data(), 1, 8, INT64_MAX - 1, y.data(), nullptr),
       BONSAI_ERR_SHAPE},
      {"attn pos max", bonsai_attention(x.data(), 1, 2, 4, x.data(), x.data(), 1, 8, INT64_MAX, y.data(), nullptr),
       BONSAI_ERR_SHAPE},
      {"attn T*H*D overflow", bonsai_attention(x.data(), int64_t(1) << 31, int64_t(1) << 31, int64_t(1) << 31,
                                               x.data(), x.data(), 1, int64_t(1) << 31, 0, y.data(), nullptr),
       BONSAI_ERR_SHAPE},
      {"dense K huge", bonsai_dense_linear(x.data(), 2, INT64_MAX, w.data(), 4, s.data(), 3, 0, y.data(), nullptr),
       BONSAI_ERR_SHAPE},
      {"pool threads=0", bonsai_threadpool_create(0) == nullptr ? BONSAI_ERR_SHAPE : BONSAI_OK, BONSAI_ERR_SHAPE},
  };
  for (const Bad& b : cases) {
    CHECK(b.got == b.want, "%s: status %d, expected %d", b.what, b.got, b.want);
  }
  bonsai_ternary_linear(x.data(), 2, k, w.data(), rb - 32, s.data(), 3, 8, y.data(), nullptr);
  CHECK(strstr(bonsai_last_error(), "row bytes") != nullptr, "message: %s", bonsai_last_error());
  CHECK(bonsai_row_bytes(0) == -1 && bonsai_row_bytes(129) == 64, "row_bytes");
  CHECK(bonsai_row_bytes(INT64_MAX) == -1 && bonsai_row_bytes(BONSAI_MAX_K + 1) == -1, "row_bytes of a huge K");
}

// A tensor description for the bonsai_check_* validators; dims live in the object.
struct Desc {
  int64_t dims[BONSAI_MAX_RANK + 1];
  bonsai_tensor t;
  Desc(int32_t dtype, std::initializer_list<int64_t> shape) : dims{}, t{dtype, int32_t(shape.size()), dims} {
    int i = 0;
    for (int64_t d : shape) dims[i++] = d;
  }
};

// Malformed tensors as a runtime binding hands them over: each is refused with its status and a message naming
// the problem, before any data is touched (the validators never see data; ASan/UBSan catch any overflow).
void check_tensor_validation() {
  constexpr int32_t F = BONSAI_DTYPE_F32, U8 = BONSAI_DTYPE_U8, I8 = BONSAI_DTYPE_I8, BF = BONSAI_DTYPE_BF16,
                    H = BONSAI_DTYPE_F16;
  const int64_t big = int64_t(1) << 40;
  struct Linear {
    const char* what;
    bool dense;
    Desc x, w, s;
    int64_t k, bits;
    int want;
    const char* message;
  } cases[] = {
      {"ok", false, {F, {2, 3, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 8, BONSAI_OK, ""},
      {"empty x", false, {F, {0, big, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_OK, ""},
      {"x rank 0", false, {F, {}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "must end in in_features=130"},
      {"x rank 9", false, {F, {1, 1, 1, 1, 1, 1, 1, 1, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "rank 9"},
      {"x rows overflow", false, {F, {big, big, big, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "rows"},
      {"x negative", false, {F, {-1, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "negative"},
      {"x f64", false, {BONSAI_DTYPE_OTHER, {2, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "x must be float32"},
      {"packed i8", false, {F, {2, 130}}, {I8, {5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "packed must be uint8"},
      {"packed rank 3", false, {F, {2, 130}}, {U8, {1, 5, 64}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "got rank 3"},
      {"packed bytes", false, {F, {2, 130}}, {U8, {5, 32}}, {F, {5}}, 130, 0, BONSAI_ERR_SHAPE, "do not fit K=130"},
      {"scales len", false, {F, {2, 130}}, {U8, {5, 64}}, {F, {4}}, 130, 0, BONSAI_ERR_SHAPE, "do not fit K=130"},
      {"N=0", false, {F, {2, 130}}, {U8, {0, 64}}, {F, {0}}, 130, 0, BONSAI_ERR_SHAPE, "rows (N)"},
      {"K max", false, {F, {2, INT64_MAX}}, {U8, {5, 64}}, {F, {5}}, INT64_MAX, 0, BONSAI_ERR_SHAPE, "in_features must be"},
      {"K min", false, {F, {2, 130}}, {U8, {5, 64}}, {F, {5}}, INT64_MIN, 0, BONSAI_ERR_SHAPE, "in_features must be"},
      {"act_bits", false, {F, {2, 130}}, {U8, {5, 64}}, {F, {5}}, 130, 4, BONSAI_ERR_ACT_BITS, "act_bits must be 0 or 8"},
      {"dense ok 4", true, {F, {2, 70}}, {U8, {5, 48}}, {BF, {5, 3, 2}}, 70, 4, BONSAI_OK, ""},
      {"dense int4 pairs", true, {F, {2, 70}}, {U8, {5, 48}}, {BF, {5, 3, 1}}, 70, 4, BONSAI_ERR_SHAPE, "do not fit K=70"},
      {"dense ok 8", true, {F, {2, 70}}, {I8, {5, 70}}, {BF, {5, 3}}, 70, 8, BONSAI_OK, ""},
      {"dense f32 group scales", true, {F, {2, 70}}, {I8, {5, 70}}, {F, {5, 3}}, 70, 8, BONSAI_ERR_SHAPE,
       "scales must be bfloat16"},
      {"dense ok 16", true, {F, {2, 70}}, {BF, {5, 70}}, {F, {5}}, 70, 16, BONSAI_OK, ""},
      {"dense dtype", true, {F, {2, 70}}, {I8, {5, 70}}, {F, {5}}, 70, 16, BONSAI_ERR_SHAPE, "does not fit the weight's dtype"},
      {"dense bits", true, {F, {2, 70}}, {I8, {5, 70}}, {F, {5}}, 70, 2, BONSAI_ERR_ACT_BITS, "weight_bits must be"},
      {"dense groups", true, {F, {2, 70}}, {U8, {5, 48}}, {BF, {5, 2, 2}}, 70, 4, BONSAI_ERR_SHAPE, "do not fit K=70"},
      {"dense scales rank", true, {F, {2, 70}}, {U8, {5, 48}}, {F, {15}}, 70, 4, BONSAI_ERR_SHAPE, "scales must be"},
      {"dense K huge", true, {F, {0, INT64_MAX}}, {U8, {5, 48}}, {BF, {5, 3, 2}}, INT64_MAX, 4, BONSAI_ERR_SHAPE, "in_features"},
  };
  for (const Linear& c : cases) {
    int64_t m = -1, n = -1;
    const int got = c.dense ? bonsai_check_dense_linear("op", &c.x.t, &c.w.t, &c.s.t, c.k, c.bits, 0, &m, &n)
                            : bonsai_check_ternary_linear("op", &c.x.t, &c.w.t, &c.s.t, c.k, c.bits, &m, &n);
    CHECK(got == c.want && strstr(bonsai_last_error(), c.message), "%s: status %d, message %s", c.what, got,
          bonsai_last_error());
    if (got == BONSAI_OK) CHECK(n == 5 && m == (c.x.dims[0] ? c.x.dims[0] * (c.x.t.rank > 2 ? c.x.dims[1] : 1) : 0),
                                "%s: m=%lld n=%lld", c.what, (long long)m, (long long)n);
  }
  struct Attn {
    const char* what;
    Desc q, k, v, pos;
    int want;
    const char* message;
  } attn[] = {
      {"ok", {F, {1, 2, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_OK, ""},
      {"q rank", {F, {2, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE, "got rank 3"},
      {"v shape", {F, {1, 2, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 7, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE, "disagree"},
      {"heads", {F, {1, 2, 3, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE, "multiple"},
      {"T=0", {F, {1, 0, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE, "need T"},
      {"pos f32", {F, {1, 2, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {F, {1}}, BONSAI_ERR_SHAPE, "input_pos must be int64"},
      {"pos two", {F, {1, 2, 4, 8}}, {F, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {big, big}}, BONSAI_ERR_SHAPE,
       "exactly one"},
      {"f16 caches", {F, {1, 2, 4, 8}}, {H, {1, 2, 6, 8}}, {H, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_OK, ""},
      {"mixed caches", {F, {1, 2, 4, 8}}, {H, {1, 2, 6, 8}}, {F, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE,
       "v_cache must be float16 [1, Hkv, S, D] (the type of k_cache), got float32"},
      {"bf16 caches", {F, {1, 2, 4, 8}}, {BF, {1, 2, 6, 8}}, {BF, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE,
       "k_cache must be float32 [1, Hkv, S, D] (or float16), got bfloat16"},
      {"f16 q", {H, {1, 2, 4, 8}}, {H, {1, 2, 6, 8}}, {H, {1, 2, 6, 8}}, {BONSAI_DTYPE_I64, {1}}, BONSAI_ERR_SHAPE,
       "q must be float32"},
  };
  for (const Attn& c : attn) {
    const int got = bonsai_check_attention("op", &c.q.t, &c.k.t, &c.v.t, &c.pos.t);
    CHECK(got == c.want && strstr(bonsai_last_error(), c.message), "attention %s: status %d, message %s", c.what, got,
          bonsai_last_error());
  }
  CHECK(bonsai_check_ternary_linear("op", nullptr, nullptr, nullptr, 130, 0, nullptr, nullptr) == BONSAI_ERR_NULL,
        "null outputs");
}

}  // namespace

// bonsai_cache_update(_f16): rows [T, Hkv, D] land at positions [pos, pos + T) of each head's cache, after the
// past's [0, pos) (copied when the cache is another buffer, left alone when it is the past itself).
template <class E, class Update>
void check_cache_update(const char* what, Update update) {
  const int64_t t = 2, hkv = 3, d = 5, past_len = 4, cache_len = 7, pos = 3;
  std::vector<E> rows(size_t(t * hkv * d)), past(size_t(hkv * past_len * d)), cache(size_t(hkv * cache_len * d));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = E(1000 + i);
  for (size_t i = 0; i < past.size(); ++i) past[i] = E(i);
  CHECK(update(rows.data(), t, hkv, d, past.data(), past_len, cache.data(), cache_len, pos) == BONSAI_OK, "%s: %s",
        what, bonsai_last_error());
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t j = 0; j < pos + t; ++j)
      for (int64_t i = 0; i < d; ++i) {
        const E want = j < pos ? past[size_t((h * past_len + j) * d + i)] : rows[size_t(((j - pos) * hkv + h) * d + i)];
        CHECK(cache[size_t((h * cache_len + j) * d + i)] == want, "%s: head %lld position %lld", what, (long long)h,
              (long long)j);
      }
  CHECK(update(rows.data(), t, hkv, d, past.data(), past_len, cache.data(), cache_len, past_len + 1) ==
            BONSAI_ERR_SHAPE && strstr(bonsai_last_error(), what),
        "%s: a position past the past: %s", what, bonsai_last_error());
  CHECK(update(nullptr, t, hkv, d, past.data(), past_len, cache.data(), cache_len, pos) == BONSAI_ERR_NULL,
        "%s: null rows", what);
}

int main(int argc, char** argv) {
  const char* expect = nullptr;
  for (int i = 1; i + 1 < argc; ++i)
    if (strcmp(argv[i], "--expect-isa") == 0) expect = argv[i + 1];
  const std::string picked = bonsai_isa_name();
  printf("auto isa: %s\n", picked.c_str());
  if (expect) CHECK(picked == expect, "auto picked %s, expected %s", picked.c_str(), expect);

  bonsai_threadpool* pool = bonsai_threadpool_create(kThreadCounts[1]);
  bonsai_parallel pools[2] = {{}, bonsai_threadpool_parallel(pool)};
  std::mt19937 rng(1234);
  // Every table of the core's one registry (bonsai_isa_names: "avx512,avx2,dotprod,neon,ref").
  std::string names = bonsai_isa_names();
  CHECK(names == "avx512,avx2,dotprod,neon,ref", "registry names %s", names.c_str());
  for (size_t start = 0; start <= names.size();) {
    const size_t end = names.find(',', start) == std::string::npos ? names.size() : names.find(',', start);
    const std::string isa = names.substr(start, end - start);
    const int cases = run_isa(isa.c_str(), pools, rng);
    if (cases) printf("isa %s: %d shapes checked\n", isa.c_str(), cases);
    else printf("isa %s: not supported here\n", isa.c_str());
    start = end + 1;
  }
  CHECK(bonsai_set_isa("auto") == BONSAI_OK && picked == bonsai_isa_name(), "auto is stable");
  check_invalid_arguments();
  check_cache_update<float>("bonsai_cache_update", bonsai_cache_update);
  check_cache_update<uint16_t>("bonsai_cache_update_f16", bonsai_cache_update_f16);
  check_tensor_validation();
  printf("tensor validation checked\n");
  bonsai_threadpool_destroy(pool);
  printf("%s (%d failures)\n", g_failures ? "FAILED" : "OK", g_failures);
  return g_failures ? 1 : 0;
}
