"""Group-ternary weights stored dense (prism-ml's "unpacked" Ternary-Bonsai folders): every group of `group`
consecutive weights of a row holds one magnitude s_g and zeros, W = s_g * T. Recovered exactly: T = sign(W),
s_g = max |W| over the group (a 16-bit value, exact in float32); anything else is refused, naming the group."""

from __future__ import annotations

import torch

from .errors import BonsaiError

CHUNK_ROWS = 4096  # rows checked at a time: the float32 copy of a 151936-row table would be 1.2 GB at once


def split(w: torch.Tensor, name: str, group: int, strict: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
    """w [N, K] -> (T int8 [N, K], scales float32 [N, K / group]) with w == scales_g * T exactly. A tensor that
    is not group-ternary raises BonsaiError naming the first offending group, or gives None when not `strict`
    (for a tensor that may be either, like an embedding)."""
    n, k = w.shape
    if k % group:
        if not strict:
            return None
        raise BonsaiError(f"{name}: {k} columns are not a multiple of the {group}-weight group of group-scaled "
                          f"ternary weights")
    values, scales = torch.empty(n, k, dtype=torch.int8), torch.empty(n, k // group)
    for start in range(0, n, CHUNK_ROWS):
        g = w[start:start + CHUNK_ROWS].float().reshape(-1, k // group, group)  # [rows, G, group]
        mag = g.abs()
        scale = mag.amax(dim=-1)  # [rows, G]
        ok = ((mag == scale[..., None]) | (mag == 0)).all(dim=-1)
        if not ok.all():
            if not strict:
                return None
            row, col = (~ok).nonzero()[0].tolist()
            seen = sorted({float(v) for v in mag[row, col].unique() if v != 0})
            raise BonsaiError(
                f"{name}: not group-ternary at row {start + row}, group {col} (columns {col * group}.."
                f"{(col + 1) * group - 1}): it holds {len(seen)} magnitudes ({seen[0]:.6g} .. {seen[-1]:.6g}) "
                f"besides 0, where every group of {group} holds one; this is not a ternary checkpoint")
        values[start:start + CHUNK_ROWS] = torch.sign(g).to(torch.int8).reshape(-1, k)
        scales[start:start + CHUNK_ROWS] = scale
    return values, scales

