// Rows of a packed ternary matrix as floats (bonsai_ternary_gather): the embedding lookup of a ternary embedding
// table (Ternary-Bonsai's), one row per token. Scalar on purpose: a token reads one row (K weights), so the
// lookup costs nothing next to the matmuls, and the same code runs on every ISA.
#include <string.h>

#include <string>

#include "bonsai/kernels.h"
#include "kernel_table.h"
#include "status.h"

namespace bonsai {
namespace {

// Row `row` of the packed matrix times its scales into out[K]: block b's 32 bytes give weights
// 128b + 32i + j from bits 2i..2i+1 of byte j (FORMAT.md), t = code - 1, exact in float.
void unpack_row(const uint8_t* row, int64_t k, const void* scales, int32_t layout, int64_t n_row, float* out) {
  const int64_t nb = num_blocks(k);
  for (int64_t b = 0; b < nb; ++b) {
    const float s = layout == kScaleBlock ? f16_to_f32(static_cast<const uint16_t*>(scales)[n_row * nb + b])
                                          : static_cast<const float*>(scales)[n_row];
    float block[kBlockK];
    for (int i = 0; i < kPlanes; ++i)
      for (int j = 0; j < kLanes; ++j)
        block[i * kLanes + j] = float(int((row[b * kBlockBytes + j] >> (2 * i)) & kCodeMask) - kCodeOffset) * s;
    const int64_t k0 = b * kBlockK, count = k - k0 < kBlockK ? k - k0 : kBlockK;
    memcpy(out + k0, block, size_t(count) * sizeof(float));
  }
}

}  // namespace
}  // namespace bonsai

extern "C" int bonsai_ternary_gather(const uint8_t* packed, int64_t n, int64_t k, int64_t packed_row_bytes,
                                     const void* scales, int32_t scale_layout, const int64_t* ids, int64_t count,
                                     float* out) {
  using namespace bonsai;
  clear_error();
  if (!packed || !scales || !ids || !out) return fail(BONSAI_ERR_NULL, "bonsai_ternary_gather: null pointer");
  if (n <= 0 || k <= 0 || count <= 0 || n > BONSAI_MAX_ROWS || k > BONSAI_MAX_K || count > BONSAI_MAX_ROWS)
    return fail(BONSAI_ERR_SHAPE, "bonsai_ternary_gather: expected N, K, count > 0, got N=" + std::to_string(n) +
                                      " K=" + std::to_string(k) + " count=" + std::to_string(count));
  if (packed_row_bytes != row_bytes(k))
    return fail(BONSAI_ERR_SHAPE, "bonsai_ternary_gather: expected packed row bytes " + std::to_string(row_bytes(k)) +
                                      " for K=" + std::to_string(k) + ", got " + std::to_string(packed_row_bytes));
  if (scale_layout != kScaleChannel && scale_layout != kScaleBlock)
    return fail(BONSAI_ERR_LAYOUT, "bonsai_ternary_gather: expected scale_layout 0 (channel) or 1 (block), got " +
                                       std::to_string(scale_layout));
  for (int64_t i = 0; i < count; ++i)  // every id before any write: a bad one leaves out untouched
    if (ids[i] < 0 || ids[i] >= n)
      return fail(BONSAI_ERR_SHAPE, "bonsai_ternary_gather: id " + std::to_string(ids[i]) + " (position " +
                                        std::to_string(i) + ") is outside the table's " + std::to_string(n) + " rows");
  for (int64_t i = 0; i < count; ++i)
    unpack_row(packed + ids[i] * packed_row_bytes, k, scales, scale_layout, ids[i], out + i * k);
  return BONSAI_OK;
}
