// AVX-512 VNNI kernels (Ice Lake, Sapphire Rapids, Zen 4 and later). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni -mgfni; reached only after dispatch.cpp has seen all five in cpuid and the OS saves the
// AVX-512 state (Cascade Lake, VNNI without GFNI, runs the AVX2 table).
//
// vpdpbusd multiplies unsigned bytes with signed bytes and adds groups of 4 into int32 in one instruction, so
// the codes c = t + 1 in {0, 1, 2} feed it directly and sum_k t*q = sum_k c*q - sum_k q. The GEMM uses 256-bit
// registers: one block plane is exactly 32 bytes, and on current cores ymm vpdpbusd has the same MAC throughput
// as zmm (two ymm ports vs one zmm port) without pairing blocks; AVX-512VL doubles the register file to 32,
// which allows the larger GEMM tile. The GEMVs, bound by unpacking work rather than MACs, use zmm (see below), as
// does the dense head with int8 activations. The ternary float path (act_bits = 0) and activation quantization
// are the AVX2 ones: this table copies them from kAvx2Table in avx512_table().
#include <immintrin.h>

#include "../dense_i8_kernels.h"
#include "../float_kernels.h"
#include "../kernel_table.h"
#include "../ternary_kernels.h"
#include "ymm_blocks.h"

namespace bonsai {
namespace {

// Building blocks of the GEMM (ternary_kernels.h), in ymm: 4 tokens x 4 rows = 16 accumulators, 4 code planes and
// temporaries within the 32 ymm registers; each unpacked weight block serves 4 tokens. Its leftover tokens run
// 4-row tiles whose vpdpbusd (latency ~5 cycles) would wait on a chain of 4 dependent products per block with one
// accumulator per row: they keep one per plane instead (16 chains).
struct Avx512Ymm : YmmBlocks {
  static constexpr int kGemvRows = 4, kGemmTokens = 4, kGemmRows = 4, kGemvChains = 4;
  static constexpr int64_t kFlushBlocks = 256;  // int32 sums: flushing only bounds the loop
  using Part = __m256i;   // int32

  static Part part_zero() { return _mm256_setzero_si256(); }
  static Part dot(Part part, Codes c, Act a) { return _mm256_dpbusd_epi32(part, c, a); }
  template <int C>
  static Sum flush(Sum sum, const Part (&part)[C]) {
    for (int c = 0; c < C; ++c) sum = _mm256_add_epi32(sum, part[c]);
    return sum;
  }
  // t2g 4-row tiles: each block's 4 row sums reduced on their own, scaled by YmmBlocks' group of one block (a
  // prefill tile's 4 tokens would hold 8 blocks' sums in 32 registers: ScaleGroup8 measured slower there).
  using Block4 = Rows4;
  static Block4 block4_zero() { return _mm_setzero_si128(); }
  template <int C>
  static Block4 block4(const Part (&part)[4][C]) {
    const Sum sums[4] = {flush(sum_zero(), part[0]), flush(sum_zero(), part[1]), flush(sum_zero(), part[2]),
                         flush(sum_zero(), part[3])};
    return hsum4(sums);
  }
};

// Building blocks of the GEMV (decode), in zmm: two blocks per register. GFNI's affine transform (a bit-matrix
// multiply of every byte) moves plane i's two bits to the bottom of each byte in one instruction, where a shift
// and a mask take two, so each plane is c exactly and the 4 planes share 2 accumulator chains per row. 2048 x
// 2048 weights (1 MiB, from L2), one thread: 23.6 -> 32 GB/s against masking 4^i * c in place with one chain per
// plane (16 accumulators for 4 rows, the 4^i divided out when the chains were flushed; the GFNI planes with 4
// chains ran 25 GB/s). The zmm activation operand pairs the same plane of blocks b and b + 1, built once per block
// pair and shared by the tile's rows.
struct Avx512Zmm {
  // Rows per tile: each activation pair serves 4 rows. With the L2 prefetch below, 4 rows measured ~15-25%
  // faster than 2 and 1 (whole model, 1 and 2 threads, when each plane had its own chain).
  static constexpr int kGemvRows = 4, kGemvChains = 2;
  static constexpr int kStepBlocks = 2;
  static constexpr bool kUnsignedCodes = true;
  // act<I> reads pair_acts' layout: plane I of blocks b and b + 1 in 64 contiguous bytes, one load (two masked
  // loads, one of them merging, from the blocks' own layout measured 8-15% slower in cache).
  static constexpr bool kPairedActs = true;
  // A chain's int32 lane grows by <= 2 planes * 4 products * 2 * 128 per block pair.
  static constexpr int64_t kFlushBlocks = 256;
  static_assert(kFlushBlocks / 2 * 2 * 4 * 2 * 128 < (int64_t(1) << 31), "chain sums must not overflow");
  // Software prefetch of the stream into L2, 16 KiB ahead. Measured on a Sapphire-Rapids-class Xeon (whole
  // model, L3-resident): ~10-20% faster than prefetching into L1 (T0) 4 KiB ahead, which is limited by the L1
  // fill buffers; T1 at 8 or 32 KiB and T1 + a near T0 were no better; no prefetch or NTA was ~2x slower.
  static constexpr int64_t kPrefetchBytes = 16384;
  using Packed = __m512i;
  using Codes = __m512i;  // plane i of two blocks: c = t + 1
  using Act = __m512i;
  using Part = __m512i;   // int32
  using Sum = __m512i;

  // A row's last, odd block is loaded alone (masked: nothing past it is read).
  static Packed load(const uint8_t* block, int64_t blocks) {
    return blocks == 2 ? _mm512_loadu_si512(block) : _mm512_maskz_loadu_epi64(0x0f, block);
  }
  static void prefetch(const uint8_t* block, int64_t) {
    __builtin_prefetch((const void*)(uintptr_t(block) + kPrefetchBytes), 0, 2);  // T1
  }
  // Output bit j of each byte is the parity of (matrix byte 7 - j) & input byte: bytes 7 and 6 pick bits 2I and
  // 2I + 1.
  template <int I>
  static Codes plane(Packed packed) {
    if constexpr (I == 0) return _mm512_and_si512(packed, _mm512_set1_epi8(kCodeMask));
    constexpr uint64_t m = (uint64_t(1) << (2 * I)) << 56 | (uint64_t(1) << (2 * I + 1)) << 48;
    return _mm512_gf2p8affine_epi64_epi8(packed, _mm512_set1_epi64(int64_t(m)), 0);
  }
  // Activations of plane I for blocks b (low half) and b + 1 (high half), qb at block b of pair_acts' layout.
  template <int I>
  static Act act(const int8_t* qb, int64_t) { return _mm512_loadu_si512(qb + I * 2 * kLanes); }
  // q [nblocks * kBlockK] -> out [ceil(nblocks / 2) * 2 * kBlockK]: for each block pair, planes I = 0..3 of both
  // blocks, 32 bytes each; a lone last block's second halves are zeros.
  static void pair_acts(const int8_t* q, int64_t nblocks, int8_t* out) {
    for (int64_t b = 0; b < nblocks; b += 2, q += 2 * kBlockK, out += 2 * kBlockK)
      for (int i = 0; i < kPlanes; ++i) {
        const __m256i lo = _mm256_loadu_si256((const __m256i*)(q + i * kLanes));
        const __m256i hi = b + 1 < nblocks ? _mm256_loadu_si256((const __m256i*)(q + kBlockK + i * kLanes))
                                           : _mm256_setzero_si256();
        _mm512_storeu_si512(out + i * 2 * kLanes, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
      }
  }
  static Part part_zero() { return _mm512_setzero_si512(); }
  static Sum sum_zero() { return _mm512_setzero_si512(); }
  static Part dot(Part part, Codes c, Act a) { return _mm512_dpbusd_epi32(part, c, a); }
  template <int C>
  static Sum flush(Sum sum, const Part (&s)[C]) {
    for (int c = 0; c < C; ++c) sum = _mm512_add_epi32(sum, s[c]);
    return sum;
  }
  static int32_t hsum(Sum sum) { return _mm512_reduce_add_epi32(sum); }
};

// Building blocks of the t2g GEMV (decode with block scales): Avx512Zmm's planes and chains, but each block's
// int32 sum must be complete before its scale is applied. A 4-row tile's 8 block sums are one transposing
// reduction, and the scales ScaleGroup8's, 8 blocks at a time. The GFNI planes took this GEMV from 21.4 to 25.4
// GB/s (2048 x 2048 from L2, one thread) against a shift and a mask per plane.
struct Avx512ZmmBlocks : Avx512Zmm {
  static constexpr int64_t kScaleGroup = ScaleGroup8::kBlocks;
  using Block4 = __m256i;  // int32: block b's 4 row sums (low half, row r in lane r), block b + 1's (high half)
  using GroupScales = ScaleGroup8;
  using F4 = YmmBlocks::F4;
  static F4 f4_zero() { return YmmBlocks::f4_zero(); }
  static void store4(float* p, F4 v) { YmmBlocks::store4(p, v); }

  static Block4 block4_zero() { return _mm256_setzero_si256(); }
  // Rows r = 0..3 of a block pair (lanes 0..7: block b, 8..15: block b + 1) to Block4: pairwise adds that
  // interleave the rows within each 128-bit lane, then the two lanes of each block added (integer: exact).
  template <int C>
  static Block4 block4(const Part (&part)[4][C]) {
    Sum s[4];
    for (int r = 0; r < 4; ++r) s[r] = flush(sum_zero(), part[r]);
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(s[0], s[1]), _mm512_unpackhi_epi32(s[0], s[1]));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2], s[3]), _mm512_unpackhi_epi32(s[2], s[3]));
    // In each 128-bit lane: rows 0..3, each the sum of that lane's 4 int32; lanes 0, 1 are block b, 2, 3 b + 1.
    const __m512i rows = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
    const __m512i even = _mm512_shuffle_i32x4(rows, rows, _MM_SHUFFLE(3, 1, 2, 0));  // lanes 0, 2 first
    const __m512i odd = _mm512_shuffle_i32x4(rows, rows, _MM_SHUFFLE(2, 0, 3, 1));   // lanes 1, 3 first
    return _mm256_add_epi32(_mm512_castsi512_si256(even), _mm512_castsi512_si256(odd));
  }
  static GroupScales group_scales(const uint16_t* s, int64_t stride, int64_t blocks) {
    return ScaleGroup8::load(s, stride, blocks);
  }
  static F4 scale_group(F4 acc, const Block4 (&blk)[kScaleGroup / kStepBlocks], const int32_t* sub,
                        const GroupScales& g, int64_t blocks) {
    return g.acc_blocks(acc, blk, sub, blocks);
  }
};

// Vector traits of the float kernels (float_kernels.h): 16 floats per zmm. The dense head and attention use
// them; the ternary float path stays AVX2's.
struct Avx512Vec {
  using F = __m512;
  static constexpr int W = 16;
  static constexpr int kMR = 4, kNR = 6;  // dense prefill tile: 24 accumulators + 6 weights + 1 activation
  static constexpr int kAttnCols = 8;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F set1_bf16_pair(const uint16_t* pair) {  // as AVX2's
    int32_t v;
    memcpy(&v, pair, sizeof v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_set1_epi32(v), 16));
  }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load_half(const uint16_t* p) {  // 16 fp16, widened exactly
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F exp2i(F n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static float hsum(F v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(F v) { return _mm512_reduce_max_ps(v); }
  // The dense head's stream, a few tiles of rows ahead: into L2 (T1), measured ~14% faster than into L1 (T0)
  // for a 32000 x 1536 int8 head read from DRAM on a Sapphire-Rapids-class Xeon (the ternary GEMV found the same).
  static void prefetch(const void* p) { __builtin_prefetch(p, 0, 2); }
  template <int Bits>
  static void widen(const uint8_t* p, F* out) {
    if constexpr (Bits == 16) {
      for (int i = 0; i < 2; ++i) {
        const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + 32 * i)));
        out[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      }
    } else if constexpr (Bits == 8) {
      out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
      out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))));
    } else {
      // As in AVX2's widen<4>: low nibbles are codes 0..15 of the chunk, high nibbles codes 16..31; one
      // zero-extending load widens all 16 bytes, a mask keeps their low nibbles and a shift their high ones.
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
      out[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
      out[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    }
  }
};

// The dense head with int8 activations (dense_i8_kernels.h): vpdpbusd over two groups per zmm, group c in lanes
// 0..7 and c + 1 in 8..15, where AVX2 needs vpmaddubsw, vpmaddwd and sign fixes per group. vpdpbusd multiplies
// unsigned bytes: int8 codes go in as w + 128 (the sign bit flipped), and 128 * (sum of each lane's 4
// activations), the same for every row, comes back out; int4 codes 0..15 go in as they are.
struct Avx512Dense : Avx512Vec {
  static constexpr int kGroupsPerDot = 2;
  static F group_scale(const float* sd) {
    return _mm512_mask_broadcastss_ps(_mm512_set1_ps(sd[0]), 0xff00, _mm_load_ss(sd + 1));
  }
  template <int Bits>
  static void scale_batch(const uint16_t* s, const float* d, float* out) { scale_batch8<Bits>(s, d, out); }
  template <int Bits>
  static F group_dot(const uint8_t* w, const int8_t* q) {
    const __m512i a = _mm512_loadu_si512(q), zero = _mm512_setzero_si512();
    if constexpr (Bits == 8) {
      const __m512i flip = _mm512_set1_epi8(char(0x80));
      const __m512i bias = _mm512_dpbusd_epi32(zero, flip, a);
      const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(w), flip);
      return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_dpbusd_epi32(zero, u, a), bias));
    } else {
      // 16 nibble bytes per group: low nibbles are columns 0..15, high 16..31. The 128-bit lanes of [b, b >> 4]
      // are (low c, low c + 1, high c, high c + 1), reordered to the activations' (low c, high c, low c + 1, ...).
      const __m256i b = _mm256_loadu_si256((const __m256i*)w);
      const __m512i both = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1),
                                            _mm512_set1_epi8(15));
      const __m512i codes = _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0));
      return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, codes, a));
    }
  }
};

}  // namespace

KernelTable avx512_table() {
  KernelTable table = kAvx2Table;
  table.name = "avx512";
  table.gemv_i8 = tk::gemv_i8<Avx512Zmm>;
  table.gemm_i8 = tk::gemm_i8<Avx512Ymm>;
  table.gemm_t2g_i8 = tk::gemm_t2g_i8<Avx512Ymm, Avx512ZmmBlocks>;
  table.dense_f32 = fk::dense_f32<Avx512Vec>;
  table.dense_i8 = dk::dense_i8<Avx512Dense>;
  table.attend = fk::attend<Avx512Vec>;
  return table;
}

}  // namespace bonsai
