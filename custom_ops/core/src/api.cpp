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

namespace bonsai {
namespace {

thread_local std::string t_error;

// Output rows per task are a multiple of this, so every task but the last runs whole kernel tiles.
constexpr int64_t kRowGrain = 16;
// Tokens per task when a GEMM is also split over M (the GEMM kernels' largest token tile).
constexpr int64_t kTokenGrain = 4;
// Least work (packed weight bytes x tokens) worth a task of its own: below it, waking another thread costs
// more than the few microseconds of work it would take over.
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

// How a [M, N] output is cut into n_chunks x m_chunks tasks.
struct Split {
  int64_t m, n, n_chunks, m_chunks;
  int64_t tasks() const { return n_chunks * m_chunks; }
  // [begin, end) of chunk `c` of `count` units in whole grains.
  static void range(int64_t count, int64_t grain, int64_t chunks, int64_t c, int64_t* begin, int64_t* end) {
    const int64_t grains = (count + grain - 1) / grain;
    *begin = grains * c / chunks * grain;
    *end = c + 1 == chunks ? count : grains * (c + 1) / chunks * grain;
    if (*begin > count) *begin = count;
    if (*end > count) *end = count;
  }
  void task_range(int64_t task, int64_t* m0, int64_t* m1, int64_t* n0, int64_t* n1) const {
    range(n, kRowGrain, n_chunks, task % n_chunks, n0, n1);
    range(m, kTokenGrain, m_chunks, task / n_chunks, m0, m1);
  }
};

// Split over N first (each weight row is then read by one thread only); over M too when N alone leaves
// threads idle.
Split make_split(int64_t m, int64_t n, int64_t k, const bonsai_parallel* par) {
  int64_t workers = par && par->parallel_for && par->num_threads > 1 ? par->num_threads : 1;
  // In double: M * N * row bytes may pass 2^63 for the largest valid shapes.
  const double work = double(m) * double(n) * double(row_bytes(k)) / kMinTaskWork;
  const int64_t useful = work < double(workers) ? int64_t(work) : workers;
  if (useful < workers) workers = useful > 1 ? useful : 1;
  Split s{m, n, 1, 1};
  const int64_t row_grains = (n + kRowGrain - 1) / kRowGrain;
  s.n_chunks = workers < row_grains ? workers : row_grains;
  const int64_t token_grains = (m + kTokenGrain - 1) / kTokenGrain;
  const int64_t spare = workers / s.n_chunks;
  s.m_chunks = m > 1 && spare > 1 ? (spare < token_grains ? spare : token_grains) : 1;
  return s;
}

void run_tasks(const bonsai_parallel* par, int64_t n_tasks, bonsai_task_fn fn, void* ctx) {
  if (n_tasks > 1 && par && par->parallel_for && par->num_threads > 1) {
    par->parallel_for(par->runtime_ctx, n_tasks, fn, ctx);
    return;
  }
  for (int64_t t = 0; t < n_tasks; ++t) fn(ctx, t);
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
  const int64_t kp = padded_k(k);
  const float* xp = x;
  if (kp != k) {  // kernels read whole blocks: copy into zero-padded rows
    float* buf = scratch(t_f, m * kp);
    for (int64_t i = 0; i < m; ++i) {
      memcpy(buf + i * kp, x + i * k, size_t(k) * sizeof(float));
      memset(buf + i * kp + k, 0, size_t(kp - k) * sizeof(float));
    }
    xp = buf;
  }
  FloatJob job{table, make_split(m, n, k, par), xp, kp, num_blocks(k), row_bytes(k), packed, scales, y};
  run_tasks(par, job.split.tasks(), float_task, &job);
  return BONSAI_OK;
}

int linear_i8(const KernelTable* table, const float* x, int64_t m, int64_t k, const uint8_t* packed,
              const float* scales, int64_t n, float* y, const bonsai_parallel* par) {
  const int64_t kp = padded_k(k);
  int8_t* q = scratch(t_q, m * kp);
  float* d = scratch(t_f, m);
  for (int64_t i = 0; i < m; ++i) table->quantize_row_i8(x + i * k, k, q + i * kp, d + i);
  Int8Job job{table, make_split(m, n, k, par), q, kp, num_blocks(k), row_bytes(k), packed, scratch(t_acc, m * n),
              d, scales, y};
  run_tasks(par, job.split.tasks(), int8_task, &job);
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
  using namespace bonsai;
  clear_error();
  if (int rc = check_matmul("bonsai_ternary_linear", x, packed, y, m, n, k, packed_row_bytes)) return rc;
  if (!scales) return fail(BONSAI_ERR_NULL, "bonsai_ternary_linear: scales is null");
  if (act_bits != kActBitsNone && act_bits != kActBitsInt8)
    return fail(BONSAI_ERR_ACT_BITS, "bonsai_ternary_linear: expected act_bits 0 or 8, got " + std::to_string(act_bits));
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  try {
    return act_bits == kActBitsInt8 ? linear_i8(table, x, m, k, packed, scales, n, y, parallel)
                                    : linear_f32(table, x, m, k, packed, scales, n, y, parallel);
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
    Int8Job job{table, make_split(m, n, k, parallel), qp, kp, num_blocks(k), row_bytes(k), packed, acc,
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
