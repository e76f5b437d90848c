// Tensor validation for the runtime bindings (bonsai_check_*): the ExecuTorch and ONNX Runtime ops check dtype,
// rank and shape of their tensors here, so both give the same messages, before they call the C entry points.
#include <string.h>

#include <string>

#include "bonsai/kernels.h"
#include "kernel_table.h"
#include "status.h"

namespace bonsai {
namespace {

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case BONSAI_DTYPE_F32: return "float32";
    case BONSAI_DTYPE_BF16: return "bfloat16";
    case BONSAI_DTYPE_I8: return "int8";
    case BONSAI_DTYPE_U8: return "uint8";
    case BONSAI_DTYPE_I64: return "int64";
    case BONSAI_DTYPE_F16: return "float16";
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
  return bonsai_check_ternary_linear_ex(op, x, packed, scales, in_features, act_bits, bonsai::kScaleChannel, m, n);
}

int bonsai_check_ternary_linear_ex(const char* op, const bonsai_tensor* x, const bonsai_tensor* packed,
                                   const bonsai_tensor* scales, int64_t in_features, int64_t act_bits,
                                   int64_t scale_layout, int64_t* m, int64_t* n) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (!m || !n) return c.error(BONSAI_ERR_NULL, "null output pointer");
  if (act_bits != kActBitsNone && act_bits != kActBitsInt8)
    return c.error(BONSAI_ERR_ACT_BITS, "act_bits must be 0 or 8, got " + std::to_string(act_bits));
  if (scale_layout != kScaleChannel && scale_layout != kScaleBlock)
    return c.error(BONSAI_ERR_LAYOUT, "scale_layout must be 0 (channel) or 1 (block), got " +
                                          std::to_string(scale_layout));
  if (int rc = c.in_features(in_features)) return rc;
  const int64_t k = in_features, rb = row_bytes(k), nb = num_blocks(k);
  if (int rc = c.activations(x, k, m)) return rc;
  const std::string expect_packed = "[N, " + std::to_string(rb) + "] (row_bytes(K=" + std::to_string(k) + "))";
  if (int rc = c.typed("packed", packed, BONSAI_DTYPE_U8, 2, expect_packed)) return rc;
  const bool blocks = scale_layout == kScaleBlock;
  const std::string expect_scales = blocks ? "[N, " + std::to_string(nb) + "] (scale_layout 1: one per block)" : "[N]";
  if (int rc = c.typed("scales", scales, blocks ? BONSAI_DTYPE_F16 : BONSAI_DTYPE_F32, blocks ? 2 : 1, expect_scales))
    return rc;
  if (packed->dims[1] != rb || scales->dims[0] != packed->dims[0] || (blocks && scales->dims[1] != nb))
    return c.error(BONSAI_ERR_SHAPE, "packed " + dims_str(*packed) + " / scales " + dims_str(*scales) +
                                         " do not fit K=" + std::to_string(k) + " (expected [N, " +
                                         std::to_string(rb) + "] / " + (blocks ? "[N, " + std::to_string(nb) + "]" : "[N]") + ")");
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
                              const bonsai_tensor* scales, int64_t in_features, int64_t weight_bits,
                              int64_t act_bits, int64_t* m, int64_t* n) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (!m || !n) return c.error(BONSAI_ERR_NULL, "null output pointer");
  if (weight_bits != 16 && weight_bits != 8 && weight_bits != 4)
    return c.error(BONSAI_ERR_ACT_BITS, "weight_bits must be 16, 8 or 4, got " + std::to_string(weight_bits));
  if (act_bits != 0 && act_bits != 8)
    return c.error(BONSAI_ERR_ACT_BITS, "act_bits must be 0 or 8, got " + std::to_string(act_bits));
  if (act_bits == 8 && weight_bits == 16)
    return c.error(BONSAI_ERR_ACT_BITS, "act_bits 8 needs int8 or int4 weights (weight_bits 8 or 4), got 16");
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
  const int64_t groups = dense_groups(k);
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
  // The caches are float32 or fp16, both the same: k_cache's type is the one v_cache must have.
  if (int rc = c.present("k_cache", k_cache)) return rc;
  const int32_t cache_type = k_cache->dtype == BONSAI_DTYPE_F16 ? BONSAI_DTYPE_F16 : BONSAI_DTYPE_F32;
  if (int rc = c.typed("k_cache", k_cache, cache_type, 4, "[1, Hkv, S, D] (or float16)")) return rc;
  if (int rc = c.typed("v_cache", v_cache, cache_type, 4, "[1, Hkv, S, D] (the type of k_cache)")) return rc;
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

int bonsai_check_cache_attention(const char* op, const bonsai_tensor* q, const bonsai_tensor* k,
                                 const bonsai_tensor* v, const bonsai_tensor* past_key,
                                 const bonsai_tensor* past_value, int64_t n_heads, int64_t n_kv_heads, int64_t* t,
                                 int64_t* head_dim, int64_t* past_len) {
  using namespace bonsai;
  clear_error();
  const Checker c{op};
  if (!t || !head_dim || !past_len) return c.error(BONSAI_ERR_NULL, "null output pointer");
  if (n_heads < 1 || n_kv_heads < 1 || n_heads > BONSAI_MAX_ROWS || n_heads % n_kv_heads)
    return c.error(BONSAI_ERR_SHAPE, "num_heads " + std::to_string(n_heads) + " must be a positive multiple of "
                                         "kv_num_heads " + std::to_string(n_kv_heads));
  if (int rc = c.typed("query", q, BONSAI_DTYPE_F32, 3, "[1, T, H * D]")) return rc;
  // The cache side (key, value and both pasts) is float32 or fp16, all four alike: key's type is the one.
  if (int rc = c.present("key", k)) return rc;
  const int32_t cache_type = k->dtype == BONSAI_DTYPE_F16 ? BONSAI_DTYPE_F16 : BONSAI_DTYPE_F32;
  if (int rc = c.typed("key", k, cache_type, 3, "[1, T, Hkv * D] (or float16)")) return rc;
  if (int rc = c.typed("value", v, cache_type, 3, "[1, T, Hkv * D] (the type of key)")) return rc;
  if (int rc = c.typed("past_key", past_key, cache_type, 4, "[1, Hkv, P, D] (the type of key)")) return rc;
  if (int rc = c.typed("past_value", past_value, cache_type, 4, "[1, Hkv, P, D] (the type of key)")) return rc;
  const int64_t *qd = q->dims, *pd = past_key->dims;
  const int64_t d = qd[2] / n_heads;
  bool same = k->dims[0] == v->dims[0] && k->dims[1] == v->dims[1] && k->dims[2] == v->dims[2];
  for (int i = 0; i < 4; ++i) same &= pd[i] == past_value->dims[i];
  if (qd[0] != 1 || qd[1] < 1 || qd[1] > BONSAI_MAX_ROWS || d < 1 || d > BONSAI_MAX_ROWS || qd[2] != d * n_heads ||
      !same || k->dims[0] != 1 || k->dims[1] != qd[1] || k->dims[2] != n_kv_heads * d || pd[0] != 1 ||
      pd[1] != n_kv_heads || pd[2] > BONSAI_MAX_ROWS || pd[3] != d)
    return c.error(BONSAI_ERR_SHAPE, "query " + dims_str(*q) + ", key " + dims_str(*k) + ", value " + dims_str(*v) +
                                         ", past_key " + dims_str(*past_key) + " and past_value " +
                                         dims_str(*past_value) + " disagree with num_heads " +
                                         std::to_string(n_heads) + ", kv_num_heads " + std::to_string(n_kv_heads) +
                                         " (expected [1, T, H * D], two [1, T, Hkv * D] and two [1, Hkv, P, D])");
  *t = qd[1];
  *head_dim = d;
  *past_len = pd[2];
  return BONSAI_OK;
}

}  // extern "C"
