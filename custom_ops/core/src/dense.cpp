// Quantized dense linear for the output head (and any non-ternary linear): weights in bf16, int8 codes with one
// bf16 scale per group of 32 along K, or int4 codes with a bf16 scale and offset per group (docs/FORMAT.md,
// "Dense weights"); fp32 activations, or (act_bits 8, integer weights only) int8 activations per group.
// Float activations make the result depend only on float summation order, never on an activation quantizer, so
// every runtime agrees with the eager model to float rounding; int8 ones trade that for exact integer group sums
// (llama.cpp's Q8_0 dot products), which decode faster.
//
// Layout like the ternary kernels: this file holds the C entry point (validation, zero-padding x to whole chunks
// of 32, the activations' group quantization, the split of N over threads, per-task scratch) and the scalar
// reference kernels of table "ref"; the SIMD kernels (KernelTable::dense_f32, dense_i8) are float_kernels.h and
// dense_i8_kernels.h instantiated per ISA. Decode (M = 1) streams each row once with per-row accumulators;
// prefill (M > 1) widens a block of rows to scaled fp32 once and reuses it for every token (the weights are read
// from memory once per call, not once per token); with int8 activations each 4-row tile serves every token.
#include <string.h>

#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "bonsai/kernels.h"
#include "kernel_table.h"
#include "status.h"
#include "work_split.h"

namespace bonsai {
namespace {

constexpr int kRefLanes = 16;  // independent partial sums: lets the compiler vectorize without reassociation flags


// Weight (row n, column k) widened to float, for one row's pointer.
template <int Bits>
inline float weight_at(const uint8_t* row, int64_t k) {
  if constexpr (Bits == 16) {
    uint16_t v;
    memcpy(&v, row + 2 * k, 2);
    return bf16_to_f32(v);
  } else if constexpr (Bits == 8) {
    return float(int8_t(row[k]));
  } else {
    const int64_t j = k % kDenseChunk;  // byte j % 16 of the group: low nibble for j < 16, high for the rest
    const uint8_t b = row[k / kDenseChunk * (kDenseChunk / 2) + j % (kDenseChunk / 2)];
    return float(j < kDenseChunk / 2 ? b & 15 : b >> 4);
  }
}

// sum_{k in [k0, k1)} w[k] * x[k]
template <int Bits>
float dot_range(const uint8_t* row, const float* x, int64_t k0, int64_t k1) {
  float part[kRefLanes] = {};
  int64_t k = k0;
  for (; k + kRefLanes <= k1; k += kRefLanes)
    for (int l = 0; l < kRefLanes; ++l) part[l] += weight_at<Bits>(row, k + l) * x[k + l];
  float acc = 0.f;
  for (; k < k1; ++k) acc += weight_at<Bits>(row, k) * x[k];
  for (int l = 0; l < kRefLanes; ++l) acc += part[l];
  return acc;
}

// Group-wise formats: each group's partial sum times its scale (plus, int4, its offset times the sum of x over
// the group); bf16: one sum times the row's scale.
template <int Bits>
void dense_rows_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.w_stride;
    for (int64_t m = m0; m < m1; ++m) {
      const float* x = p.x + m * p.x_stride;
      float y;
      if constexpr (Bits == 16) {
        y = dot_range<16>(row, x, 0, p.k) * p.scale<16>(n, 0);
      } else {
        y = 0.f;
        for (int64_t g = 0; g < p.groups; ++g) {
          const int64_t k0 = g * kDenseChunk, k1 = k0 + kDenseChunk < p.k ? k0 + kDenseChunk : p.k;
          y += p.scale<Bits>(n, g) * dot_range<Bits>(row, x, k0, k1);
          if constexpr (Bits == 4) {  // the offset times the group's sum of x
            float sum = 0.f;
            for (int64_t k = k0; k < k1; ++k) sum += x[k];
            y += p.offset(n, g) * sum;
          }
        }
      }
      p.y[m * p.y_stride + n] = y;
    }
  }
}

// int8 activations: each group's exact int32 sum times s * d_g, added in group order (int4: then o * d_g * the
// group's sum of xq, from group_sums).
template <int Bits>
void dense_rows_i8_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.w_stride;
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* q = p.xq + m * p.x_stride;
      const float* d = p.xd + m * p.groups;
      float y = 0.f;
      for (int64_t g = 0; g < p.groups; ++g) {
        const int64_t k0 = g * kDenseChunk, k1 = k0 + kDenseChunk < p.k ? k0 + kDenseChunk : p.k;
        int32_t sum = 0;
        for (int64_t k = k0; k < k1; ++k) sum += int32_t(weight_at<Bits>(row, k)) * q[k];
        y += float(sum) * (p.scale<Bits>(n, g) * d[g]);
        if constexpr (Bits == 4) y += p.offset(n, g) * p.group_sums[(m * p.groups + g) * 2 + 1];
      }
      p.y[m * p.y_stride + n] = y;
    }
  }
}

}  // namespace

// The reference kernels (table "ref"): scalar, K order within 16 interleaved partial sums; int8 activations in
// group order.
void dense_f32_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* /*scratch*/) {
  if (p.bits == 16) dense_rows_ref<16>(p, m0, m1, n0, n1);
  else if (p.bits == 8) dense_rows_ref<8>(p, m0, m1, n0, n1);
  else dense_rows_ref<4>(p, m0, m1, n0, n1);
}

void dense_i8_ref(const DenseProblem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.bits == 8) dense_rows_i8_ref<8>(p, m0, m1, n0, n1);
  else dense_rows_i8_ref<4>(p, m0, m1, n0, n1);
}

namespace {

// Least weight bytes x tokens worth a task of its own (work_split.h).
constexpr int64_t kMinTaskWork = 64 * 1024;
// Widened rows of a prefill block: about 160 KiB of floats (stays in L2 while every token reuses it).
constexpr int64_t kScratchBytes = 160 * 1024;

thread_local std::vector<float> t_x;        // zero-padded activations
thread_local std::vector<float> t_sums;     // int4: sums of x over each group of each token
thread_local std::vector<float> t_scratch;  // per-task widened weight rows
thread_local std::vector<int8_t> t_xq;      // act_bits 8: quantized activations
thread_local std::vector<float> t_xd;       // act_bits 8: their group scales

struct DenseJob {
  const KernelTable* table;
  DenseProblem p;
  Split split;     // over N only: a prefill task widens its rows once for all tokens
  float* scratch;  // tasks * scratch_rows * kp floats, or null for M = 1
  int64_t scratch_per_task;
};

void dense_task(void* ctx, int64_t task) {
  const auto& j = *static_cast<const DenseJob*>(ctx);
  int64_t m0, m1, n0, n1;
  j.split.task_range(task, &m0, &m1, &n0, &n1);
  if (n0 >= n1) return;
  if (j.p.xq) j.table->dense_i8(j.p, m0, m1, n0, n1);
  else j.table->dense_f32(j.p, m0, m1, n0, n1, j.scratch ? j.scratch + task * j.scratch_per_task : nullptr);
}

// act_bits 8: each group of each token (zero-padded rows of kp floats) as int8 codes and its scale d_g
// (quantize_absmax, FORMAT.md "Dense weights"); with int4 weights also the (0, d_g * sum of codes) pairs of the
// offsets' term. Once per call, O(M K): no ISA-specific code needed.
void quantize_groups(const float* x, int64_t m, int64_t groups, int8_t* q, float* d, float* sums) {
  for (int64_t i = 0; i < m * groups; ++i) {
    int8_t* qg = q + i * kDenseChunk;
    d[i] = quantize_absmax(x + i * kDenseChunk, kDenseChunk, qg);
    if (sums) {
      int32_t total = 0;
      for (int64_t j = 0; j < kDenseChunk; ++j) total += qg[j];
      sums[2 * i] = 0.f;
      sums[2 * i + 1] = d[i] * float(total);
    }
  }
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_dense_linear(const float* x, int64_t m, int64_t k, const void* weight, int32_t weight_bits,
                                   const void* scales, int64_t n, int32_t act_bits, float* y,
                                   const bonsai_parallel* parallel) {
  using namespace bonsai;
  clear_error();
  if (!x || !weight || !scales || !y) return fail(BONSAI_ERR_NULL, "bonsai_dense_linear: null pointer");
  if (m <= 0 || n <= 0 || k <= 0 || k > BONSAI_MAX_K || n > BONSAI_MAX_ROWS || m > BONSAI_MAX_ROWS)
    return fail(BONSAI_ERR_SHAPE, "bonsai_dense_linear: expected M, N, K > 0, got M=" + std::to_string(m) +
                                      " N=" + std::to_string(n) + " K=" + std::to_string(k));
  if (weight_bits != 16 && weight_bits != 8 && weight_bits != 4)
    return fail(BONSAI_ERR_ACT_BITS, "bonsai_dense_linear: weight_bits must be 16, 8 or 4, got " +
                                         std::to_string(weight_bits));
  if (act_bits != 0 && (act_bits != 8 || weight_bits == 16))
    return fail(BONSAI_ERR_ACT_BITS, "bonsai_dense_linear: act_bits must be 0, or 8 with weight_bits 8 or 4, got "
                                     "act_bits " + std::to_string(act_bits) + " with weight_bits " +
                                         std::to_string(weight_bits));
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  try {
    const int64_t groups = dense_groups(k), kp = groups * kDenseChunk;
    const float* xp = x;
    if (kp != k) {  // kernels read whole chunks of x: copy into zero-padded rows
      float* buf = t_x.size() < size_t(m * kp) ? (t_x.resize(size_t(m * kp)), t_x.data()) : t_x.data();
      for (int64_t i = 0; i < m; ++i) {
        memcpy(buf + i * kp, x + i * k, size_t(k) * sizeof(float));
        memset(buf + i * kp + k, 0, size_t(kp - k) * sizeof(float));
      }
      xp = buf;
    }
    const Split split = make_split(m, n, dense_row_bytes(weight_bits, k), kMinTaskWork, false, parallel);
    int64_t scratch_rows = kScratchBytes / (kp * int64_t(sizeof(float)));
    scratch_rows = scratch_rows < 8 ? 8 : scratch_rows > 64 ? 64 : scratch_rows;
    const bool grouped = weight_bits != 16;
    float* sums = nullptr;  // int4, once per call: every row's offsets multiply the same group sums
    if (weight_bits == 4) {
      if (t_sums.size() < size_t(2 * m * groups)) t_sums.resize(size_t(2 * m * groups));
      sums = t_sums.data();
    }
    const int8_t* xq = nullptr;
    const float* xd = nullptr;
    if (act_bits == 8) {
      if (t_xq.size() < size_t(m * kp)) t_xq.resize(size_t(m * kp));
      if (t_xd.size() < size_t(m * groups)) t_xd.resize(size_t(m * groups));
      quantize_groups(xp, m, groups, t_xq.data(), t_xd.data(), sums);
      xq = t_xq.data();
      xd = t_xd.data();
    } else if (sums) {
      for (int64_t i = 0; i < m * groups; ++i) {
        float sum = 0.f;
        for (int64_t j = 0; j < kDenseChunk; ++j) sum += xp[i * kDenseChunk + j];
        sums[2 * i] = 0.f;  // lines up with the group's scale (kernel_table.h, DenseProblem)
        sums[2 * i + 1] = sum;
      }
    }
    DenseJob job{table,
                 {xp, kp, k, static_cast<const uint8_t*>(weight), dense_row_bytes(weight_bits, k), weight_bits,
                  grouped ? nullptr : static_cast<const float*>(scales),
                  grouped ? static_cast<const uint16_t*>(scales) : nullptr, groups, sums, y, n, scratch_rows, xq, xd},
                 split, nullptr, 0};
    if (m > 1 && !xq) {
      job.scratch_per_task = scratch_rows * kp;
      const size_t total = size_t(split.tasks() * job.scratch_per_task);
      if (t_scratch.size() < total) t_scratch.resize(total);
      job.scratch = t_scratch.data();
    }
    run_tasks(parallel, split.tasks(), dense_task, &job);
    return BONSAI_OK;
  } catch (const std::exception&) {
    return fail(BONSAI_ERR_ALLOC, "bonsai_dense_linear: out of memory for scratch buffers");
  }
}
