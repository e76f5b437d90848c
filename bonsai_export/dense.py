"""Export-time formats of the dense parts: the token embedding and the output head.

`quantize_dense_(model, embedding, head)` swaps them in place, so the eager model and every artifact made from it
compute the same thing. The options (`--embedding bf16|int8`, `--head bf16|int8|int4`):
- embedding bf16: the table stored in bf16 (Bonsai's own dtype: lossless), rows widened to fp32 after the gather.
- embedding int8: per-row absmax int8 with one fp32 scale per row.
- head bf16: 16-bit weights. XNNPACK has no bf16 GEMM, so the head is held as fp16 (exact for every bf16 value in
  fp16's normal range; quantize_dense_ reports how many weights were not) with fp16 activations.
- head int8 / int4: torchao's dynamic int8 activations with int8 per-channel or int4 per-group(32) weights,
  which XNNPACK runs natively.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_INT4_GROUP = 32


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


class HalfLinear(nn.Module):
    """y = x @ W^T with W in fp16 (XNNPACK's 16-bit GEMM), fp32 in and out."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.float16))

    def forward(self, x):
        return F.linear(x.half(), self.weight).float()


def _quantize_head(linear: nn.Linear, head: str) -> nn.Module:
    if head == "bf16":
        return HalfLinear(linear.weight.detach().to(torch.bfloat16))
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    wrapper = nn.Sequential(linear)
    dtype, granularity = (torch.int8, PerAxis(0)) if head == "int8" else (torch.int4, PerGroup(HEAD_INT4_GROUP))
    quantize_(wrapper, Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity))
    return wrapper[0]


def fp16_inexact_weights(weight: torch.Tensor) -> int:
    """How many bf16 weights do not survive the bf16 -> fp16 conversion exactly (outside fp16's normal range)."""
    w = weight.to(torch.bfloat16)
    return int((w.to(torch.float16).to(torch.bfloat16) != w).sum())


def quantize_dense_(model, embedding: str, head: str):
    """Swap model.embed_tokens and model.lm_head for their export formats (in place); returns the model."""
    weight = model.embed_tokens.weight.detach()
    model.embed_tokens = Bf16Embedding(weight) if embedding == "bf16" else Int8Embedding(weight)
    model.lm_head = _quantize_head(model.lm_head, head)
    return model
