// ONNX Runtime custom-op library (libbonsai_ort_ops.so): bonsai::TernaryMatMul, bonsai::DenseMatMul and
// bonsai::Attention, thin lite-API bindings over the shared kernel core. The core validates the tensors
// (bonsai_check_*), then they call bonsai_ternary_linear / bonsai_dense_linear / bonsai_attention with ONNX
// Runtime's intra-op thread pool as the parallel-for hook. No math here (custom_ops/core does it). Node contracts:
// docs/FORMAT.md.
//
// ABI rules (shared/notes/onnxruntime.md): ORT_API_MANUAL_INIT, the API is fetched in RegisterCustomOps, and the
// library does not link libonnxruntime (the loading process provides it).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "bonsai/kernels.h"

namespace bonsai_ort {

using Ort::Custom::Tensor;

constexpr const char* kDomain = "bonsai";

// ---- the kernel core's parallel-for hook over OrtKernelContext's thread pool ----
struct Trampoline {
  bonsai_task_fn task;
  void* task_ctx;
};

inline void ort_parallel_for(void* runtime_ctx, int64_t n_tasks, bonsai_task_fn task, void* task_ctx) {
  Trampoline t{task, task_ctx};
  auto fn = [](void* data, size_t i) {
    auto* tr = static_cast<Trampoline*>(data);
    tr->task(tr->task_ctx, static_cast<int64_t>(i));
  };
  OrtStatus* status = Ort::GetApi().KernelContext_ParallelFor(static_cast<const OrtKernelContext*>(runtime_ctx),
                                                               fn, static_cast<size_t>(n_tasks), 0, &t);
  if (status != nullptr) {  // no pool available: run inline
    Ort::GetApi().ReleaseStatus(status);
    for (int64_t i = 0; i < n_tasks; ++i) task(task_ctx, i);
  }
}

inline bonsai_parallel ort_parallel(OrtKernelContext* ctx) {
  // ORT does not expose its pool size to kernels; the core cuts about this many tasks and ORT schedules them on
  // however many threads the session has (1 thread: all inline).
  const unsigned hw = std::thread::hardware_concurrency();
  return {ort_parallel_for, ctx, static_cast<int32_t>(hw > 0 ? hw : 1)};
}

// An int attribute that older graphs may lack.
inline int64_t optional_attribute(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = fallback;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {  // absent: the default
    Ort::GetApi().ReleaseStatus(status);
    return fallback;
  }
  return value;
}

inline Ort::Status fail(const std::string& msg) { return Ort::Status(msg.c_str(), ORT_INVALID_ARGUMENT); }

// The core's dtype code of an element type.
template <typename T>
constexpr int32_t dtype_of() {
  if constexpr (std::is_same_v<T, float>) return BONSAI_DTYPE_F32;
  else if constexpr (std::is_same_v<T, Ort::BFloat16_t>) return BONSAI_DTYPE_BF16;
  else if constexpr (std::is_same_v<T, Ort::Float16_t>) return BONSAI_DTYPE_F16;
  else if constexpr (std::is_same_v<T, int8_t>) return BONSAI_DTYPE_I8;
  else if constexpr (std::is_same_v<T, uint8_t>) return BONSAI_DTYPE_U8;
  else return BONSAI_DTYPE_OTHER;
}

// An ORT tensor as the core's validators (bonsai_check_*) see it; points into the tensor's shape vector.
template <typename T>
bonsai_tensor describe(const Tensor<T>& t) {
  const auto& shape = t.Shape();
  return {dtype_of<T>(), static_cast<int32_t>(shape.size()), shape.data()};
}

// Allocates y with x's shape, the last dim replaced by n (both linear ops produce [..., N]).
inline float* allocate_last_dim(Tensor<float>& y, const std::vector<int64_t>& x_shape, int64_t n) {
  std::vector<int64_t> shape(x_shape);
  shape.back() = n;
  return y.Allocate(shape);
}

// A kernel-core status as an ORT status, with the core's message.
inline Ort::Status core_status(const char* op, int status) {
  if (status == BONSAI_OK) return Ort::Status(nullptr);
  return Ort::Status((std::string(op) + ": " + bonsai_last_error()).c_str(), ORT_FAIL);
}

// Runs a Compute body; ORT API calls inside it (the output allocation of a huge [..., N]) throw Ort::Exception,
// which becomes the node's error status instead of unwinding through ORT's C callback.
template <typename Body>
Ort::Status guarded(const char* op, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), ORT_FAIL);
  }
}

// ---- bonsai::TernaryMatMul(x f32 [..., K], packed u8 [N, row_bytes(K)], scales S) -> y f32 [..., N] ----
// attributes: in_features (K), act_bits (0 or 8), scale_layout (0, the default: S f32 [N]; 1: S f16
// [N, num_blocks(K)], one per block). One kernel per scales dtype, same op name; the core checks that
// scale_layout fits the dtype ORT picked the kernel by.
template <typename S>
struct TernaryMatMul {
  static constexpr const char* kName = "bonsai::TernaryMatMul";
  int64_t in_features = 0;
  int64_t act_bits = 0;
  int64_t scale_layout = 0;
  // An exported model's weights are initializers: their codes are checked once, here (a failure is reported by
  // the first Compute). Weights fed as graph inputs may change every call and are checked every call.
  bool packed_is_constant = false;
  std::string packed_error;

  TernaryMatMul(const OrtApi* /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    in_features = ki.GetAttribute<int64_t>("in_features");
    act_bits = ki.GetAttribute<int64_t>("act_bits");
    scale_layout = optional_attribute(info, "scale_layout", 0);
    int is_constant = 0;
    const Ort::ConstValue packed = ki.GetTensorConstantInput(1, &is_constant);
    if (!is_constant) return;
    const auto type = packed.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> shape = type.GetShape();
    // A constant of another shape or type is refused by Compute's checks, which name the problem.
    if (type.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || shape.size() != 2 || shape[0] < 1 ||
        shape[1] < 1)
      return;
    packed_is_constant = true;
    if (bonsai_check_ternary_codes(kName, packed.GetTensorData<uint8_t>(), shape[0], shape[1]) != BONSAI_OK)
      packed_error = bonsai_last_error();
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<float>& x, const Tensor<uint8_t>& packed,
                      const Tensor<S>& scales, Tensor<float>& y) {
    const bonsai_tensor xd = describe(x), pd = describe(packed), sd = describe(scales);
    int64_t m = 0, n = 0;
    if (bonsai_check_ternary_linear_ex(kName, &xd, &pd, &sd, in_features, act_bits, scale_layout, &m, &n) !=
        BONSAI_OK)
      return fail(bonsai_last_error());
    if (!packed_error.empty()) return fail(packed_error);
    if (!packed_is_constant && bonsai_check_ternary_codes(kName, packed.Data(), n, pd.dims[1]) != BONSAI_OK)
      return fail(bonsai_last_error());
    return guarded(kName, [&] {
      float* out = allocate_last_dim(y, x.Shape(), n);
      if (m == 0) return Ort::Status(nullptr);  // an empty x: nothing to compute
      const bonsai_parallel par = ort_parallel(ctx);
      return core_status(kName, bonsai_ternary_linear_ex(x.Data(), m, in_features, packed.Data(), pd.dims[1],
                                                         scales.DataRaw(), static_cast<int32_t>(scale_layout), n,
                                                         static_cast<int32_t>(act_bits), out, &par));
    });
  }
};

// ---- bonsai::DenseMatMul(x f32 [..., K], weight W [N, ...], scales S) -> y f32 [..., N] ----
// attributes: in_features (K), weight_bits (16: W bf16 [N, K], S f32 [N]; 8: W int8 [N, K], S bf16 [N, G]; 4: W
// uint8 [N, 16 G] nibbles, S bf16 (scale, offset) [N, G, 2]; G = ceil(K/32)), act_bits (0, the default: float
// activations; 8: int8 per group, weight_bits 8 or 4). One kernel per (weight, scale) dtype pair, same op name;
// the core checks that weight_bits fits the dtypes ORT picked the kernel by.
template <typename W, typename S>
struct DenseMatMul {
  static constexpr const char* kName = "bonsai::DenseMatMul";
  int64_t in_features = 0;
  int64_t weight_bits = 0;
  int64_t act_bits = 0;

  DenseMatMul(const OrtApi* /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    in_features = ki.GetAttribute<int64_t>("in_features");
    weight_bits = ki.GetAttribute<int64_t>("weight_bits");
    act_bits = optional_attribute(info, "act_bits", 0);
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<float>& x, const Tensor<W>& weight,
                      const Tensor<S>& scales, Tensor<float>& y) {
    const bonsai_tensor xd = describe(x), wd = describe(weight), sd = describe(scales);
    int64_t m = 0, n = 0;
    if (bonsai_check_dense_linear(kName, &xd, &wd, &sd, in_features, weight_bits, act_bits, &m, &n) != BONSAI_OK)
      return fail(bonsai_last_error());
    return guarded(kName, [&] {
      float* out = allocate_last_dim(y, x.Shape(), n);
      if (m == 0) return Ort::Status(nullptr);  // an empty x: nothing to compute
      const bonsai_parallel par = ort_parallel(ctx);
      return core_status(kName, bonsai_dense_linear(x.Data(), m, in_features, weight.DataRaw(),
                                                    static_cast<int32_t>(weight_bits), scales.DataRaw(), n,
                                                    static_cast<int32_t>(act_bits), out, &par));
    });
  }
};

// ---- bonsai::Attention: com.microsoft GroupQueryAttention's contract (do_rotary 0, batch 1) on our kernels ----
// (query f32 [1, T, H D], key / value f32 [1, T, Hkv D], past_key / past_value f32 [1, Hkv, P, D], seqlens_k i32 [1]
// = attended positions - 1, total_sequence_length i32 scalar) -> (output [1, T, H D], present_key / present_value
// [1, Hkv, max(P, attended), D]); attributes num_heads, kv_num_heads. The new tokens follow the past (attended <=
// P + T) and total_sequence_length, data like seqlens_k, may not ask for a longer present than that. Past and present may be one buffer (written in
// place, as ORT's own node does) or two (the past is copied). ORT's CPU GroupQueryAttention took 6.7 of 28 ms a
// token at Bonsai's size; this reads only the filled prefix of the cache.
// The core's cache entry points by element type: float32, or fp16 as raw bits.
inline int cache_update(const float* rows, int64_t t, int64_t hkv, int64_t d, const float* past, int64_t past_len,
                        float* cache, int64_t cache_len, int64_t pos) {
  return bonsai_cache_update(rows, t, hkv, d, past, past_len, cache, cache_len, pos);
}
inline int cache_update(const uint16_t* rows, int64_t t, int64_t hkv, int64_t d, const uint16_t* past,
                        int64_t past_len, uint16_t* cache, int64_t cache_len, int64_t pos) {
  return bonsai_cache_update_f16(rows, t, hkv, d, past, past_len, cache, cache_len, pos);
}
inline int cache_attention(const float* q, int64_t t, int64_t h, int64_t d, const float* k, const float* v,
                           int64_t hkv, int64_t s, int64_t pos, float* out, const bonsai_parallel* par) {
  return bonsai_attention(q, t, h, d, k, v, hkv, s, pos, out, par);
}
inline int cache_attention(const float* q, int64_t t, int64_t h, int64_t d, const uint16_t* k, const uint16_t* v,
                           int64_t hkv, int64_t s, int64_t pos, float* out, const bonsai_parallel* par) {
  return bonsai_attention_f16(q, t, h, d, k, v, hkv, s, pos, out, par);
}

// C: the cache side's element type (key, value, both pasts and both presents): float, or Ort::Float16_t for the
// fp16 cache of `export --kv-cache f16` (the graph casts key and value to fp16 before this node).
template <class C>
struct Attention {
  static constexpr const char* kName = "bonsai::Attention";
  int64_t n_heads = 0, n_kv_heads = 0;

  Attention(const OrtApi* /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    n_heads = ki.GetAttribute<int64_t>("num_heads");
    n_kv_heads = ki.GetAttribute<int64_t>("kv_num_heads");
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<float>& q, const Tensor<C>& k, const Tensor<C>& v,
                      const Tensor<C>& past_key, const Tensor<C>& past_value, const Tensor<int32_t>& seqlens_k,
                      const Tensor<int32_t>& total_seq, Tensor<float>& y, Tensor<C>& present_key,
                      Tensor<C>& present_value) {
    const bonsai_tensor qd = describe(q), kd = describe(k), vd = describe(v), pk = describe(past_key),
                        pv = describe(past_value);
    int64_t t = 0, d = 0, past_len = 0;
    if (bonsai_check_cache_attention(kName, &qd, &kd, &vd, &pk, &pv, n_heads, n_kv_heads, &t, &d, &past_len) !=
        BONSAI_OK)
      return fail(bonsai_last_error());
    if (seqlens_k.NumberOfElement() != 1 || total_seq.NumberOfElement() != 1)
      return fail(std::string(kName) + ": seqlens_k and total_sequence_length must hold one value each (batch 1)");
    const int64_t attended = int64_t(seqlens_k.Data()[0]) + 1, total = total_seq.Data()[0];
    const int64_t cache_len = past_len > attended ? past_len : attended;
    if (attended < t || attended > past_len + t || total > cache_len)
      return fail(std::string(kName) + ": seqlens_k " + std::to_string(attended - 1) + " (total_sequence_length " +
                  std::to_string(total) + ") does not fit " + std::to_string(t) + " new tokens after a past of " +
                  std::to_string(past_len) + " positions");
    return guarded(kName, [&] {
      float* out = y.Allocate(q.Shape());
      const std::vector<int64_t> cache_shape{1, n_kv_heads, cache_len, d};
      using E = std::conditional_t<std::is_same_v<C, float>, float, uint16_t>;  // the core's element type
      const auto raw = [](const C* p) { return reinterpret_cast<const E*>(p); };
      E* key_cache = reinterpret_cast<E*>(present_key.Allocate(cache_shape));
      E* value_cache = reinterpret_cast<E*>(present_value.Allocate(cache_shape));
      const int64_t pos = attended - t;
      for (auto [rows, past, cache] : {std::tuple{raw(k.Data()), raw(past_key.Data()), key_cache},
                                       std::tuple{raw(v.Data()), raw(past_value.Data()), value_cache}}) {
        const int status = cache_update(rows, t, n_kv_heads, d, past, past_len, cache, cache_len, pos);
        if (status != BONSAI_OK) return core_status(kName, status);
      }
      const bonsai_parallel par = ort_parallel(ctx);
      return core_status(kName, cache_attention(q.Data(), t, n_heads, d, key_cache, value_cache, n_kv_heads,
                                                cache_len, pos, out, &par));
    });
  }
};

}  // namespace bonsai_ort

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // a runtime older than our headers: report through its oldest API, which always exists
    const std::string msg = "libbonsai_ort_ops.so was built against the ONNX Runtime C API version " +
                            std::to_string(ORT_API_VERSION) + "; this runtime is older";
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, msg.c_str());
  }
  Ort::InitApi(api);
  // The domain and the ops outlive every session that uses them.
  using Ort::BFloat16_t;
  using Ort::Float16_t;
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> ternary[] = {
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::TernaryMatMul<float>>("TernaryMatMul", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::TernaryMatMul<Float16_t>>("TernaryMatMul", "CPUExecutionProvider")}};
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> dense[] = {
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<BFloat16_t, float>>("DenseMatMul", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<int8_t, BFloat16_t>>("DenseMatMul", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<uint8_t, BFloat16_t>>("DenseMatMul", "CPUExecutionProvider")}};
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> attention[] = {
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{
          Ort::Custom::CreateLiteCustomOp<bonsai_ort::Attention<float>>("Attention", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{
          Ort::Custom::CreateLiteCustomOp<bonsai_ort::Attention<Float16_t>>("Attention", "CPUExecutionProvider")}};
  static std::once_flag once;
  static Ort::CustomOpDomain domain{nullptr};
  try {
    std::call_once(once, [] {
      domain = Ort::CustomOpDomain(bonsai_ort::kDomain);
      for (auto& op : ternary) domain.Add(op.get());
      for (auto& op : dense) domain.Add(op.get());
      for (auto& op : attention) domain.Add(op.get());
    });
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
