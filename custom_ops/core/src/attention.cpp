// Causal grouped-query attention over a KV cache, reading only the filled prefix [0, pos + T) of the cache.
// Why here and not ExecuTorch's custom_sdpa: that kernel needs libtorch, which a phone runner does not have, and
// attention over the whole max_seq_len cache would read more bytes per token than the weights themselves.
#include <math.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bonsai/kernels.h"
#include "status.h"

namespace bonsai {
namespace {

struct AttentionArgs {
  const float* q;        // [T, H, D]
  const float* k_cache;  // [Hkv, S, D]
  const float* v_cache;  // [Hkv, S, D]
  float* out;            // [T, H, D]
  int64_t t, h, d, hkv, s, pos;
};

// Independent partial sums let the compiler vectorize the reduction without -ffast-math.
constexpr int kLanes = 16;

float dot(const float* a, const float* b, int64_t n) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l] * b[i + l];
  float acc = 0.f;
  for (; i < n; ++i) acc += a[i] * b[i];
  for (int l = 0; l < kLanes; ++l) acc += part[l];
  return acc;
}

// One (token, head) pair: softmax(q . k_j / sqrt(D)) over j in [0, pos + token], times v_j.
void attend_one(const AttentionArgs& a, int64_t token, int64_t head, std::vector<float>& scores) {
  const int64_t kv = head / (a.h / a.hkv);
  const int64_t n_ctx = a.pos + token + 1;
  const float* q = a.q + (token * a.h + head) * a.d;
  const float* k = a.k_cache + kv * a.s * a.d;
  const float* v = a.v_cache + kv * a.s * a.d;
  const float scale = 1.0f / sqrtf(float(a.d));
  scores.resize(size_t(n_ctx));
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

void attention_task(void* ctx, int64_t task) {
  const auto& a = *static_cast<const AttentionArgs*>(ctx);
  thread_local std::vector<float> scores;
  attend_one(a, task / a.h, task % a.h, scores);
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_attention(const float* q, int64_t t, int64_t n_heads, int64_t head_dim, const float* k_cache,
                                const float* v_cache, int64_t n_kv_heads, int64_t cache_len, int64_t pos, float* out,
                                const bonsai_parallel* parallel) {
  using bonsai::fail;
  if (!q || !k_cache || !v_cache || !out) return fail(BONSAI_ERR_NULL, "bonsai_attention: null pointer");
  if (t <= 0 || n_heads <= 0 || head_dim <= 0 || n_kv_heads <= 0 || cache_len <= 0 || n_heads % n_kv_heads)
    return fail(BONSAI_ERR_SHAPE, "bonsai_attention: expected T, H, D, Hkv, S > 0 and H a multiple of Hkv, got T=" +
                                      std::to_string(t) + " H=" + std::to_string(n_heads) + " D=" +
                                      std::to_string(head_dim) + " Hkv=" + std::to_string(n_kv_heads));
  if (pos < 0 || pos + t > cache_len)
    return fail(BONSAI_ERR_SHAPE, "bonsai_attention: positions [" + std::to_string(pos) + ", " +
                                      std::to_string(pos + t) + ") do not fit the cache of " +
                                      std::to_string(cache_len));
  bonsai::clear_error();
  bonsai::AttentionArgs args{q, k_cache, v_cache, out, t, n_heads, head_dim, n_kv_heads, cache_len, pos};
  const int64_t tasks = t * n_heads;
  if (parallel && parallel->parallel_for && parallel->num_threads > 1 && tasks > 1) {
    parallel->parallel_for(parallel->runtime_ctx, tasks, bonsai::attention_task, &args);
  } else {
    for (int64_t i = 0; i < tasks; ++i) bonsai::attention_task(&args, i);
  }
  return BONSAI_OK;
}
