"""The torch modules of each ternary weight format, as the export-ready model holds them: t2 linears
(`bonsai::ternary_linear`, one scale per output channel), the group-scaled checkpoints' fp32 reference modules, and
their t2g export form (docs/FORMAT.md "Scales": the linears through scale_layout 1, the embedding unpacked in the
graph)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import formats, ops  # noqa: F401  (ops registers torch.ops.bonsai.ternary_linear)
from .checkpoint import TernaryWeight
from .errors import BonsaiError


class TernaryLinear(nn.Module):
    """y = (x @ T^T) * scales with T packed in the t2 format and the activation mode fixed at build time."""

    scale_layout = formats.SCALE_LAYOUTS["channel"]

    def __init__(self, in_features: int, out_features: int, act_bits: int):
        super().__init__()
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        self.register_buffer("packed", torch.zeros(out_features, formats.row_bytes(in_features), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features))

    def load(self, values: torch.Tensor, scales: torch.Tensor) -> None:
        self.packed.copy_(torch.from_numpy(formats.pack(values.numpy())))
        self.scales.copy_(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.bonsai.ternary_linear(x, self.packed, self.scales, self.in_features, self.act_bits)


class GroupTernaryLinear(nn.Module):
    """y = x @ W^T with W = scale_g * T, one scale per `group` weights along K, in fp32: W is exactly the
    checkpoint's weight (a 16-bit scale times +-1 or 0 is exact in fp32), so this is the eager reference of the
    group-scaled format. T and the scales stay as buffers for the exporters; W is built once at load."""

    def __init__(self, in_features: int, out_features: int, group: int):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer("values", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, in_features // group))
        self.register_buffer("weight", torch.zeros(out_features, in_features), persistent=False)

    def load(self, values: torch.Tensor, scales: torch.Tensor) -> None:
        w = TernaryWeight(values, scales)
        self.values.copy_(w.values)
        self.scales.copy_(w.scales.reshape(self.scales.shape))
        self.weight.copy_(w.folded())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight)


class GroupTernaryEmbedding(nn.Module):
    """Rows of W = scale_g * T gathered and expanded per token: the table stays int8 plus scales."""

    def __init__(self, w: TernaryWeight):
        super().__init__()
        self.group = w.group_size
        self.register_buffer("values", w.values.clone())
        self.register_buffer("scales", w.scales.float().clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.values[tokens].float() * self.scales[tokens].repeat_interleave(self.group, dim=-1)


def fp16_scales(scales: torch.Tensor, where: str) -> torch.Tensor:
    """Group scales as the fp16 that t2g stores, refused unless every one is exactly an fp16 value (the source's
    own scales are: Ternary-Bonsai's Q2_0 stores fp16, its unpacked folders bf16 values inside fp16's range)."""
    s = scales.float()
    half = s.to(torch.float16)
    bad = (half.float() != s).nonzero()
    if len(bad):
        row, col = bad[0].tolist()
        raise BonsaiError(f"{where}: scale [{row}, {col}] = {s[row, col].item()!r} is not an fp16 value, and t2g "
                          f"stores fp16 scales (docs/FORMAT.md, Scales); this checkpoint cannot be exported losslessly")
    return half


class BlockTernaryLinear(nn.Module):
    """t2g: T packed as t2 plus one fp16 scale per block of 128 weights (scale_layout 1), y = x @ (s_b * T)^T through
    bonsai::ternary_linear: the export form of GroupTernaryLinear (float or per-token int8 activations)."""

    scale_layout = formats.SCALE_LAYOUTS["block"]

    def __init__(self, in_features: int, out_features: int, act_bits: int):
        super().__init__()
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        self.register_buffer("packed", torch.zeros(out_features, formats.row_bytes(in_features), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, formats.num_blocks(in_features), dtype=torch.float16))

    def load(self, values: torch.Tensor, scales: torch.Tensor, where: str = "group-scaled weight") -> None:
        if TernaryWeight(values, scales).group_size != formats.BLOCK_K:
            raise BonsaiError(f"{where}: one scale per {TernaryWeight(values, scales).group_size} weights; t2g "
                              f"blocks hold {formats.BLOCK_K}")
        self.packed.copy_(torch.from_numpy(formats.pack(values.numpy())))
        self.scales.copy_(fp16_scales(scales, where))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.bonsai.ternary_linear(x, self.packed, self.scales, self.in_features, self.act_bits,
                                               self.scale_layout)


class BlockTernaryEmbedding(nn.Module):
    """Rows of a t2g table [V, D] (a tied head reads the same two buffers): per token its packed row and its block
    scales are gathered and unpacked in the graph, bytes -> their four planes' trits through a [256, 4] table (plain
    gathers, transpose and multiply, which every runtime has), so nothing but the packed table is stored. Exact:
    a trit times a widened fp16 scale. (A native gather op would save the [T, D] float temporaries; these ops need
    no new kernel in either runtime.)"""

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("byte_trits", torch.from_numpy(formats.byte_trits()), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        rows = F.embedding(tokens, self.packed).long()  # [B, T, row_bytes]: byte j of block n holds k = 32 i + j
        trits = F.embedding(rows, self.byte_trits)  # [B, T, row_bytes, 4 planes]
        trits = trits.view(b, t, -1, formats.LANES, 4).transpose(-1, -2)  # [B, T, blocks, plane, j]
        scales = F.embedding(tokens, self.scales).float()  # [B, T, blocks]
        return (trits.reshape(b, t, -1, formats.BLOCK_K) * scales.unsqueeze(-1)).reshape(b, t, -1)[..., :self.dim]
