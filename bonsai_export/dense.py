"""Export-time formats of the dense parts: the token embedding and the output head.

`quantize_dense_(model, embedding, head)` swaps them in place, so the eager model and every artifact made from it
compute the same thing. The options (`--embedding bf16|int8`, `--head bf16|int8|int4`):
- embedding bf16: the table stored in bf16 (Bonsai's own dtype: lossless), rows widened to fp32 after the gather.
- embedding int8: per-row absmax int8 with one fp32 scale per row.
- head bf16 / int8 / int4: `bonsai::dense_linear`, weight-only formats with float activations: bf16 as stored,
  int8 symmetric per output channel, int4 symmetric per group of 32 along K. Float activations keep every runtime
  within float rounding of the eager model (no activation quantizer whose rounding could flip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


class Bf16Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.bfloat16))

    def forward(self, tokens):
        return F.embedding(tokens, self.weight).float()


class Int8Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127  # [V]
        self.register_buffer("qweight", torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8))
        self.register_buffer("scale", scale[:, None])  # [V, 1]

    def forward(self, tokens):
        return F.embedding(tokens, self.qweight).float() * F.embedding(tokens, self.scale)


HEAD_BITS = {"bf16": 16, "int8": 8, "int4": 4}


class DenseLinear(nn.Module):
    """y = x @ W^T through bonsai::dense_linear, with W in one of the weight-only formats of HEAD_BITS."""

    def __init__(self, weight: torch.Tensor, fmt: str):
        super().__init__()
        self.in_features, self.bits = weight.shape[1], HEAD_BITS[fmt]
        qweight, scales = quantize_weight(weight, self.bits)
        self.register_buffer("weight", qweight)
        self.register_buffer("scales", scales)

    def forward(self, x):
        return torch.ops.bonsai.dense_linear(x, self.weight, self.scales, self.in_features, self.bits)


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (stored weight, float32 scales) of the dense_linear format with `bits`."""
    w = weight.detach().float()
    n, k = w.shape
    if bits == 16:
        return w.to(torch.bfloat16), torch.ones(n)
    if bits == 8:
        scale = w.abs().amax(dim=1).clamp_min(1e-30) / 127
        return torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8), scale
    groups = -(-k // ops.DENSE_INT4_GROUP)
    padded = torch.zeros(n, groups * ops.DENSE_INT4_GROUP)
    padded[:, :k] = w
    g = padded.view(n, groups, ops.DENSE_INT4_GROUP)
    scale = g.abs().amax(dim=2).clamp_min(1e-30) / 7  # [N, G]
    q = torch.clamp(torch.round(g / scale[..., None]), -7, 7).to(torch.int16).view(n, -1)[:, :k]
    if k % 2:
        q = torch.cat((q, torch.zeros(n, 1, dtype=torch.int16)), dim=1)
    nibbles = (q & 0xF).view(n, -1, 2)
    return (nibbles[..., 0] | (nibbles[..., 1] << 4)).to(torch.uint8), scale


def quantize_dense_(model, embedding: str, head: str):
    """Swap model.embed_tokens and model.lm_head for their export formats (in place); returns the model."""
    weight = model.embed_tokens.weight.detach()
    model.embed_tokens = Bf16Embedding(weight) if embedding == "bf16" else Int8Embedding(weight)
    model.lm_head = DenseLinear(model.lm_head.weight, head)
    return model
