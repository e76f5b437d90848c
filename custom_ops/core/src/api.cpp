// The C entry points: validate every argument, prepare activations (quantize and/or pad to whole blocks), split
// the output over threads and call the dispatched kernels. No math beyond the int8 epilogue lives here.
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

thread_local std::string t_error;

// Least work (packed weight bytes x tokens) worth a task of its own (work_split.h).
constexpr int64_t kMinTaskWork = 32 * 1024;

std::string shape_str(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + ", N=" + std::to_string(n) + ", K=" + std::to_string(k);
}

// Checks shared by every matmul entry point; returns BONSAI_OK or records the error.
int check_matmul(const char* fn, const void* a, const uint8_t* packed, const void* out, int64_t m, int64_t n,
                 int64_t k, int64_t packed_row_bytes) {
  if (!a || !packed || !out) return fail(BONSAI_ERR_NULL, std::string(fn) + ": null input, weight or output pointer");
  if (m <= 0 || n <= 0 || k <= 0) return fail(BONSAI_ERR_SHAPE, std::string(fn) + ": expected M, N, K > 0, got " + shape_str(m, n, k));
  // Keeps every index product (m * stride, n * row bytes) far from int64 overflow.
  if (m > BONSAI_MAX_ROWS || n > BONSAI_MAX_ROWS || k > BONSAI_MAX_K)
    return fail(BONSAI_ERR_SHAPE, std::string(fn) + ": shape too large, got " + shape_str(m, n, k));
  if (packed_row_bytes != row_bytes(k)) {
    return fail(BONSAI_ERR_SHAPE, std::string(fn) + ": expected packed row bytes " + std::to_string(row_bytes(k)) +
                                      " for K=" + std::to_string(k) + ", got " + std::to_string(packed_row_bytes));
  }
  return BONSAI_OK;
}

// Scratch reused across calls of one thread (no allocation per decode step).
template <typename T>
T* scratch(std::vector<T>& buf, int64_t count) {
  if (int64_t(buf.size()) < count) buf.resize(size_t(count));
  return buf.data();
}
thread_local std::vector<int8_t> t_q;
thread_local std::vector<float> t_f;
thread_local std::vector<int32_t> t_acc;

// x rows copied into zero-padded rows of whole blocks (or x itself when K is whole blocks).
const float* padded_rows(const float* x, int64_t m, int64_t k) {
  const int64_t kp = padded_k(k);
  if (kp == k) return x;
  float* buf = scratch(t_f, m * kp);
  for (int64_t i = 0; i < m; ++i) {
    memcpy(buf + i * kp, x + i * k, size_t(k) * sizeof(float));
    memset(buf + i * kp + k, 0, size_t(kp - k) * sizeof(float));
  }
  return buf;
}

Split ternary_split(int64_t m, int64_t n, int64_t k, const bonsai_parallel* par) {
  return make_split(m, n, row_bytes(k), kMinTaskWork, true, par);
}

struct Int8Job {
  const KernelTable* table;
  Split split;
  const int8_t* q;  // [M, q_stride], rows padded to whole blocks
  int64_t q_stride, nblocks, w_stride;
  const uint8_t* w;
  int32_t* acc;     // [M, N]
  const float* d;   // [M] or null: then acc is the result
  const float* scales;
  float* y;         // [M, N] when d is set
};

void int8_task(void* ctx, int64_t task) {
  const Int8Job& j = *static_cast<const Int8Job*>(ctx);
  int64_t m0, m1, n0, n1;
  j.split.task_range(task, &m0, &m1, &n0, &n1);
  if (m0 >= m1 || n0 >= n1) return;
  const int64_t n = j.split.n;
  if (m1 - m0 == 1)
    j.table->gemv_i8(j.q + m0 * j.q_stride, j.nblocks, j.w, j.w_stride, n0, n1, j.acc + m0 * n);
  else
    j.table->gemm_i8(j.q + m0 * j.q_stride, j.q_stride, m1 - m0, j.nblocks, j.w, j.w_stride, n0, n1, j.acc + m0 * n, n);
  if (!j.d) return;
  for (int64_t m = m0; m < m1; ++m)  // formats.matmul's epilogue, in the same order: (float(acc) * d) * scale
    for (int64_t c = n0; c < n1; ++c) j.y[m * n + c] = (float(j.acc[m * n + c]) * j.d[m]) * j.scales[c];
}

struct FloatJob {
  const KernelTable* table;
  Split split;
  const float* x;  // [M, x_stride], rows padded to whole blocks
  int64_t x_stride, nblocks, w_stride;
  const uint8_t* w;
  const float* scales;
  float* y;  // [M, N]
};

void float_task(void* ctx, int64_t task) {
  const FloatJob& j = *static_cast<const FloatJob*>(ctx);
  int64_t m0, m1, n0, n1;
  j.split.task_range(task, &m0, &m1, &n0, &n1);
  if (m0 >= m1 || n0 >= n1) return;
  const int64_t n = j.split.n;
  if (m1 - m0 == 1)
    j.table->gemv_f32(j.x + m0 * j.x_stride, j.nblocks, j.w, j.w_stride, j.scales, n0, n1, j.y + m0 * n);
  else
    j.table->gemm_f32(j.x + m0 * j.x_stride, j.x_stride, m1 - m0, j.nblocks, j.w, j.w_stride, j.scales, n0, n1,
                      j.y + m0 * n, n);
}

int linear_f32(const KernelTable* table, const float* x, int64_t m, int64_t k, const uint8_t* packed,
               const float* scales, int64_t n, float* y, const bonsai_parallel* par) {
  const float* xp = padded_rows(x, m, k);  // kernels read whole blocks
  FloatJob job{table, ternary_split(m, n, k, par), xp, padded_k(k), num_blocks(k), row_bytes(k), packed, scales, y};
  run_tasks(par, job.split.tasks(), float_task, &job);
  return BONSAI_OK;
}

int linear_i8(const KernelTable* table, const float* x, int64_t m, int64_t k, const uint8_t* packed,
              const float* scales, int64_t n, float* y, const bonsai_parallel* par) {
  const int64_t kp = padded_k(k);
  int8_t* q = scratch(t_q, m * kp);
  float* d = scratch(t_f, m);
  for (int64_t i = 0; i < m; ++i) table->quantize_row_i8(x + i * k, k, q + i * kp, d + i);
  Int8Job job{table, ternary_split(m, n, k, par), q, kp, num_blocks(k), row_bytes(k), packed, scratch(t_acc, m * n),
              d, scales, y};
  run_tasks(par, job.split.tasks(), int8_task, &job);
  return BONSAI_OK;
}

// Block scales (t2g): one job for both activation modes; q set = int8 (y = z * d after the kernel), else float.
struct BlockJob {
  const KernelTable* table;
  Split split;
  const int8_t* q;        // [M, stride] int8 rows padded to whole blocks, or null
  const int32_t* qsums;   // [M, nblocks]: each token's sum over each block (int8 only)
  const float* d;         // [M] (int8 only)
  const float* x;         // [M, stride] float rows padded to whole blocks (float only)
  int64_t stride, nblocks, w_stride;
  const uint8_t* w;
  const uint16_t* scales;  // fp16 [N, nblocks]
  float* y;                // [M, N]
};

void block_task(void* ctx, int64_t task) {
  const BlockJob& j = *static_cast<const BlockJob*>(ctx);
  int64_t m0, m1, n0, n1;
  j.split.task_range(task, &m0, &m1, &n0, &n1);
  if (m0 >= m1 || n0 >= n1) return;
  const int64_t n = j.split.n;
  float* y = j.y + m0 * n;
  if (!j.q) {
    j.table->gemm_t2g_f32(j.x + m0 * j.stride, j.stride, m1 - m0, j.nblocks, j.w, j.w_stride, j.scales, n0, n1, y, n);
    return;
  }
  j.table->gemm_t2g_i8(j.q + m0 * j.stride, j.stride, j.qsums + m0 * j.nblocks, m1 - m0, j.nblocks, j.w, j.w_stride,
                       j.scales, n0, n1, y, n);
  for (int64_t m = m0; m < m1; ++m)  // formats.matmul_blocks' last step: z * d
    for (int64_t c = n0; c < n1; ++c) j.y[m * n + c] = j.y[m * n + c] * j.d[m];
}

thread_local std::vector<float> t_d;
thread_local std::vector<int32_t> t_qsums;

int linear_blocks(const KernelTable* table, const float* x, int64_t m, int64_t k, const uint8_t* packed,
                  const uint16_t* scales, int64_t n, int32_t act_bits, float* y, const bonsai_parallel* par) {
  const int64_t kp = padded_k(k), nb = num_blocks(k);
  BlockJob job{table, ternary_split(m, n, k, par), nullptr, nullptr, nullptr, nullptr, kp, nb, row_bytes(k),
               packed, scales, y};
  if (act_bits == kActBitsInt8) {
    int8_t* q = scratch(t_q, m * kp);
    float* d = scratch(t_d, m);
    int32_t* qsums = scratch(t_qsums, m * nb);
    for (int64_t i = 0; i < m; ++i) {
      table->quantize_row_i8(x + i * k, k, q + i * kp, d + i);
      for (int64_t b = 0; b < nb; ++b) {
        int32_t sum = 0;
        for (int64_t j = 0; j < kBlockK; ++j) sum += q[i * kp + b * kBlockK + j];
        qsums[i * nb + b] = sum;
      }
    }
    job.q = q, job.qsums = qsums, job.d = d;
  } else {
    job.x = padded_rows(x, m, k);
  }
  run_tasks(par, job.split.tasks(), block_task, &job);
  return BONSAI_OK;
}

}  // namespace

void set_error(std::string message) { t_error = std::move(message); }
int fail(bonsai_status status, std::string message) {
  set_error(std::move(message));
  return status;
}
void clear_error() { t_error.clear(); }

}  // namespace bonsai

extern "C" {

const char* bonsai_last_error(void) { return bonsai::t_error.c_str(); }

int64_t bonsai_row_bytes(int64_t k) { return k > 0 && k <= BONSAI_MAX_K ? bonsai::row_bytes(k) : -1; }

int bonsai_ternary_linear(const float* x, int64_t m, int64_t k, const uint8_t* packed, int64_t packed_row_bytes,
                          const float* scales, int64_t n, int32_t act_bits, float* y, const bonsai_parallel* parallel) {
  return bonsai_ternary_linear_ex(x, m, k, packed, packed_row_bytes, scales, bonsai::kScaleChannel, n, act_bits, y,
                                  parallel);
}

int bonsai_ternary_linear_ex(const float* x, int64_t m, int64_t k, const uint8_t* packed, int64_t packed_row_bytes,
                             const void* scales, int32_t scale_layout, int64_t n, int32_t act_bits, float* y,
                             const bonsai_parallel* parallel) {
  using namespace bonsai;
  clear_error();
  if (int rc = check_matmul("bonsai_ternary_linear", x, packed, y, m, n, k, packed_row_bytes)) return rc;
  if (!scales) return fail(BONSAI_ERR_NULL, "bonsai_ternary_linear: scales is null");
  if (act_bits != kActBitsNone && act_bits != kActBitsInt8)
    return fail(BONSAI_ERR_ACT_BITS, "bonsai_ternary_linear: expected act_bits 0 or 8, got " + std::to_string(act_bits));
  if (scale_layout != kScaleChannel && scale_layout != kScaleBlock)
    return fail(BONSAI_ERR_LAYOUT, "bonsai_ternary_linear: expected scale_layout 0 (channel) or 1 (block), got " +
                                       std::to_string(scale_layout));
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  try {
    if (scale_layout == kScaleBlock)
      return linear_blocks(table, x, m, k, packed, static_cast<const uint16_t*>(scales), n, act_bits, y, parallel);
    const float* channel = static_cast<const float*>(scales);
    return act_bits == kActBitsInt8 ? linear_i8(table, x, m, k, packed, channel, n, y, parallel)
                                    : linear_f32(table, x, m, k, packed, channel, n, y, parallel);
  } catch (const std::exception&) {
    return fail(BONSAI_ERR_ALLOC, "bonsai_ternary_linear: out of memory for scratch buffers");
  }
}

int bonsai_int8_accumulate(const int8_t* q, int64_t m, int64_t k, const uint8_t* packed, int64_t packed_row_bytes,
                           int64_t n, int32_t* acc, const bonsai_parallel* parallel) {
  using namespace bonsai;
  clear_error();
  if (int rc = check_matmul("bonsai_int8_accumulate", q, packed, acc, m, n, k, packed_row_bytes)) return rc;
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  try {
    const int64_t kp = padded_k(k);
    int8_t* qp = scratch(t_q, m * kp);
    for (int64_t i = 0; i < m; ++i) {
      memcpy(qp + i * kp, q + i * k, size_t(k));
      memset(qp + i * kp + k, 0, size_t(kp - k));
    }
    Int8Job job{table, ternary_split(m, n, k, parallel), qp, kp, num_blocks(k), row_bytes(k), packed, acc,
                nullptr, nullptr, nullptr};
    run_tasks(parallel, job.split.tasks(), int8_task, &job);
    return BONSAI_OK;
  } catch (const std::exception&) {
    return fail(BONSAI_ERR_ALLOC, "bonsai_int8_accumulate: out of memory for scratch buffers");
  }
}

int bonsai_quantize_activations(const float* x, int64_t m, int64_t k, int8_t* q, float* d) {
  using namespace bonsai;
  clear_error();
  if (!x || !q || !d) return fail(BONSAI_ERR_NULL, "bonsai_quantize_activations: null pointer");
  if (m <= 0 || k <= 0 || k > (int64_t(1) << 24))
    return fail(BONSAI_ERR_SHAPE, "bonsai_quantize_activations: expected M > 0 and 0 < K <= 2^24, got M=" +
                                      std::to_string(m) + ", K=" + std::to_string(k));
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  try {
    int8_t* row = scratch(t_q, padded_k(k));  // the kernel writes the padded tail too
    for (int64_t i = 0; i < m; ++i) {
      table->quantize_row_i8(x + i * k, k, row, d + i);
      memcpy(q + i * k, row, size_t(k));
    }
    return BONSAI_OK;
  } catch (const std::exception&) {
    return fail(BONSAI_ERR_ALLOC, "bonsai_quantize_activations: out of memory");
  }
}

}  // extern "C"
