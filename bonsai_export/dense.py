"""Export-time formats of the dense parts: the token embedding and the output head (docs/FORMAT.md, "Dense
weights"). This file is the reference encoder; ops.dense_weight is the reference decoder.

`quantize_dense_(model, embedding, head)` swaps them in place, so the eager model and every artifact made from it
compute the same thing. The formats (`--embedding bf16|int8`, `--head bf16|int8|int4`):
- bf16: the matrix as the checkpoint stores it (Bonsai's own dtype: lossless).
- int8: group-wise, one bf16 scale per DENSE_GROUP (32) weights along K, codes in [-128, 127];
- int4: codes in [0, 15] with a bf16 scale and offset per group (w = s * q + m);
  each group's scale (and offset) is the candidate that minimises the group's squared error (search_scales).
The head runs in `bonsai::dense_linear` with float activations by default, so every runtime agrees with the eager
model to float rounding (no activation quantizer whose rounding could flip); `--head-act-quant int8` makes an int8
or int4 head multiply int8 activations (one scale per group of DENSE_GROUP) in exact integer sums instead, the
faster decode that llama.cpp's Q8_0 / Q4_0 dot products compute. The int8 embedding is the int8 head format
read one row at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import formats, ops  # noqa: F401  (ops defines torch.ops.bonsai.dense_linear)

ROWS_PER_CHUNK = 2048  # rows quantized at once: bounds the search's temporaries (~8 MB each at K = 1536)
# Candidates of the search, as fractions of the range the group's extreme weight spans (1 = absmax / min-max).
# Measured on trained-tiny's head (relative RMS weight error, int8 / symmetric int4, every candidate refitted):
# absmax and its sign flip only, 0.00398 / 0.06599; down to 0.7 in steps of 1/20 0.00391 / 0.06523, of 1/40
# 0.00383 / 0.06514, of 1/80 0.00375 / 0.06512; down to 0.5 no better than to 0.7.
SEARCH_FRACTIONS = tuple(1 - i / 40 for i in range(13))  # 1.0, 0.975, ..., 0.7
# Least-squares refits of the winning candidate. Refitting every candidate instead measured the same error (int8
# 0.00383 both, symmetric int4 0.06514 against 0.06504 with two refits of the winner) at 3-7x the time.
REFITS = 2


@dataclass(frozen=True)
class DenseFormat:
    """A weight-only format of bonsai::dense_linear; the group-wise ones decode w = s * q + m per group."""

    bits: int  # the op's weight_bits
    qmin: int = 0  # code range of a group-wise integer format
    qmax: int = 0
    offset: bool = False  # m stored per group (scales [N, G, 2] = (s, m)); else m = 0 (scales [N, G] = s)


# int4 is asymmetric: on trained-small's head it measured a 27% lower mean KL than symmetric codes in [-8, 7]
# with the same search (docs/FORMAT.md), for 0.5 bit per weight more.
FORMATS = {"bf16": DenseFormat(16), "int8": DenseFormat(8, -128, 127), "int4": DenseFormat(4, 0, 15, offset=True)}
EMBEDDING_FORMATS = ("bf16", "int8")


# --- encoder ---

def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Rounded to the stored scale dtype (bf16, nearest even) and back to float32 for the arithmetic."""
    return t.to(torch.bfloat16).float()


def _codes(g: torch.Tensor, s: torch.Tensor, m: torch.Tensor, fmt: DenseFormat) -> torch.Tensor:
    """clamp(rint((w - m) / s), qmin, qmax); code 0 where s = 0 (such a group decodes to m)."""
    q = torch.clamp(torch.round((g - m) / torch.where(s == 0, 1.0, s)), fmt.qmin, fmt.qmax)
    return torch.where(s == 0, 0.0, q)


def _sq_error(g: torch.Tensor, s: torch.Tensor, m: torch.Tensor, fmt: DenseFormat) -> torch.Tensor:
    return ((g - (_codes(g, s, m, fmt) * s + m)) ** 2).sum(-1, keepdim=True)


def _candidates(g: torch.Tensor, fmt: DenseFormat):
    """(s, m) candidates of the groups g [..., DENSE_GROUP], each [..., 1]; the first is plain absmax / min-max.
    Symmetric: the largest-magnitude weight (signed) mapped to a fraction of qmax or of qmin (the code absmax
    never uses). Offset: the range [min, max] trimmed at one end by 1 - fraction of its width."""
    if not fmt.offset:
        wmax = g.gather(-1, g.abs().argmax(-1, keepdim=True))
        zero = torch.zeros_like(wmax)
        for target in [fmt.qmax * f for f in SEARCH_FRACTIONS] + [fmt.qmin * f for f in SEARCH_FRACTIONS]:
            yield wmax / target, zero
        return
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    for f in SEARCH_FRACTIONS:
        yield (hi - lo) * f / fmt.qmax, lo
    for f in SEARCH_FRACTIONS[1:]:
        yield (hi - lo) * f / fmt.qmax, hi - (hi - lo) * f


def _refit(g: torch.Tensor, s: torch.Tensor, m: torch.Tensor, fmt: DenseFormat):
    """The least-squares (s, m) of the codes that (s, m) gives: argmin |g - (s q + m)|^2, m fixed at 0 for a
    symmetric format; (s, m) unchanged where the fit is singular."""
    q = _codes(g, s, m, fmt)
    sq, qq, gq = q.sum(-1, keepdim=True), (q * q).sum(-1, keepdim=True), (g * q).sum(-1, keepdim=True)
    if not fmt.offset:
        return torch.where(qq == 0, s, gq / torch.where(qq == 0, 1.0, qq)), m
    n, sg = g.shape[-1], g.sum(-1, keepdim=True)
    det = n * qq - sq * sq
    ok = det > 0
    s_fit = torch.where(ok, (n * gq - sq * sg) / torch.where(ok, det, 1.0), s)
    return s_fit, torch.where(ok, (sg - s_fit * sq) / n, m)


def search_scales(g: torch.Tensor, fmt: DenseFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups g [..., DENSE_GROUP] -> bf16-representable (s, m) [..., 1] each with the least squared error
    sum (w - (s * q + m))^2, q = clamp(rint((w - m) / s)), among _candidates, then the winner refitted REFITS
    times (each refit kept only where it lowers the error). The first candidate is plain absmax (min-max for an
    offset code), so the result is never worse than that. Candidates are rounded to bf16 before they are scored:
    the error counted is the stored format's."""
    best_s = best_m = best_err = None

    def keep_better(s, m):
        nonlocal best_s, best_m, best_err
        s, m = _bf16(s), _bf16(m)
        err = _sq_error(g, s, m, fmt)
        if best_err is None:
            best_s, best_m, best_err = s, m, err
            return
        better = err < best_err
        best_s, best_m = torch.where(better, s, best_s), torch.where(better, m, best_m)
        best_err = torch.where(better, err, best_err)

    for s, m in _candidates(g, fmt):
        keep_better(s, m)
    for _ in range(REFITS):
        keep_better(*_refit(g, best_s, best_m, fmt))
    return best_s, best_m


def quantize_groups(w: torch.Tensor, fmt: DenseFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (integer codes as int16 [N, K], bf16 scales [N, G] (s), or [N, G, 2] (s, m) for an offset
    code), G = formats.dense_groups(K)."""
    n, k = w.shape
    groups = formats.dense_groups(k)
    codes = torch.empty(n, k, dtype=torch.int16)
    scales = torch.empty(n, groups, *((2,) if fmt.offset else ()), dtype=torch.bfloat16)
    for r in range(0, n, ROWS_PER_CHUNK):
        rows = w[r : r + ROWS_PER_CHUNK]
        padded = F.pad(rows, (0, groups * formats.DENSE_GROUP - k))  # zero weights past K
        g = padded.view(rows.shape[0], groups, formats.DENSE_GROUP)
        s, m = search_scales(g, fmt)
        codes[r : r + ROWS_PER_CHUNK] = _codes(g, s, m, fmt).view(rows.shape[0], -1)[:, :k].to(torch.int16)
        scales[r : r + ROWS_PER_CHUNK] = (torch.cat((s, m), -1) if fmt.offset else s[..., 0]).to(torch.bfloat16)
    return codes, scales


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes int [N, K] in [0, 15] -> uint8 [N, 16 G]: per group of 32, byte j holds the code of column j in its
    low nibble and of column 16 + j in its high one (code 0 past K)."""
    n, k = q.shape
    padded = F.pad(q.to(torch.int16), (0, formats.dense_groups(k) * formats.DENSE_GROUP - k))
    halves = padded.view(n, -1, 2, formats.DENSE_GROUP // 2)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).to(torch.uint8).view(n, -1)


def quantize_weight(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (stored weight, scales) of the dense_linear format named `fmt` (a key of FORMATS):
    bf16: (bf16 [N, K], float32 ones [N]); int8: (int8 [N, K], bf16 [N, G]); int4: (uint8 nibbles [N, 16 G],
    bf16 [N, G, 2] (scale, offset))."""
    w = weight.detach().float()
    spec = FORMATS[fmt]
    if spec.bits == 16:
        return w.to(torch.bfloat16), torch.ones(w.shape[0])
    codes, scales = quantize_groups(w, spec)
    return (codes.to(torch.int8) if spec.bits == 8 else pack_int4(codes)), scales


# --- modules ---

class Bf16Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.bfloat16))

    def forward(self, tokens):
        return F.embedding(tokens, self.weight).float()


class Int8Embedding(nn.Module):
    """The int8 head format, one row per token: codes int8 [V, D], bf16 scales [V, G], widened after the gather."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        qweight, scales = quantize_weight(weight, "int8")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        # group of each column, to spread a row's G scales over its D values (any D, not only multiples of 32)
        column_group = torch.arange(weight.shape[1]) // formats.DENSE_GROUP
        self.register_buffer("column_group", column_group, persistent=False)

    def forward(self, tokens):
        scales = F.embedding(tokens, self.scales).float().index_select(-1, self.column_group)  # [B, T, D]
        return F.embedding(tokens, self.qweight).float() * scales


class DenseLinear(nn.Module):
    """y = x @ W^T through bonsai::dense_linear, with W in one of the FORMATS; act_bits 8 (int8 / int4 only):
    int8 activations per group (ops.dense_activations)."""

    def __init__(self, weight: torch.Tensor, fmt: str, act_bits: int = 0):
        super().__init__()
        if act_bits and FORMATS[fmt].bits == 16:
            raise ValueError(f"int8 activations need an int8 or int4 head, got {fmt}")
        self.in_features, self.bits, self.act_bits = weight.shape[1], FORMATS[fmt].bits, act_bits
        qweight, scales = quantize_weight(weight, fmt)
        self.register_buffer("weight", qweight)
        self.register_buffer("scales", scales)

    def forward(self, x):
        return torch.ops.bonsai.dense_linear(x, self.weight, self.scales, self.in_features, self.bits, self.act_bits)


def quantize_dense_(model, embedding: str, head: str, head_act_bits: int = 0):
    """Swap model.embed_tokens and model.lm_head for their export formats (in place); returns the model."""
    if embedding not in EMBEDDING_FORMATS or head not in FORMATS:
        raise ValueError(f"expected embedding in {EMBEDDING_FORMATS} and head in {tuple(FORMATS)}, got "
                         f"{embedding!r} and {head!r}")
    weight = model.embed_tokens.weight.detach()
    model.embed_tokens = Bf16Embedding(weight) if embedding == "bf16" else Int8Embedding(weight)
    model.lm_head = DenseLinear(model.lm_head.weight, head, head_act_bits)
    return model
