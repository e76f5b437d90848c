// Scalar reference kernels: plain C++, no intrinsics, the oracle that every ISA table is tested against and the
// fallback for CPUs without a faster table. Written for clarity, not speed.
#include <math.h>
#include <string.h>

#include "../kernel_table.h"

namespace bonsai {
namespace {

// Ternary value of weight k of a packed row (formats.py: bits 2i..2i+1 of byte j = weight 32i + j of a block).
inline int weight_at(const uint8_t* row, int64_t k) {
  const uint8_t byte = row[(k / kBlockK) * kBlockBytes + (k % kBlockK) % kLanes];
  const int plane = int((k % kBlockK) / kLanes);
  return int((byte >> (2 * plane)) & kCodeMask) - kCodeOffset;
}

void quantize_row_i8_ref(const float* x, int64_t k, int8_t* q, float* d) {
  *d = quantize_absmax(x, k, q);
  memset(q + k, 0, size_t(padded_k(k) - k));
}

void gemm_t2_i8_ref(const int8_t* q, int64_t q_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                    int64_t w_stride, int64_t n0, int64_t n1, int32_t* acc, int64_t acc_stride) {
  const int64_t kp = nblocks * kBlockK;
  for (int64_t m = 0; m < m_count; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      int32_t sum = 0;
      for (int64_t k = 0; k < kp; ++k) sum += int32_t(q[m * q_stride + k]) * weight_at(w + n * w_stride, k);
      acc[m * acc_stride + n] = sum;
    }
  }
}

void gemv_t2_i8_ref(const int8_t* q, int64_t nblocks, const uint8_t* w, int64_t w_stride, int64_t n0, int64_t n1,
                    int32_t* acc) {
  gemm_t2_i8_ref(q, 0, 1, nblocks, w, w_stride, n0, n1, acc, 0);
}

void gemm_t2_f32_ref(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                     int64_t w_stride, const float* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  const int64_t kp = nblocks * kBlockK;
  for (int64_t m = 0; m < m_count; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      float sum = 0.0f;
      for (int64_t k = 0; k < kp; ++k) sum += float(weight_at(w + n * w_stride, k)) * x[m * x_stride + k];
      y[m * y_stride + n] = scales[n] * sum;
    }
  }
}

void gemv_t2_f32_ref(const float* x, int64_t nblocks, const uint8_t* w, int64_t w_stride, const float* scales,
                     int64_t n0, int64_t n1, float* y) {
  gemm_t2_f32_ref(x, 0, 1, nblocks, w, w_stride, scales, n0, n1, y, 0);
}

// Block scales: each block's exact int32 sum, scaled and added in block order (FORMAT.md); the caller applies d.
void gemm_t2g_i8_ref(const int8_t* q, int64_t q_stride, const int32_t* /*qsums*/, int64_t m_count, int64_t nblocks,
                     const uint8_t* w, int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* z,
                     int64_t z_stride) {
  for (int64_t m = 0; m < m_count; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nblocks; ++b) {
        int32_t block = 0;
        for (int64_t k = b * kBlockK; k < (b + 1) * kBlockK; ++k)
          block += int32_t(q[m * q_stride + k]) * weight_at(w + n * w_stride, k);
        acc = acc + float(block) * f16_to_f32(scales[n * nblocks + b]);
      }
      z[m * z_stride + n] = acc;
    }
  }
}

void gemm_t2g_f32_ref(const float* x, int64_t x_stride, int64_t m_count, int64_t nblocks, const uint8_t* w,
                      int64_t w_stride, const uint16_t* scales, int64_t n0, int64_t n1, float* y, int64_t y_stride) {
  for (int64_t m = 0; m < m_count; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nblocks; ++b) {
        float block = 0.0f;
        for (int64_t k = b * kBlockK; k < (b + 1) * kBlockK; ++k)
          block += float(weight_at(w + n * w_stride, k)) * x[m * x_stride + k];
        acc += f16_to_f32(scales[n * nblocks + b]) * block;
      }
      y[m * y_stride + n] = acc;
    }
  }
}

}  // namespace

const KernelTable kRefTable = {
    "ref", quantize_row_i8_ref, gemv_t2_i8_ref, gemm_t2_i8_ref, gemv_t2_f32_ref, gemm_t2_f32_ref,
    gemm_t2g_i8_ref, gemm_t2g_f32_ref, dense_f32_ref, dense_i8_ref, attend_ref,
};

}  // namespace bonsai
