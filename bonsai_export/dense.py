"""Export-time formats of the dense parts: the token embedding and the output head (docs/FORMAT.md, "Dense
weights"). This file is the reference encoder; ops.dense_weight is the reference decoder.

`quantize_dense_(model, embedding, head)` swaps them in place, so the eager model and every artifact made from it
compute the same thing. The formats (`--embedding bf16|int8`, `--head bf16|int8|int4`):
- bf16: the matrix as the checkpoint stores it (Bonsai's own dtype: lossless).
- int8 / int4: group-wise, one bf16 scale per DENSE_GROUP (32) weights along K, codes in [-128, 127] / [-8, 7];
  each group's scale is the candidate that minimises the group's squared error (search_scales).
The head runs in `bonsai::dense_linear` with float activations, so every runtime agrees with the eager model to
float rounding (no activation quantizer whose rounding could flip). The int8 embedding is the int8 head format
read one row at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import formats, ops  # noqa: F401  (ops defines torch.ops.bonsai.dense_linear)

GROUP = formats.DENSE_GROUP
ROWS_PER_CHUNK = 2048  # rows quantized at once: bounds the search's temporaries (~8 MB each at K = 1536)
# Scale candidates of the search, as fractions of the range the group's largest weight spans (1 = absmax).
# Measured on trained-tiny's head (relative RMS weight error, int8 / int4, every candidate refitted): absmax and
# its sign flip only, 0.00398 / 0.06599; down to 0.7 in steps of 1/20 0.00391 / 0.06523, of 1/40 0.00383 /
# 0.06514, of 1/80 0.00375 / 0.06512; down to 0.5 no better than to 0.7.
SEARCH_FRACTIONS = tuple(1 - i / 40 for i in range(13))  # 1.0, 0.975, ..., 0.7
# Least-squares refits of the winning scale. Refitting every candidate instead measured the same error (int8
# 0.00383 both, int4 0.06514 against 0.06504 with two refits of the winner) at 3-7x the time.
REFITS = 2


@dataclass(frozen=True)
class DenseFormat:
    """A weight-only format of bonsai::dense_linear."""

    bits: int  # the op's weight_bits
    qmin: int = 0  # code range of a group-wise integer format
    qmax: int = 0


FORMATS = {"bf16": DenseFormat(16), "int8": DenseFormat(8, -128, 127), "int4": DenseFormat(4, -8, 7)}
HEAD_BITS = {name: f.bits for name, f in FORMATS.items()}
EMBEDDING_FORMATS = ("bf16", "int8")


# --- encoder ---

def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Rounded to the stored scale dtype (bf16, nearest even) and back to float32 for the arithmetic."""
    return t.to(torch.bfloat16).float()


def _codes(g: torch.Tensor, d: torch.Tensor, fmt: DenseFormat) -> torch.Tensor:
    return torch.clamp(torch.round(g / torch.where(d == 0, 1.0, d)), fmt.qmin, fmt.qmax)


def _sq_error(g: torch.Tensor, d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return ((g - q * d) ** 2).sum(-1, keepdim=True)


def search_scales(g: torch.Tensor, fmt: DenseFormat) -> torch.Tensor:
    """Groups g [..., GROUP] -> the bf16-representable scale of each [..., 1] with the least squared error
    sum (w - s * code(w / s))^2 among the candidates: the largest weight mapped to a fraction of qmax or of qmin
    (SEARCH_FRACTIONS), then the winner refitted REFITS times to the least-squares scale of its codes (kept only
    where that lowers the error). Absmax (largest weight -> qmax) is the first candidate, so the result is never
    worse than absmax. Candidates are rounded to bf16 before they are scored: the error counted is the stored
    format's."""
    wmax = g.gather(-1, g.abs().argmax(-1, keepdim=True))  # the largest-magnitude weight, signed
    best_d = _bf16(wmax / fmt.qmax)
    best_err = _sq_error(g, best_d, _codes(g, best_d, fmt))

    def keep_better(d):
        nonlocal best_d, best_err
        err = _sq_error(g, d, _codes(g, d, fmt))
        better = err < best_err
        best_d, best_err = torch.where(better, d, best_d), torch.where(better, err, best_err)

    for target in [fmt.qmax * f for f in SEARCH_FRACTIONS] + [fmt.qmin * f for f in SEARCH_FRACTIONS]:
        keep_better(_bf16(wmax / target))
    for _ in range(REFITS):
        q = _codes(g, best_d, fmt)
        qq = (q * q).sum(-1, keepdim=True)
        keep_better(_bf16((g * q).sum(-1, keepdim=True) / torch.where(qq == 0, 1.0, qq)))  # argmin_s |g - s q|^2
    return best_d


def quantize_groups(w: torch.Tensor, fmt: DenseFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (integer codes as int16 [N, K], bf16 scales [N, ceil(K / GROUP)])."""
    n, k = w.shape
    groups = -(-k // GROUP)
    codes, scales = torch.empty(n, k, dtype=torch.int16), torch.empty(n, groups, dtype=torch.bfloat16)
    for r in range(0, n, ROWS_PER_CHUNK):
        rows = w[r : r + ROWS_PER_CHUNK]
        g = F.pad(rows, (0, groups * GROUP - k)).view(rows.shape[0], groups, GROUP)  # zero weights past K
        d = search_scales(g, fmt)
        codes[r : r + ROWS_PER_CHUNK] = _codes(g, d, fmt).view(rows.shape[0], -1)[:, :k].to(torch.int16)
        scales[r : r + ROWS_PER_CHUNK] = d[..., 0].to(torch.bfloat16)
    return codes, scales


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes int [N, K] in [-8, 7] -> uint8 [N, ceil(K/2)]: two's-complement nibbles, low nibble = even k."""
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    nibbles = (q.to(torch.int16) & 0xF).view(q.shape[0], -1, 2)
    return (nibbles[..., 0] | (nibbles[..., 1] << 4)).to(torch.uint8)


def quantize_weight(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (stored weight, scales) of the dense_linear format named `fmt` (a key of FORMATS):
    bf16: (bf16 [N, K], float32 ones [N]); int8: (int8 [N, K], bf16 [N, G]); int4: (uint8 nibbles [N, ceil(K/2)],
    bf16 [N, G])."""
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
        self.register_buffer("column_group", torch.arange(weight.shape[1]) // GROUP, persistent=False)

    def forward(self, tokens):
        scales = F.embedding(tokens, self.scales).float().index_select(-1, self.column_group)  # [B, T, D]
        return F.embedding(tokens, self.qweight).float() * scales


class DenseLinear(nn.Module):
    """y = x @ W^T through bonsai::dense_linear, with W in one of the weight-only FORMATS."""

    def __init__(self, weight: torch.Tensor, fmt: str):
        super().__init__()
        self.in_features, self.bits = weight.shape[1], FORMATS[fmt].bits
        qweight, scales = quantize_weight(weight, fmt)
        self.register_buffer("weight", qweight)
        self.register_buffer("scales", scales)

    def forward(self, x):
        return torch.ops.bonsai.dense_linear(x, self.weight, self.scales, self.in_features, self.bits)


def quantize_dense_(model, embedding: str, head: str):
    """Swap model.embed_tokens and model.lm_head for their export formats (in place); returns the model."""
    if embedding not in EMBEDDING_FORMATS or head not in FORMATS:
        raise ValueError(f"expected embedding in {EMBEDDING_FORMATS} and head in {tuple(FORMATS)}, got "
                         f"{embedding!r} and {head!r} (resolve 'auto' with ExportConfig.resolved first)")
    weight = model.embed_tokens.weight.detach()
    model.embed_tokens = Bf16Embedding(weight) if embedding == "bf16" else Int8Embedding(weight)
    model.lm_head = DenseLinear(model.lm_head.weight, head)
    return model
