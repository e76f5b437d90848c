// Public C ABI of the packed-ternary kernel core (libbonsai_kernels). Framework-free: raw pointers and sizes.
// Layout of the packed weights: ternary_format.h / docs/FORMAT.md.
//
// Every entry point validates its arguments before touching memory and returns a bonsai_status; on failure
// bonsai_last_error() (thread-local) says what was wrong. Kernels never read or write outside the ranges the
// sizes describe. Code 3 in the packed weights is invalid; the matmuls read it as +2 rather than pay a pass over
// the weights per call, and the runtime bindings check each weight buffer once (bonsai_check_ternary_codes).
#ifndef BONSAI_KERNELS_H
#define BONSAI_KERNELS_H

#include <stdint.h>

#include "bonsai/parallel.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bonsai_status {
  BONSAI_OK = 0,
  BONSAI_ERR_NULL = 1,      // a required pointer is null
  BONSAI_ERR_SHAPE = 2,     // M, N or K <= 0, or packed_row_bytes != row_bytes(K)
  BONSAI_ERR_ACT_BITS = 3,  // act_bits not in {0, 8}
  BONSAI_ERR_ISA = 4,       // unknown ISA name, or the ISA is not supported by this CPU
  BONSAI_ERR_ALLOC = 5,     // scratch memory or threads could not be allocated
  BONSAI_ERR_CODES = 6,     // packed weights hold the invalid 2-bit code 3
  BONSAI_ERR_LAYOUT = 7,    // scale_layout not 0 (channel) or 1 (block)
} bonsai_status;

// Size limits every entry point enforces (they keep every index and byte count far from int64 overflow).
#define BONSAI_MAX_K (INT64_C(1) << 24)     // K (inputs of a linear layer): int32 accumulators stay exact
#define BONSAI_MAX_ROWS (INT64_C(1) << 31)  // M, N (tokens, output channels); also T, H, D, S of attention
#define BONSAI_MAX_RANK 8                   // rank of any tensor given to the bonsai_check_* functions

// Message of the last failed call on this thread ("" if none).
BONSAI_API const char* bonsai_last_error(void);

// Name of the kernel table in use: "ref", "avx2", "avx512", "neon" or "dotprod". Chosen once from the CPU's
// features, or from the environment variable BONSAI_FORCE_ISA (an unsupported or unknown name makes every
// kernel call fail with BONSAI_ERR_ISA, so a forced test never silently runs another path).
BONSAI_API const char* bonsai_isa_name(void);

// Switches the kernel table at run time (tests). Same names as BONSAI_FORCE_ISA; "auto" picks the best.
BONSAI_API int bonsai_set_isa(const char* name);

// Every table name, best first, comma-separated ("avx512,avx2,dotprod,neon,ref"): dispatch.cpp's registry, on
// every architecture (a name of another architecture is never supported).
BONSAI_API const char* bonsai_isa_names(void);

// Whether this CPU can run the named table (1) or not (0, also for unknown names).
BONSAI_API int bonsai_isa_supported(const char* name);

// Bytes of one packed row of K weights, or -1 unless 0 < K <= BONSAI_MAX_K.
BONSAI_API int64_t bonsai_row_bytes(int64_t k);

// y[M, N] = ternary linear of x[M, K] (row-major float32) with packed weights [N, packed_row_bytes] and
// per-channel scales[N]:
//   act_bits = 0: y[m, n] = scale[n] * sum_k T[n, k] * x[m, k]          (float32, Bonsai exact up to rounding)
//   act_bits = 8: per-token absmax int8 quantization of x, exact int32 accumulation,
//                 y[m, n] = (float(acc[m, n]) * d[m]) * scale[n]        (bit-exact with formats.matmul)
// M = 1 runs the GEMV kernel (decode); M > 1 the blocked GEMM (prefill). `parallel` may be null.
BONSAI_API int bonsai_ternary_linear(const float* x, int64_t m, int64_t k, const uint8_t* packed,
                                     int64_t packed_row_bytes, const float* scales, int64_t n, int32_t act_bits,
                                     float* y, const bonsai_parallel* parallel);

// bonsai_ternary_linear with the scales' layout named (docs/FORMAT.md "Scales"): scale_layout 0 = float32
// scales[N] (exactly bonsai_ternary_linear); 1 = fp16 block scales [N, num_blocks(K)] (raw binary16 bits, one
// per block of 128 weights of each row): y[m, n] = sum_k s[n, k / 128] * T[n, k] * x[m, k]; with act_bits = 8
// each block's exact int32 sum is scaled and added in block order, then times d[m] (bit-exact with
// formats.matmul_blocks). Errors as bonsai_ternary_linear, plus BONSAI_ERR_LAYOUT.
BONSAI_API int bonsai_ternary_linear_ex(const float* x, int64_t m, int64_t k, const uint8_t* packed,
                                        int64_t packed_row_bytes, const void* scales, int32_t scale_layout, int64_t n,
                                        int32_t act_bits, float* y, const bonsai_parallel* parallel);

// out[i, :] = row ids[i] of the ternary matrix [N, K] as floats, W[n, k] = scale * T[n, k] with the scales of
// either layout (scale_layout 0: float32 [N]; 1: fp16 [N, num_blocks(K)]): the lookup of a ternary embedding
// table. Exact (a trit times a scale). out is [count, K]. Errors: BONSAI_ERR_SHAPE (sizes, packed_row_bytes, an id
// outside [0, N), checked before anything is written), BONSAI_ERR_LAYOUT.
BONSAI_API int bonsai_ternary_gather(const uint8_t* packed, int64_t n, int64_t k, int64_t packed_row_bytes,
                                     const void* scales, int32_t scale_layout, const int64_t* ids, int64_t count,
                                     float* out);

// acc[M, N] = sum_k q[m, k] * T[n, k] with int8 activations q[M, K] (row-major), exact int32: the integer core
// of act_bits = 8, exported so tests compare integers, not floats. Any int8 value is accepted.
BONSAI_API int bonsai_int8_accumulate(const int8_t* q, int64_t m, int64_t k, const uint8_t* packed,
                                      int64_t packed_row_bytes, int64_t n, int32_t* acc,
                                      const bonsai_parallel* parallel);

// Per-token absmax int8 quantization of x[M, K] as done inside bonsai_ternary_linear: q[M, K], d[M].
BONSAI_API int bonsai_quantize_activations(const float* x, int64_t m, int64_t k, int8_t* q, float* d);

// Causal grouped-query attention of T queries over a KV cache (float32, row-major):
//   q[T, H, D], k_cache/v_cache[Hkv, S, D], out[T, H, D]; query t sits at position pos + t and attends to cache
//   positions [0, pos + t] with softmax scale 1/sqrt(D). Only that prefix of the caches is read.
// Errors: BONSAI_ERR_SHAPE unless T, H, D, Hkv, S > 0, H % Hkv == 0 and 0 <= pos, pos + T <= S.
BONSAI_API int bonsai_attention(const float* q, int64_t t, int64_t n_heads, int64_t head_dim, const float* k_cache,
                                const float* v_cache, int64_t n_kv_heads, int64_t cache_len, int64_t pos,
                                float* out, const bonsai_parallel* parallel);

// bonsai_attention over fp16 caches (IEEE half, raw bits): every cached value is widened exactly to float32 and
// then computed as bonsai_attention computes it, so the result equals bonsai_attention's on float32 caches that
// hold the same values, bit for bit. Half the bytes per attended position.
BONSAI_API int bonsai_attention_f16(const float* q, int64_t t, int64_t n_heads, int64_t head_dim,
                                    const uint16_t* k_cache, const uint16_t* v_cache, int64_t n_kv_heads,
                                    int64_t cache_len, int64_t pos, float* out, const bonsai_parallel* parallel);

// The cache step of ONNX Runtime's GroupQueryAttention contract (our bonsai::Attention node): the new rows
// rows[T, Hkv, D] are written at positions [pos, pos + T) of cache[Hkv, cache_len, D]. When cache is not past (the
// runtime gave the present output a buffer of its own instead of the past's), positions [0, pos) of
// past[Hkv, past_len, D] are copied into it first. Errors: BONSAI_ERR_SHAPE unless T, Hkv, D > 0,
// 0 <= pos <= past_len and pos + T <= cache_len.
BONSAI_API int bonsai_cache_update(const float* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim,
                                   const float* past, int64_t past_len, float* cache, int64_t cache_len, int64_t pos);
// The same step over fp16 rows and caches (raw bits, copied as they are).
BONSAI_API int bonsai_cache_update_f16(const uint16_t* rows, int64_t t, int64_t n_kv_heads, int64_t head_dim,
                                       const uint16_t* past, int64_t past_len, uint16_t* cache, int64_t cache_len,
                                       int64_t pos);

// Weights per group along K that share one scale (and offset) in bonsai_dense_linear's group-wise formats.
// Mirrors formats.DENSE_GROUP (bonsai_export/formats.py); tests/test_kernels.py checks both agree.
#define BONSAI_DENSE_GROUP 32

// Quantized dense linear (the output head): y[M, N] = x[M, K] @ W^T with
//   weight_bits 16: W bf16 [N, K] (raw uint16 bits), scales float32 [N]: y[m, n] = scales[n] * sum_k W[n, k] x[m, k]
//   weight_bits 8:  W int8 codes q [N, K], scales bf16 s [N, G] (raw uint16 bits)
//   weight_bits 4:  W uint8 [N, 16 G], codes q 0..15 as nibbles: per group, byte j holds column j in its low
//                   nibble and column 16 + j in its high one; scales bf16 (s, o) pairs [N, G, 2]
// with G = ceil(K / BONSAI_DENSE_GROUP), one scale (and offset) per group g of BONSAI_DENSE_GROUP weights along K:
// W[n, k] = q[n, k] * s[n, g] (+ o[n, g]), y[m, n] = sum_k W[n, k] x[m, k].
// act_bits 0: float32 activations. act_bits 8 (weight_bits 8 or 4 only): each token's activations quantized per
// group g of BONSAI_DENSE_GROUP, xq[k] = clamp(rint(x[k] * 127 / a_g), -127, 127) with a_g the group's absmax and
// d_g = a_g / 127 (xq = 0, d_g = 0 for an all-zero group), then exact int32 sums per group:
//   y[m, n] = sum_g s[n, g] * d_g * sum_{k in g} q[n, k] xq[k]  (+ o[n, g] * d_g * sum_{k in g} xq[k]).
// Float32 accumulation; summation order unspecified. Errors: BONSAI_ERR_SHAPE, BONSAI_ERR_ACT_BITS (bad bits).
BONSAI_API int bonsai_dense_linear(const float* x, int64_t m, int64_t k, const void* weight, int32_t weight_bits,
                                   const void* scales, int64_t n, int32_t act_bits, float* y,
                                   const bonsai_parallel* parallel);

// ---- Tensor validation for the runtime bindings (ExecuTorch, ONNX Runtime) ----
// A runtime hands a kernel whole tensors whose dtype, rank and sizes a malformed program or input may get wrong
// in any way. Each op's contract is checked here, once for every binding, before any data is touched; a binding
// only translates its tensor type into bonsai_tensor and, on failure, reports bonsai_last_error(), which starts
// with `op` (the op's name in that runtime) and names the tensor, its shape and what was expected.
typedef enum bonsai_dtype {
  BONSAI_DTYPE_OTHER = 0,  // any type the ops never take
  BONSAI_DTYPE_F32 = 1,
  BONSAI_DTYPE_BF16 = 2,
  BONSAI_DTYPE_I8 = 3,
  BONSAI_DTYPE_U8 = 4,
  BONSAI_DTYPE_I64 = 5,
  BONSAI_DTYPE_F16 = 6,
} bonsai_dtype;

typedef struct bonsai_tensor {
  int32_t dtype;        // a bonsai_dtype
  int32_t rank;         // 0 .. BONSAI_MAX_RANK
  const int64_t* dims;  // rank sizes, each >= 0 (may be null when rank is 0)
} bonsai_tensor;

// ternary_linear(x f32 [..., K], packed u8 [N, row_bytes(K)], scales f32 [N]), K = in_features, act_bits 0 or 8.
// On success *m = the product of x's leading dims (0 for an empty x: nothing to compute) and *n = N (> 0).
BONSAI_API int bonsai_check_ternary_linear(const char* op, const bonsai_tensor* x, const bonsai_tensor* packed,
                                           const bonsai_tensor* scales, int64_t in_features, int64_t act_bits,
                                           int64_t* m, int64_t* n);

// As bonsai_check_ternary_linear with the scales' layout: 0: scales f32 [N]; 1: scales f16 [N, num_blocks(K)].
BONSAI_API int bonsai_check_ternary_linear_ex(const char* op, const bonsai_tensor* x, const bonsai_tensor* packed,
                                              const bonsai_tensor* scales, int64_t in_features, int64_t act_bits,
                                              int64_t scale_layout, int64_t* m, int64_t* n);

// dense_linear(x f32 [..., K], weight, scales): weight_bits 16: weight bf16 [N, K], scales f32 [N]; 8: int8 [N, K],
// scales bf16 [N, ceil(K/32)]; 4: uint8 [N, 16 ceil(K/32)], scales bf16 [N, ceil(K/32), 2]. Same outputs as
// bonsai_check_ternary_linear.
BONSAI_API int bonsai_check_dense_linear(const char* op, const bonsai_tensor* x, const bonsai_tensor* weight,
                                         const bonsai_tensor* scales, int64_t in_features, int64_t weight_bits,
                                         int64_t act_bits, int64_t* m, int64_t* n);

// Code 3 anywhere in packed [n, packed_row_bytes]: BONSAI_ERR_CODES naming the first row and weight that hold it.
// One pass over the weights: the bindings call it once per constant weight, not per matmul.
BONSAI_API int bonsai_check_ternary_codes(const char* op, const uint8_t* packed, int64_t n, int64_t packed_row_bytes);

// attention(q f32 [1, T, H, D], k_cache / v_cache [1, Hkv, S, D], both f32 or both f16, input_pos i64 with one
// element): shapes only; the position itself is data, checked by bonsai_attention.
BONSAI_API int bonsai_check_attention(const char* op, const bonsai_tensor* q, const bonsai_tensor* k_cache,
                                      const bonsai_tensor* v_cache, const bonsai_tensor* input_pos);

// cache_attention(q f32 [1, T, H * D], k / v [1, T, Hkv * D], past_key / past_value [1, Hkv, P, D], the four of
// one type, f32 or f16) with
// H = n_heads and Hkv = n_kv_heads (GroupQueryAttention's layout): shapes only. On success *t = T, *head_dim = D
// and *past_len = P (0 for an empty past).
BONSAI_API int bonsai_check_cache_attention(const char* op, const bonsai_tensor* q, const bonsai_tensor* k,
                                            const bonsai_tensor* v, const bonsai_tensor* past_key,
                                            const bonsai_tensor* past_value, int64_t n_heads, int64_t n_kv_heads,
                                            int64_t* t, int64_t* head_dim, int64_t* past_len);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // BONSAI_KERNELS_H
