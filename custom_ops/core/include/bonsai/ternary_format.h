// The packed-ternary format "t2": the C++ mirror of bonsai_export/formats.py (the single source of truth).
// docs/FORMAT.md is the prose spec; tests/test_kernels.py parses the constants below and checks they agree
// with formats.py, so change both together.
//
// A ternary matrix T[N, K] (values -1, 0, +1) is stored as uint8 [N, row_bytes(K)]:
//   - each row is cut along K into blocks of kBlockK weights; the last block is padded with zero weights;
//   - a block is kBlockBytes bytes: bits 2i..2i+1 of byte j hold the code of weight kLanes*i + j (i = 0..3);
//   - code = t + kCodeOffset (0 -> -1, 1 -> 0, 2 -> +1); code 3 is invalid and kernels do not check it
//     per call (it decodes as +2 and gives wrong sums, never out-of-bounds access);
//   - scales, two layouts (scale_layout): kScaleChannel, one float32 per output channel n applied after the
//     matmul (t2); kScaleBlock, one fp16 per block of each row, [N, num_blocks(K)] (t2g, group-scaled:
//     W[n, k] = s[n, k / kBlockK] * t). N is never padded.
// The layout never depends on the ISA: one 32-byte load, a shift by 2i and a mask by 3 give the codes of the
// K range [32i, 32i + 32) in K order on AVX2, AVX-512 and NEON alike.
#ifndef BONSAI_TERNARY_FORMAT_H
#define BONSAI_TERNARY_FORMAT_H

#include <stdint.h>

#ifdef __cplusplus
namespace bonsai {

constexpr int kBlockK = 128;              // weights per block along K
constexpr int kBitsPerWeight = 2;         // one 2-bit code per weight
constexpr int kPlanes = 8 / kBitsPerWeight;  // 2-bit planes per byte (i = 0..3)
constexpr int kBlockBytes = kBlockK * kBitsPerWeight / 8;  // bytes per block
constexpr int kLanes = kBlockK / kPlanes;  // weights per plane of a block (= bytes per block)
constexpr int kCodeOffset = 1;            // code = t + 1
constexpr int kCodeMask = 3;              // a code is the low 2 bits after shifting
constexpr int kInt8QMax = 127;            // int8 activations are clamped to [-127, 127]
constexpr int kActBitsNone = 0;           // float32 activations (exact Bonsai)
constexpr int kActBitsInt8 = 8;           // per-token absmax int8 activations
constexpr int kScaleChannel = 0;          // scale_layout: float32 [N]
constexpr int kScaleBlock = 1;            // scale_layout: fp16 [N, num_blocks(K)], one per block

static_assert(kBlockBytes == 32, "a block is one 256-bit load");
static_assert(kLanes == kBlockBytes, "plane i of a block uses every byte of the block once");
static_assert(kPlanes * kLanes == kBlockK, "4 planes of 32 lanes cover the block");
static_assert(kBlockK % 64 == 0, "blocks must tile both 256-bit and 512-bit float/int8 vectors");
// Accumulator range: |acc| <= K * 127; int32 holds it for K < 16.9M, far above any linear layer.
static_assert(int64_t(kInt8QMax) * (int64_t(1) << 24) < INT32_MAX, "int32 accumulators cannot overflow");

// Number of blocks covering K weights.
constexpr int64_t num_blocks(int64_t k) { return (k + kBlockK - 1) / kBlockK; }
// Bytes of one packed row of K weights (K rounded up to whole blocks).
constexpr int64_t row_bytes(int64_t k) { return num_blocks(k) * kBlockBytes; }
// K rounded up to whole blocks: the padded length of an activation row inside the kernels.
constexpr int64_t padded_k(int64_t k) { return num_blocks(k) * kBlockK; }

static_assert(row_bytes(1) == 32 && row_bytes(128) == 32 && row_bytes(129) == 64, "row_bytes rounds up");
static_assert(row_bytes(1536) == 384 && row_bytes(4096) == 1024, "Bonsai's K values pack without padding");

}  // namespace bonsai
#endif  // __cplusplus

#endif  // BONSAI_TERNARY_FORMAT_H
