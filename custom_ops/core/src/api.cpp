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

// ---- Tensor validation for the runtime bindings ----
namespace bonsai {
namespace {

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case BONSAI_DTYPE_F32: return "float32";
    case BONSAI_DTYPE_BF16: return "bfloat16";
    case BONSAI_DTYPE_I8: return "int8";
    case BONSAI_DTYPE_U8: return "uint8";
    case BONSAI_DTYPE_I64: return "int64";
    default: return "an unsupported dtype";
  }
}

// "[2, 130]"; only called on tensors whose rank passed check_rank.
std::string dims_str(const bonsai_tensor& t) {
  std::string s = "[";
  for (int32_t i = 0; i < t.rank; ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
  return s + "]";
}

// What one check is about: the op's name prefixes every message.
struct Checker {
  const char* op;

  int error(bonsai_status status, const std::string& what) const {
    return fail(status, std::string(op ? op : "bonsai") + ": " + what);
  }

  // The tensor exists, has a sane rank (dims readable) and no negative size.
  int present(const char* name, const bonsai_tensor* t) const {
    if (!t || (t->rank > 0 && !t->dims)) return error(BONSAI_ERR_NULL, std::string(name) + " is missing");
    if (t->rank < 0 || t->rank > BONSAI_MAX_RANK)
      return error(BONSAI_ERR_SHAPE, std::string(name) + " has rank " + std::to_string(t->rank) +
                                         ", more than the ops ever take (" + std::to_string(BONSAI_MAX_RANK) + ")");
    for (int32_t i = 0; i < t->rank; ++i)
      if (t->dims[i] < 0) return error(BONSAI_ERR_SHAPE, std::string(name) + " has a negative size");
    return BONSAI_OK;
  }

  // dtype and rank as the contract says; `expect` describes the full contract for the message.
  int typed(const char* name, const bonsai_tensor* t, int32_t dtype, int32_t rank, const std::string& expect) const {
    if (int rc = present(name, t)) return rc;
    if (t->dtype != dtype)
      return error(BONSAI_ERR_SHAPE, std::string(name) + " must be " + dtype_name(dtype) + " " + expect + ", got " +
                                         dtype_name(t->dtype) + " " + dims_str(*t));
    if (rank >= 0 && t->rank != rank)
      return error(BONSAI_ERR_SHAPE, std::string(name) + " must be " + dtype_name(dtype) + " " + expect +
                                         ", got rank " + std::to_string(t->rank) + " " + dims_str(*t));
    return BONSAI_OK;
  }

  int in_features(int64_t k) const {
    if (k <= 0 || k > BONSAI_MAX_K)
      return error(BONSAI_ERR_SHAPE, "in_features must be in [1, " + std::to_string(BONSAI_MAX_K) + "], got " +
                                         std::to_string(k));
    return BONSAI_OK;
  }

  // x f32 [..., K]: *m = product of the leading dims, overflow-checked (an empty x gives m = 0).
  int activations(const bonsai_tensor* x, int64_t k, int64_t* m) const {
    if (int rc = typed("x", x, BONSAI_DTYPE_F32, -1, "[..., K]")) return rc;
    if (x->rank < 1 || x->dims[x->rank - 1] != k)
      return error(BONSAI_ERR_SHAPE, "x " + dims_str(*x) + " must end in in_features=" + std::to_string(k));
    int64_t rows = 1;
    bool empty = false;
    for (int32_t i = 0; i + 1 < x->rank; ++i) empty |= x->dims[i] == 0;
    for (int32_t i = 0; i + 1 < x->rank && !empty; ++i)
      if (__builtin_mul_overflow(rows, x->dims[i], &rows) || rows > BONSAI_MAX_ROWS)
        return error(BONSAI_ERR_SHAPE, "x " + dims_str(*x) + " has more than " + std::to_string(BONSAI_MAX_ROWS) +
                                           " rows");
    *m = empty ? 0 : rows;
    return BONSAI_OK;
  }

  // N: rows of the weight, at least one (a layer without outputs is a malformed weight, not an empty input).
  int out_rows(const char* name, const bonsai_tensor* w, int64_t* n) const {
    if (w->dims[0] < 1 || w->dims[0] > BONSAI_MAX_ROWS)
      return error(BONSAI_ERR_SHAPE, std::string(name) + " " + dims_str(*w) + " must have 1 to " +
                                         std::to_string(BONSAI_MAX_ROWS) + " rows (N)");
    *n = w->dims[0];
    return BONSAI_OK;
  }
};

bool dims_are(const bonsai_tensor* t, int64_t d0, int64_t d1 = -1) {
  return t->dims[0] == d0 && (t->rank < 2 || t->dims[1] == d1);
}

}  // namespace
}  // namespace bonsai

extern "C" {

int bonsai_check_ternary_linear(const char* op, const bonsai_tensor* x, const bonsai_tensor* packed,
                                const bonsai_tensor* scales, int64_t in_features, int64_t act_bits, int64_t* m,
                                int64_t* n) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (!m || !n) return c.error(BONSAI_ERR_NULL, "null output pointer");
  if (act_bits != kActBitsNone && act_bits != kActBitsInt8)
    return c.error(BONSAI_ERR_ACT_BITS, "act_bits must be 0 or 8, got " + std::to_string(act_bits));
  if (int rc = c.in_features(in_features)) return rc;
  const int64_t k = in_features, rb = row_bytes(k);
  if (int rc = c.activations(x, k, m)) return rc;
  const std::string expect_packed = "[N, " + std::to_string(rb) + "] (row_bytes(K=" + std::to_string(k) + "))";
  if (int rc = c.typed("packed", packed, BONSAI_DTYPE_U8, 2, expect_packed)) return rc;
  if (int rc = c.typed("scales", scales, BONSAI_DTYPE_F32, 1, "[N]")) return rc;
  if (packed->dims[1] != rb || scales->dims[0] != packed->dims[0])
    return c.error(BONSAI_ERR_SHAPE, "packed " + dims_str(*packed) + " / scales " + dims_str(*scales) +
                                         " do not fit K=" + std::to_string(k) + " (expected [N, " +
                                         std::to_string(rb) + "] / [N])");
  return c.out_rows("packed", packed, n);
}

}  // extern "C"

namespace bonsai {
namespace {

// Index of the first byte holding code 3 (both bits of a 2-bit field set), or -1.
int64_t first_code3(const uint8_t* p, int64_t bytes) {
  constexpr uint64_t kLowBits = 0x5555555555555555ull;
  int64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w & (w >> 1) & kLowBits) break;
  }
  for (; i < bytes; ++i)
    if (p[i] & (p[i] >> 1) & 0x55) return i;
  return -1;
}

}  // namespace
}  // namespace bonsai

extern "C" {

int bonsai_check_ternary_codes(const char* op, const uint8_t* packed, int64_t n, int64_t packed_row_bytes) {
  using namespace bonsai;
  clear_error();
  const std::string name = op ? op : "bonsai";
  if (!packed) return fail(BONSAI_ERR_NULL, name + ": null packed weights");
  if (n <= 0 || packed_row_bytes <= 0 || n > BONSAI_MAX_ROWS || packed_row_bytes > row_bytes(BONSAI_MAX_K))
    return fail(BONSAI_ERR_SHAPE, name + ": packed weights [" + std::to_string(n) + ", " +
                                      std::to_string(packed_row_bytes) + "] out of range");
  const int64_t at = first_code3(packed, n * packed_row_bytes);
  if (at < 0) return BONSAI_OK;
  const int64_t row = at / packed_row_bytes, in_row = at % packed_row_bytes;
  int plane = 0;
  while (!((packed[at] >> (2 * plane)) & (packed[at] >> (2 * plane + 1)) & 1)) ++plane;
  const int64_t weight = in_row / kBlockBytes * kBlockK + plane * kLanes + in_row % kBlockBytes;
  return fail(BONSAI_ERR_CODES, name + ": packed weights hold the invalid 2-bit code 3 (row " + std::to_string(row) +
                                    ", weight " + std::to_string(weight) + "): the file is corrupt, export it again");
}

int bonsai_check_dense_linear(const char* op, const bonsai_tensor* x, const bonsai_tensor* weight,
                              const bonsai_tensor* scales, int64_t in_features, int64_t weight_bits, int64_t* m,
                              int64_t* n) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (!m || !n) return c.error(BONSAI_ERR_NULL, "null output pointer");
  if (weight_bits != 16 && weight_bits != 8 && weight_bits != 4)
    return c.error(BONSAI_ERR_ACT_BITS, "weight_bits must be 16, 8 or 4, got " + std::to_string(weight_bits));
  if (int rc = c.in_features(in_features)) return rc;
  const int64_t k = in_features, bits = weight_bits;
  if (int rc = c.activations(x, k, m)) return rc;
  const int32_t wtype = bits == 16 ? BONSAI_DTYPE_BF16 : bits == 8 ? BONSAI_DTYPE_I8 : BONSAI_DTYPE_U8;
  if (int rc = c.present("weight", weight)) return rc;
  if (weight->dtype != wtype)
    return c.error(BONSAI_ERR_SHAPE, "weight_bits " + std::to_string(bits) + " does not fit the weight's dtype " +
                                         dtype_name(weight->dtype) + " (expected " + dtype_name(wtype) + ")");
  const int64_t wk = dense_row_bytes(int(bits), k) / (bits == 16 ? 2 : 1);  // weight elements per row
  // bf16: one float32 scale per row; int8: one bf16 scale per group of kDenseChunk along K; int4: a bf16
  // (scale, offset) pair per group.
  const bool grouped = bits != 16;
  const int64_t groups = (k + kDenseChunk - 1) / kDenseChunk;
  const int32_t s_rank = bits == 16 ? 1 : bits == 8 ? 2 : 3;
  const std::string expect_w = "[N, " + std::to_string(wk) + "]";
  const std::string expect_s = bits == 16 ? "[N]" : "[N, " + std::to_string(groups) + (bits == 4 ? ", 2]" : "]");
  if (int rc = c.typed("weight", weight, wtype, 2, expect_w)) return rc;
  if (int rc = c.typed("scales", scales, grouped ? BONSAI_DTYPE_BF16 : BONSAI_DTYPE_F32, s_rank, expect_s))
    return rc;
  if (weight->dims[1] != wk || !dims_are(scales, weight->dims[0], groups) || (bits == 4 && scales->dims[2] != 2))
    return c.error(BONSAI_ERR_SHAPE, "weight " + dims_str(*weight) + " / scales " + dims_str(*scales) +
                                         " do not fit K=" + std::to_string(k) + " and weight_bits=" +
                                         std::to_string(bits) + " (expected " + expect_w + " / " + expect_s + ")");
  return c.out_rows("weight", weight, n);
}

int bonsai_check_attention(const char* op, const bonsai_tensor* q, const bonsai_tensor* k_cache,
                           const bonsai_tensor* v_cache, const bonsai_tensor* input_pos) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (int rc = c.typed("q", q, BONSAI_DTYPE_F32, 4, "[1, T, H, D]")) return rc;
  if (int rc = c.typed("k_cache", k_cache, BONSAI_DTYPE_F32, 4, "[1, Hkv, S, D]")) return rc;
  if (int rc = c.typed("v_cache", v_cache, BONSAI_DTYPE_F32, 4, "[1, Hkv, S, D]")) return rc;
  if (int rc = c.typed("input_pos", input_pos, BONSAI_DTYPE_I64, -1, "with one element")) return rc;
  const int64_t* qd = q->dims;
  const int64_t* kd = k_cache->dims;
  bool same_cache = true;
  for (int i = 0; i < 4; ++i) same_cache &= kd[i] == v_cache->dims[i];
  if (qd[0] != 1 || kd[0] != 1 || !same_cache || kd[3] != qd[3])
    return c.error(BONSAI_ERR_SHAPE, "q " + dims_str(*q) + ", k_cache " + dims_str(*k_cache) + " and v_cache " +
                                         dims_str(*v_cache) + " disagree (expected [1, T, H, D] and two [1, Hkv, S, D])");
  int64_t elements = 1;
  for (int32_t i = 0; i < input_pos->rank; ++i) elements *= input_pos->dims[i] > 1 ? 2 : input_pos->dims[i];
  if (elements != 1)
    return c.error(BONSAI_ERR_SHAPE, "input_pos " + dims_str(*input_pos) + " must hold exactly one position");
  for (int i = 1; i < 4; ++i)
    if (qd[i] < 1 || qd[i] > BONSAI_MAX_ROWS || kd[i] < 1 || kd[i] > BONSAI_MAX_ROWS)
      return c.error(BONSAI_ERR_SHAPE, "q " + dims_str(*q) + " and k_cache " + dims_str(*k_cache) +
                                           " need T, H, D, Hkv, S in [1, " + std::to_string(BONSAI_MAX_ROWS) + "]");
  if (qd[2] % kd[1])
    return c.error(BONSAI_ERR_SHAPE, "q's " + std::to_string(qd[2]) + " heads are not a multiple of the caches' " +
                                         std::to_string(kd[1]) + " KV heads");
  return BONSAI_OK;
}

}  // extern "C"
