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

float dot(const float* a, const float* b, int64_t n) {
  float part[kRefLanes] = {};
  int64_t i = 0;
  for (; i + kRefLanes <= n; i += kRefLanes)
    for (int l = 0; l < kRefLanes; ++l) part[l] += a[i + l] * b[i + l];
  float acc = 0.f;
  for (; i < n; ++i) acc += a[i] * b[i];
  for (int l = 0; l < kRefLanes; ++l) acc += part[l];
  return acc;
}

}  // namespace

// The reference kernel (table "ref"): one query head at a time, softmax(q . k_j / sqrt(D)) over
// j in [0, pos + token], times v_j.
void attend_ref(const AttentionProblem& a, int64_t token, int64_t kv, float* scores) {
  const int64_t group = a.h / a.hkv, n_ctx = a.pos + token + 1;
  const float* k = a.k + kv * a.s * a.d;
  const float* v = a.v + kv * a.s * a.d;
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
      const float* vj = v + j * a.d;
      for (int64_t i = 0; i < a.d; ++i) out[i] += p * vj[i];
    }
  }
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

extern "C" int bonsai_attention(const float* q, int64_t t, int64_t n_heads, int64_t head_dim, const float* k_cache,
                                const float* v_cache, int64_t n_kv_heads, int64_t cache_len, int64_t pos, float* out,
                                const bonsai_parallel* parallel) {
  using namespace bonsai;
  clear_error();
  if (!q || !k_cache || !v_cache || !out) return fail(BONSAI_ERR_NULL, "bonsai_attention: null pointer");
  if (t <= 0 || n_heads <= 0 || head_dim <= 0 || n_kv_heads <= 0 || cache_len <= 0 || n_heads % n_kv_heads)
    return fail(BONSAI_ERR_SHAPE, "bonsai_attention: expected T, H, D, Hkv, S > 0 and H a multiple of Hkv, got T=" +
                                      std::to_string(t) + " H=" + std::to_string(n_heads) + " D=" +
                                      std::to_string(head_dim) + " Hkv=" + std::to_string(n_kv_heads));
  if (!sizes_fit(t, n_heads, head_dim, n_kv_heads, cache_len))
    return fail(BONSAI_ERR_SHAPE, "bonsai_attention: sizes too large, got T=" + std::to_string(t) + " H=" +
                                      std::to_string(n_heads) + " D=" + std::to_string(head_dim) + " Hkv=" +
                                      std::to_string(n_kv_heads) + " S=" + std::to_string(cache_len));
  // pos is data (input_pos), any int64: compare without forming pos + t, which could wrap.
  if (pos < 0 || pos > cache_len - t)
    return fail(BONSAI_ERR_SHAPE, "bonsai_attention: input_pos " + std::to_string(pos) + " with T=" +
                                      std::to_string(t) + " does not fit the cache of " + std::to_string(cache_len) +
                                      " positions (need 0 <= pos <= " + std::to_string(cache_len - t) + ")");
  const KernelTable* table = active_table();
  if (!table) return BONSAI_ERR_ISA;
  AttentionJob job{table, {q, k_cache, v_cache, out, t, n_heads, head_dim, n_kv_heads, cache_len, pos}};
  run_tasks(parallel, t * n_kv_heads, attention_task, &job);  // one task per (token, KV head)
  if (job.out_of_memory) return fail(BONSAI_ERR_ALLOC, "bonsai_attention: out of memory for the score buffer");
  return BONSAI_OK;
}

extern "C" int bonsai_cache_update(const float* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim,
                                   const float* past, int64_t past_len, float* cache, int64_t cache_len, int64_t pos) {
  using namespace bonsai;
  clear_error();
  if (!rows || !cache || (!past && pos > 0)) return fail(BONSAI_ERR_NULL, "bonsai_cache_update: null pointer");
  if (t <= 0 || n_kv_heads <= 0 || head_dim <= 0 || past_len < 0 ||
      !sizes_fit(t, n_kv_heads, head_dim, n_kv_heads, std::max(cache_len, past_len)))
    return fail(BONSAI_ERR_SHAPE, "bonsai_cache_update: bad sizes T=" + std::to_string(t) + " Hkv=" +
                                      std::to_string(n_kv_heads) + " D=" + std::to_string(head_dim) + " S=" +
                                      std::to_string(cache_len));
  // pos is data (from the attention mask): compared without forming pos + t, which could wrap.
  if (pos < 0 || pos > past_len || pos > cache_len - t)
    return fail(BONSAI_ERR_SHAPE, "bonsai_cache_update: " + std::to_string(t) + " new positions from " +
                                      std::to_string(pos) + " do not follow a past of " + std::to_string(past_len) +
                                      " positions in a cache of " + std::to_string(cache_len));
  const size_t row = size_t(head_dim) * sizeof(float);
  for (int64_t h = 0; h < n_kv_heads; ++h) {
    float* dst = cache + h * cache_len * head_dim;
    if (cache != past && pos > 0) memcpy(dst, past + h * past_len * head_dim, size_t(pos) * row);
    for (int64_t i = 0; i < t; ++i) memcpy(dst + (pos + i) * head_dim, rows + (i * n_kv_heads + h) * head_dim, row);
  }
  return BONSAI_OK;
}
