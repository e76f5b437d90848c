"""The packed-ternary format: the one Python reference every other piece follows.

docs/FORMAT.md is the prose version of this file; custom_ops/core/include/bonsai/ternary_format.h mirrors the
constants below and a test checks that they agree.

Layout ("t2", 2 bits per weight):
- A ternary matrix T[N, K] with values in {-1, 0, +1} is stored row by row as uint8 [N, row_bytes(K)].
- Each row is cut along K into blocks of BLOCK_K = 128 weights; the last block is padded with zero weights.
- A block is 32 bytes. Bits 2i..2i+1 of byte j hold the code of weight k = 32*i + j of the block (i = 0..3),
  code = t + 1 (0 -> -1, 1 -> 0, 2 -> +1; 3 is invalid). One 32-byte load, a shift by 2i and a mask by 3 yield
  the 32 codes of K-range [32i, 32i+32) in K order, so SIMD unpacking needs no shuffles on AVX2, AVX-512 or NEON.
- Scales (SCALE_LAYOUTS): "channel" (t2): one float32 scale per output channel n, applied after the matmul;
  "block" (t2g, group-scaled, prism-ml's Ternary-Bonsai): one fp16 scale per block of 128 weights, [N, blocks],
  W[n, k] = s[n, k // 128] * T[n, k]. N is never padded.

Activations:
- act_bits = 0 ("none"): float32 activations, y[m, n] = scale[n] * sum_k T[n, k] * x[m, k] (exact Bonsai).
- act_bits = 8 ("int8"): per-token (per row m) absmax quantization, all in float32 arithmetic:
      amax = max_k |x[m, k]|;  if amax == 0: q = 0, d = 0
      else: inv = 127 / amax;  q = clamp(rint(x * inv), -127, 127)   (rint: round half to even)
            d = amax / 127
      acc[m, n] = sum_k q[m, k] * T[n, k]   (exact int32)
      y[m, n] = (float(acc) * d) * scale[n]
  block scales (matmul_blocks): one int32 sum per block, scaled and added in block order, then times d:
      z = 0; for b: z = z + float(acc[m, n, b]) * float(s[n, b]);  y[m, n] = z * d[m]   (float32, no FMA)
"""

from __future__ import annotations

import numpy as np

BLOCK_K = 128  # weights per block along K
BLOCK_BYTES = BLOCK_K // 4  # 2 bits per weight
LANES = BLOCK_K // 4  # weights per 2-bit plane of a block (= bytes per block)
CODE_OFFSET = 1  # code = t + 1
ACT_MODES = {"none": 0, "int8": 8}  # CLI name -> act_bits
# scale_layout: how a ternary matrix's scales are stored (docs/FORMAT.md "Scales"); mirrored by kScaleChannel /
# kScaleBlock in ternary_format.h.
SCALE_LAYOUTS = {"channel": 0, "block": 1}
BLOCK_SCALE_DTYPE = np.float16
# MatMulNBits (com.microsoft) over block-scaled t2: bits 2, one block per t2 block, code = t + zero point 2.
NBITS_BITS = 2
NBITS_ZERO_POINT = 2
INT8_QMAX = 127
# Dense weights (docs/FORMAT.md "Dense weights", bonsai_export/dense.py): the group-wise integer formats of the
# head and the embedding share one scale per DENSE_GROUP weights along K. Mirrored by BONSAI_DENSE_GROUP in
# custom_ops/core/include/bonsai/kernels.h (tests/test_kernels.py checks both agree).
DENSE_GROUP = 32


def dense_groups(k: int) -> int:
    """Scale groups of a dense row of K weights (the last one possibly partial)."""
    return -(-k // DENSE_GROUP)


def dense_row_elements(bits: int, k: int) -> int:
    """Stored elements of one dense row: bf16 and int8 one per weight; int4 one byte per two codes, whole groups."""
    return dense_groups(k) * DENSE_GROUP // 2 if bits == 4 else k


def num_blocks(k: int) -> int:
    """Blocks of BLOCK_K weights covering K (the last one padded): the block scales of one row."""
    return -(-k // BLOCK_K)


def row_bytes(k: int) -> int:
    """Bytes of one packed row of K weights (K rounded up to whole blocks)."""
    return -(-k // BLOCK_K) * BLOCK_BYTES


def pack(t: np.ndarray) -> np.ndarray:
    """Pack an int8 ternary matrix [N, K] into uint8 [N, row_bytes(K)]."""
    t = np.asarray(t)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D ternary matrix [N, K], got shape {t.shape}")
    if not np.isin(t, (-1, 0, 1)).all():
        raise ValueError("expected ternary values in {-1, 0, +1}")
    n, k = t.shape
    kp = -(-k // BLOCK_K) * BLOCK_K
    codes = np.full((n, kp), CODE_OFFSET, dtype=np.uint8)
    codes[:, :k] = (t + CODE_OFFSET).astype(np.uint8)
    planes = codes.reshape(n, kp // BLOCK_K, 4, LANES)  # [N, blocks, i, j]
    packed = planes[:, :, 0] | (planes[:, :, 1] << 2) | (planes[:, :, 2] << 4) | (planes[:, :, 3] << 6)
    return packed.reshape(n, row_bytes(k))


def unpack(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack: uint8 [N, row_bytes(K)] -> int8 ternary [N, K]."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != row_bytes(k):
        raise ValueError(
            f"expected uint8 [N, {row_bytes(k)}] for K={k}, got {packed.dtype} {list(packed.shape)}"
        )
    n = packed.shape[0]
    blocks = packed.reshape(n, -1, 1, LANES)
    codes = (blocks >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    if (codes == 3).any():
        raise ValueError("invalid 2-bit code 3 in packed ternary weights")
    return (codes.reshape(n, -1)[:, :k].astype(np.int8) - CODE_OFFSET).astype(np.int8)


def byte_trits(zero_point: int = CODE_OFFSET) -> np.ndarray:
    """[256, 4] float32: the four 2-bit fields of a byte (field i at bits 2i) as trits, code - zero_point. t2's
    fields are its planes (zero point CODE_OFFSET, code 3 never occurs); MatMulNBits' are consecutive elements
    (NBITS_ZERO_POINT). Graphs that unpack weights with plain gathers read this table."""
    codes = (np.arange(256)[:, None] >> (2 * np.arange(4))) & 3
    return (codes - zero_point).astype(np.float32)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8: x float32 [M, K] -> (q int8 [M, K], d float32 [M])."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1)
    safe = np.where(amax > 0, amax, np.float32(1))
    inv = (np.float32(INT8_QMAX) / safe).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]), -INT8_QMAX, INT8_QMAX).astype(np.int8)
    q[amax == 0] = 0
    d = np.where(amax > 0, amax / np.float32(INT8_QMAX), np.float32(0)).astype(np.float32)
    return q, d


def quantize_dense_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dense head's int8 activations (docs/FORMAT.md, "Dense weights"): x float32 [M, K] -> (q int8
    [M, G * DENSE_GROUP], zero past K; d float32 [M, G]), each group of DENSE_GROUP quantized with its own absmax
    as quantize_activations does per token."""
    x = np.asarray(x, dtype=np.float32)
    m, k = x.shape
    groups = dense_groups(k)
    padded = np.zeros((m, groups * DENSE_GROUP), np.float32)
    padded[:, :k] = x
    q, d = quantize_activations(padded.reshape(m * groups, DENSE_GROUP))
    return q.reshape(m, -1), d.reshape(m, groups)


def dense_matmul_i8(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Reference of the int8-activation head: x float32 [M, K], integer codes [N, K], float32 group scales and
    offsets [N, G] (offsets None for int8) -> y float64 [M, N] = sum_g s * d_g * (the group's exact int32 sum)
    (+ o * d_g * sum of q over the group)."""
    m, k = np.asarray(x).shape
    q, d = quantize_dense_activations(x)
    groups = d.shape[1]
    padded = np.zeros((codes.shape[0], groups * DENSE_GROUP), np.int64)
    padded[:, :k] = codes
    sums = np.einsum("mgk,ngk->mng", q.reshape(m, groups, DENSE_GROUP).astype(np.int64),
                     padded.reshape(-1, groups, DENSE_GROUP))  # exact
    y = (sums * scales[None].astype(np.float64) * d[:, None].astype(np.float64)).sum(-1)
    if offsets is not None:
        qsum = q.reshape(m, groups, DENSE_GROUP).astype(np.int64).sum(-1)  # [M, G]
        y += (qsum * d).astype(np.float64) @ offsets.T.astype(np.float64)
    return y


def int8_accumulate(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact int32 accumulators acc[m, n] = sum_k q[m, k] * t[n, k]."""
    return q.astype(np.int32) @ t.astype(np.int32).T


def matmul(x: np.ndarray, packed: np.ndarray, scales: np.ndarray, k: int, act_bits: int) -> np.ndarray:
    """Reference ternary linear: x float32 [M, K] -> y float32 [M, N]."""
    x = np.asarray(x, dtype=np.float32)
    t = unpack(packed, k)
    scales = np.asarray(scales, dtype=np.float32)
    if act_bits == 0:
        return (x @ t.T.astype(np.float32)) * scales
    if act_bits == 8:
        q, d = quantize_activations(x)
        acc = int8_accumulate(q, t)
        return (acc.astype(np.float32) * d[:, None]) * scales
    raise ValueError(f"expected act_bits 0 (none) or 8 (int8), got {act_bits}")


def check_block_scales(scales: np.ndarray, n: int, k: int) -> np.ndarray:
    """The block scales of an [N, K] matrix: fp16 [N, num_blocks(K)], else ValueError naming what is wrong."""
    want = (n, num_blocks(k))
    if not isinstance(scales, np.ndarray) or scales.dtype != BLOCK_SCALE_DTYPE or scales.shape != want:
        raise ValueError(f"expected block scales float16 {list(want)} for N={n}, K={k}, got "
                         f"{getattr(scales, 'dtype', type(scales).__name__)} {list(getattr(scales, 'shape', []))}")
    return scales


def block_accumulate(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact int32 per-block sums acc[m, n, b] = sum_{k in block b} q[m, k] * t[n, k]."""
    m, k = q.shape
    nb = num_blocks(k)
    qp = np.zeros((m, nb * BLOCK_K), np.int32)
    tp = np.zeros((t.shape[0], nb * BLOCK_K), np.int32)
    qp[:, :k], tp[:, :k] = q, t
    return np.einsum("mbk,nbk->mnb", qp.reshape(m, nb, BLOCK_K), tp.reshape(-1, nb, BLOCK_K)).astype(np.int32)


def matmul_blocks(x: np.ndarray, packed: np.ndarray, scales: np.ndarray, k: int, act_bits: int) -> np.ndarray:
    """Reference ternary linear with block scales (scale_layout "block"): x float32 [M, K] -> y float32 [M, N].
    act_bits 8 is the stated order of docs/FORMAT.md, which every kernel reproduces bit for bit."""
    x = np.asarray(x, dtype=np.float32)
    t = unpack(packed, k)
    s = check_block_scales(scales, t.shape[0], k).astype(np.float32)  # exact widening
    if act_bits == 0:
        w = t.astype(np.float32) * np.repeat(s, BLOCK_K, axis=1)[:, :k]
        return x @ w.T
    if act_bits == 8:
        q, d = quantize_activations(x)
        acc = block_accumulate(q, t)
        z = np.zeros(acc.shape[:2], np.float32)
        for b in range(acc.shape[2]):  # block order, float32 product then sum (numpy never fuses them)
            z = z + acc[:, :, b].astype(np.float32) * s[:, b]
        return z * d[:, None]
    raise ValueError(f"expected act_bits 0 (none) or 8 (int8), got {act_bits}")


def gather_rows(packed: np.ndarray, scales: np.ndarray, k: int, ids: np.ndarray, scale_layout: int) -> np.ndarray:
    """Reference embedding lookup of a ternary table [N, K]: rows ids of W = scale * T as float32 [len(ids), K]
    (exact: a trit times a scale)."""
    t = unpack(packed, k)[np.asarray(ids)].astype(np.float32)
    if scale_layout == SCALE_LAYOUTS["block"]:
        s = check_block_scales(scales, packed.shape[0], k)[np.asarray(ids)].astype(np.float32)
        return t * np.repeat(s, BLOCK_K, axis=1)[:, :k]
    return t * np.asarray(scales, np.float32)[np.asarray(ids), None]


def matmul_nbits_weights(packed: np.ndarray, scales: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Block-scaled t2 -> com.microsoft MatMulNBits inputs (bits=2, block_size=BLOCK_K), dequantizing to exactly
    s[n, b] * T[n, k]: B uint8 [N, blocks, 32] (element e of a block in byte e // 4 at bits 2 (e % 4), code
    t + 2, padding code 2 = weight 0), scales float32 [N * blocks] (the fp16 scales widened, exact) and
    zero_points uint8 [N, ceil(blocks / 4)] (2 in every 2-bit field: (code - 2) * scale = t * scale)."""
    t = unpack(packed, k)
    n, nb = t.shape[0], num_blocks(k)
    s = check_block_scales(scales, n, k)
    codes = np.full((n, nb * BLOCK_K), NBITS_ZERO_POINT, np.uint8)
    codes[:, :k] = (t + NBITS_ZERO_POINT).astype(np.uint8)
    quads = codes.reshape(n, nb, BLOCK_K // 4, 4)
    b = quads[..., 0] | (quads[..., 1] << 2) | (quads[..., 2] << 4) | (quads[..., 3] << 6)
    zero = NBITS_ZERO_POINT * 0b01010101  # the zero point in all four 2-bit fields of a byte
    zero_points = np.full((n, -(-nb // 4)), zero, np.uint8)
    return b.astype(np.uint8), s.astype(np.float32).reshape(-1), zero_points
