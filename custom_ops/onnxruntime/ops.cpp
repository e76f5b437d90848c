// ONNX Runtime custom-op library (libbonsai_ort_ops.so): bonsai::TernaryMatMul and bonsai::DenseMatMul, thin
// lite-API bindings over the shared kernel core. They validate the tensors, then call bonsai_ternary_linear /
// bonsai_dense_linear with ONNX Runtime's intra-op thread pool as the parallel-for hook. No math here
// (custom_ops/core does it). Node contracts: docs/FORMAT.md.
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

inline Ort::Status fail(const std::string& msg) { return Ort::Status(msg.c_str(), ORT_INVALID_ARGUMENT); }

inline std::string dims(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
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

// ---- bonsai::TernaryMatMul(x f32 [..., K], packed u8 [N, row_bytes(K)], scales f32 [N]) -> y f32 [..., N] ----
// attributes: in_features (K), act_bits (0 or 8)
struct TernaryMatMul {
  int64_t in_features = 0;
  int64_t act_bits = 0;

  TernaryMatMul(const OrtApi* /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    in_features = ki.GetAttribute<int64_t>("in_features");
    act_bits = ki.GetAttribute<int64_t>("act_bits");
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<float>& x, const Tensor<uint8_t>& packed,
                      const Tensor<float>& scales, Tensor<float>& y) {
    const int64_t k = in_features;
    const auto& xs = x.Shape();
    const auto& ps = packed.Shape();
    const auto& ss = scales.Shape();
    if (act_bits != 0 && act_bits != 8)
      return fail("bonsai::TernaryMatMul: act_bits must be 0 or 8, got " + std::to_string(act_bits));
    if (k <= 0 || xs.empty() || xs.back() != k)
      return fail("bonsai::TernaryMatMul: x " + dims(xs) + " must end in in_features=" + std::to_string(k));
    if (ps.size() != 2 || ps[1] != bonsai_row_bytes(k) || ss.size() != 1 || ss[0] != ps[0])
      return fail("bonsai::TernaryMatMul: packed " + dims(ps) + " / scales " + dims(ss) + " do not fit K=" +
                  std::to_string(k) + " (expected [N, " + std::to_string(bonsai_row_bytes(k)) + "] / [N])");
    const int64_t n = ps[0];
    float* out = allocate_last_dim(y, xs, n);
    const int64_t m = x.NumberOfElement() / k;
    if (m == 0) return Ort::Status(nullptr);
    const bonsai_parallel par = ort_parallel(ctx);
    return core_status("bonsai::TernaryMatMul", bonsai_ternary_linear(x.Data(), m, k, packed.Data(), ps[1],
                                                                      scales.Data(), n,
                                                                      static_cast<int32_t>(act_bits), out, &par));
  }
};

// ---- bonsai::DenseMatMul(x f32 [..., K], weight W [N, ...], scales f32) -> y f32 [..., N] ----
// attributes: in_features (K), weight_bits (16: W bf16 [N, K], scales [N]; 8: W int8 [N, K], scales [N];
// 4: W uint8 [N, ceil(K/2)] nibbles, scales [N, ceil(K/32)]). One kernel per weight dtype, same op name.
template <typename W, int64_t kBits>
struct DenseMatMul {
  int64_t in_features = 0;
  int64_t weight_bits = 0;

  DenseMatMul(const OrtApi* /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    in_features = ki.GetAttribute<int64_t>("in_features");
    weight_bits = ki.GetAttribute<int64_t>("weight_bits");
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<float>& x, const Tensor<W>& weight,
                      const Tensor<float>& scales, Tensor<float>& y) {
    const int64_t k = in_features;
    const auto& xs = x.Shape();
    const auto& ws = weight.Shape();
    const auto& ss = scales.Shape();
    const int64_t wk = kBits == 4 ? (k + 1) / 2 : k;
    const int64_t groups = kBits == 4 ? (k + BONSAI_DENSE_INT4_GROUP - 1) / BONSAI_DENSE_INT4_GROUP : 1;
    if (weight_bits != kBits)
      return fail("bonsai::DenseMatMul: weight_bits " + std::to_string(weight_bits) + " does not fit the weight's "
                  "dtype (expected " + std::to_string(kBits) + ")");
    if (k <= 0 || xs.empty() || xs.back() != k)
      return fail("bonsai::DenseMatMul: x " + dims(xs) + " must end in in_features=" + std::to_string(k));
    const bool scales_ok = kBits == 4 ? (ss.size() == 2 && ss[1] == groups) : ss.size() == 1;
    if (ws.size() != 2 || ws[1] != wk || !scales_ok || ss[0] != ws[0])
      return fail("bonsai::DenseMatMul: weight " + dims(ws) + " / scales " + dims(ss) + " do not fit K=" +
                  std::to_string(k) + " and weight_bits=" + std::to_string(kBits));
    const int64_t n = ws[0];
    float* out = allocate_last_dim(y, xs, n);
    const int64_t m = x.NumberOfElement() / k;
    if (m == 0) return Ort::Status(nullptr);
    const bonsai_parallel par = ort_parallel(ctx);
    return core_status("bonsai::DenseMatMul", bonsai_dense_linear(x.Data(), m, k, weight.DataRaw(),
                                                                  static_cast<int32_t>(kBits), scales.Data(), n,
                                                                  out, &par));
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
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> ternary{
      Ort::Custom::CreateLiteCustomOp<bonsai_ort::TernaryMatMul>("TernaryMatMul", "CPUExecutionProvider")};
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> dense[] = {
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<Ort::BFloat16_t, 16>>("DenseMatMul", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<int8_t, 8>>("DenseMatMul", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{Ort::Custom::CreateLiteCustomOp<
          bonsai_ort::DenseMatMul<uint8_t, 4>>("DenseMatMul", "CPUExecutionProvider")}};
  static std::once_flag once;
  static Ort::CustomOpDomain domain{nullptr};
  try {
    std::call_once(once, [] {
      domain = Ort::CustomOpDomain(bonsai_ort::kDomain);
      domain.Add(ternary.get());
      for (auto& op : dense) domain.Add(op.get());
    });
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
