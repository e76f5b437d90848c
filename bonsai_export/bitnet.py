"""transformers' BitNet packed weights (`quantization_config.quant_method = "bitnet"`).

A ternary matrix W [out, in] is stored as uint8 [ceil(out/4), in], packed along dim 0 in four row blocks:
bits 2i..2i+1 of packed[r, c] hold W[i * rows + r, c] + 1, where rows = ceil(out/4) (codes 0, 1, 2 = -1, 0, +1).
`weight_scale` has shape [1]. Two conventions exist for it:
- "bitlinear":     y = (x @ W^T) / weight_scale   (Falcon3 1.58bit, HF1BitLLM)
- "autobitlinear": y = (x @ W^T) * weight_scale   (microsoft/bitnet-b1.58-2B-4T)
The bf16 "master weights" folders (quantization_mode "online", microsoft/bitnet-b1.58-2B-4T-bf16) store latent
float weights instead, which AutoBitLinear ternarizes on every forward with one absmean scale per tensor
(absmean_ternarize).
"""

from __future__ import annotations

import torch

LINEAR_CLASSES = ("bitlinear", "autobitlinear")


def pack(t: torch.Tensor) -> torch.Tensor:
    """int8 ternary [out, in] -> uint8 [ceil(out/4), in] (used by tests to build BitNet checkpoints)."""
    out, cols = t.shape
    rows = -(-out // 4)
    codes = torch.ones(rows * 4, cols, dtype=torch.uint8)  # padding rows hold code 1 (zero weight)
    codes[:out] = (t.to(torch.int16) + 1).to(torch.uint8)
    packed = torch.zeros(rows, cols, dtype=torch.uint8)
    for i in range(4):
        packed |= codes[i * rows : (i + 1) * rows] << (2 * i)
    return packed


def unpack(packed: torch.Tensor, out: int) -> torch.Tensor:
    """uint8 [ceil(out/4), in] -> int8 ternary [out, in]. Raises ValueError on the invalid code 3."""
    planes = [(packed >> (2 * i)) & 3 for i in range(4)]
    codes = torch.cat(planes, dim=0)[:out]
    if (codes == 3).any():
        raise ValueError("invalid 2-bit code 3")
    return (codes.to(torch.int8) - 1).to(torch.int8)


def channel_scales(weight_scale: torch.Tensor, out: int, linear_class: str) -> torch.Tensor:
    """The per-output-channel float32 scale that multiplies x @ W^T, for either convention."""
    s = weight_scale.float().reshape(-1)
    s = 1.0 / s if linear_class == "bitlinear" else s
    return s.expand(out).contiguous()


def absmean_ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent weights [out, in] -> (int8 trits, the float32 scale [1] that multiplies x @ T^T), as AutoBitLinear's
    online WeightQuant computes them in float32: s = 1 / max(mean |W|, 1e-5), T = clamp(round(W * s), -1, 1)."""
    w = w.float()
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1).to(torch.int8), (1.0 / s).reshape(1)
