// Causal grouped-query attention over a KV cache, reading only the filled prefix [0, pos + T) of the cache.
// Why here and not ExecuTorch's custom_sdpa: that kernel needs libtorch, which a phone runner does not have, and
// attention over the whole max_seq_len cache would read more bytes per token than the weights themselves.
//
// The entry point validates and cuts the work into (token, KV head) tasks; the dispatched kernel (KernelTable::
// attend, float_kernels.h for the SIMD tables) handles the H / Hkv query heads of one KV head together, so each
// cached K and V row is read once per KV head, not once per query head.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <string>
#include <vector>

#include "bonsai/kernels.h"
#include "kernel_table.h"
#include "status.h"
#include "work_split.h"

namespace bonsai {
namespace {

// Independent partial sums let the compiler vectorize the reduction without -ffast-math.
constexpr int kRefLanes = 16;

template <class E>
float dot(const float* a, const E* b, int64_t n) {
  float part[kRefLanes] = {};
  int64_t i = 0;
  for (; i + kRefLanes <= n; i += kRefLanes)
    for (int l = 0; l < kRefLanes; ++l) part[l] += a[i + l] * cache_value(b[i + l]);
  float acc = 0.f;
  for (; i < n; ++i) acc += a[i] * cache_value(b[i]);
  for (int l = 0; l < kRefLanes; ++l) acc += part[l];
  return acc;
}

// One query head at a time, softmax(q . k_j / sqrt(D)) over j in [0, pos + token], times v_j.
template <class E>
void attend_ref_cache(const AttentionProblem& a, const E* k_cache, const E* v_cache, int64_t token, int64_t kv,
                      float* scores) {
  const int64_t group = a.h / a.hkv, n_ctx = a.pos + token + 1;
  const E* k = k_cache + kv * a.s * a.d;
  const E* v = v_cache + kv * a.s * a.d;
  const float scale = 1.0f / sqrtf(float(a.d));
  for (int64_t head = kv * group; head < (kv + 1) * group; ++head) {
    const float* q = a.q + (token * a.h + head) * a.d;
    float max_score = -INFINITY;
    for (int64_t j = 0; j < n_ctx; ++j) {
      scores[j] = dot(q, k + j * a.d, a.d) * scale;
      max_score = std::max(max_score, scores[j]);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < n_ctx; ++j) sum += scores[j] = expf(scores[j] - max_score);
    float* out = a.out + (token * a.h + head) * a.d;
    std::fill(out, out + a.d, 0.f);
    for (int64_t j = 0; j < n_ctx; ++j) {
      const float p = scores[j] / sum;
      const E* vj = v + j * a.d;
      for (int64_t i = 0; i < a.d; ++i) out[i] += p * cache_value(vj[i]);
    }
  }
}

}  // namespace

// The reference kernel (table "ref"), over either cache type.
void attend_ref(const AttentionProblem& a, int64_t token, int64_t kv, float* scores) {
  if (a.k16) attend_ref_cache(a, a.k16, a.v16, token, kv, scores);
  else attend_ref_cache(a, a.k, a.v, token, kv, scores);
}

namespace {

struct AttentionJob {
  const KernelTable* table;
  AttentionProblem a;
  std::atomic<bool> out_of_memory{false};
};

// Tasks run on the runtime's worker threads, where an exception would terminate the process: a failed scratch
// allocation is recorded and reported by the entry point instead.
void attention_task(void* ctx, int64_t task) {
  auto& j = *static_cast<AttentionJob*>(ctx);
  thread_local std::vector<float> scratch;
  const int64_t token = task / j.a.hkv, kv = task % j.a.hkv;
  const size_t need = size_t((j.a.h / j.a.hkv) * (j.a.pos + token + 1));
  try {
    if (scratch.size() < need) scratch.resize(need);  // H / Hkv x context floats: a few KiB, kept per thread
  } catch (const std::exception&) {
    j.out_of_memory = true;
    return;
  }
  j.table->attend(j.a, token, kv, scratch.data());
}

// T * H * D and Hkv * S * D (the elements of q and of each cache) fit int64, so no index can wrap.
bool sizes_fit(int64_t t, int64_t h, int64_t d, int64_t hkv, int64_t s) {
  int64_t product;
  return t <= BONSAI_MAX_ROWS && h <= BONSAI_MAX_ROWS && d <= BONSAI_MAX_ROWS && hkv <= BONSAI_MAX_ROWS &&
         s <= BONSAI_MAX_ROWS && !__builtin_mul_overflow(t * h, d, &product) &&
         !__builtin_mul_overflow(hkv * s, d, &product);
}

}  // namespace
}  // namespace bonsai

namespace bonsai {
namespace {

// Both entry points: `name` for the messages; the caches are float32 (k, v) or fp16 (k16, v16).
int attention(const char* name, const float* q, int64_t t, int64_t n_heads, int64_t head_dim, const float* k,
              const float* v, const uint16_t* k16, const uint16_t* v16, int64_t n_kv_heads, int64_t cache_len,
              int64_t pos, float* out, const bonsai_parallel* parallel) {
  const std::string op = name;
  if (!q || !(k || k16) || !(v || v16) || !out) return fail(BONSAI_ERR_NULL, op + ": null pointer");
  if (t <= 0 || n_heads <= 0 || head_dim <= 0 || n_kv_heads <= 0 || cache_len <= 0 || n_heads % n_kv_heads)
    return fail(BONSAI_ERR_SHAPE, op + ": expected T, H, D, Hkv, S > 0 and H a multiple of Hkv, got T=" +
                                      std::to_string(t) + " H=" + std::to_string(n_heads) + " D=" +
                                      std::to_string(head_dim) + " Hkv=" + std::to_string(n_kv_heads));
  if (!sizes_fit(t, n_heads, head_dim, n_kv_heads, cache_len))
    return fail(BONSAI_ERR_SHAPE, op + ": sizes too large, got T=" + std::to_string(t) + " H=" +
                                      std::to_string(n_heads) + " D=" + std::to_string(head_dim) + " Hkv=" +
                                      std::to_string(n_kv_heads) + " S=" + std::to_string(cache_len));
  // pos is data (input_pos), any int64: compare without forming pos + t, which could wrap.
  if (pos < 0 || pos > cache_len - t)
    return fail(BONSAI_ERR_SHAPE, op + ": input_pos " + std::to_string(pos) + " with T=" + std::to_string(t) +
                                      " does not fit the cache of " + std::to_string(cache_len) +
                                      " positions (need 0 <= pos <= " + std::to_string(cache_len - t) + ")");
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  AttentionJob job{table, {q, k, v, k16, v16, out, t, n_heads, head_dim, n_kv_heads, cache_len, pos}};
  run_tasks(parallel, t * n_kv_heads, attention_task, &job);  // one task per (token, KV head)
  if (job.out_of_memory) return fail(BONSAI_ERR_ALLOC, op + ": out of memory for the score buffer");
  return BONSAI_OK;
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_attention(const float* q, int64_t t, int64_t n_heads, int64_t head_dim, const float* k_cache,
                                const float* v_cache, int64_t n_kv_heads, int64_t cache_len, int64_t pos, float* out,
                                const bonsai_parallel* parallel) {
  bonsai::clear_error();
  return bonsai::attention("bonsai_attention", q, t, n_heads, head_dim, k_cache, v_cache, nullptr, nullptr,
                           n_kv_heads, cache_len, pos, out, parallel);
}

extern "C" int bonsai_attention_f16(const float* q, int64_t t, int64_t n_heads, int64_t head_dim,
                                    const uint16_t* k_cache, const uint16_t* v_cache, int64_t n_kv_heads,
                                    int64_t cache_len, int64_t pos, float* out, const bonsai_parallel* parallel) {
  bonsai::clear_error();
  return bonsai::attention("bonsai_attention_f16", q, t, n_heads, head_dim, nullptr, nullptr, k_cache, v_cache,
                           n_kv_heads, cache_len, pos, out, parallel);
}

namespace bonsai {
namespace {

// Both cache types: the rows are copied as they are (fp16 rows were rounded by whoever made them).
template <class E>
int cache_update(const char* name, const E* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim, const E* past,
                 int64_t past_len, E* cache, int64_t cache_len, int64_t pos) {
  const std::string op = name;
  if (!rows || !cache || (!past && pos > 0)) return fail(BONSAI_ERR_NULL, op + ": null pointer");
  if (t <= 0 || n_kv_heads <= 0 || head_dim <= 0 || past_len < 0 ||
      !sizes_fit(t, n_kv_heads, head_dim, n_kv_heads, std::max(cache_len, past_len)))
    return fail(BONSAI_ERR_SHAPE, op + ": bad sizes T=" + std::to_string(t) + " Hkv=" + std::to_string(n_kv_heads) +
                                      " D=" + std::to_string(head_dim) + " S=" + std::to_string(cache_len));
  // pos is data (from the attention mask): compared without forming pos + t, which could wrap.
  if (pos < 0 || pos > past_len || pos > cache_len - t)
    return fail(BONSAI_ERR_SHAPE, op + ": " + std::to_string(t) + " new positions from " + std::to_string(pos) +
                                      " do not follow a past of " + std::to_string(past_len) +
                                      " positions in a cache of " + std::to_string(cache_len));
  const size_t row = size_t(head_dim) * sizeof(E);
  for (int64_t h = 0; h < n_kv_heads; ++h) {
    E* dst = cache + h * cache_len * head_dim;
    if (cache != past && pos > 0) memcpy(dst, past + h * past_len * head_dim, size_t(pos) * row);
    for (int64_t i = 0; i < t; ++i) memcpy(dst + (pos + i) * head_dim, rows + (i * n_kv_heads + h) * head_dim, row);
  }
  return BONSAI_OK;
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_cache_update(const float* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim,
                                   const float* past, int64_t past_len, float* cache, int64_t cache_len, int64_t pos) {
  bonsai::clear_error();
  return bonsai::cache_update("bonsai_cache_update", rows, t, n_kv_heads, head_dim, past, past_len, cache, cache_len,
                              pos);
}

extern "C" int bonsai_cache_update_f16(const uint16_t* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim,
                                       const uint16_t* past, int64_t past_len, uint16_t* cache, int64_t cache_len,
                                       int64_t pos) {
  bonsai::clear_error();
  return bonsai::cache_update("bonsai_cache_update_f16", rows, t, n_kv_heads, head_dim, past, past_len, cache,
                              cache_len, pos);
}
