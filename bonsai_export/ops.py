"""`bonsai::ternary_linear`: the one custom op every ternary projection goes through.

Semantics (docs/FORMAT.md, bonsai_export/formats.py):
    ternary_linear(x[..., K] f32, packed[N, row_bytes(K)] u8, scales[N] f32, in_features=K, act_bits) -> y[..., N] f32
act_bits 0: float activations (exact Bonsai); act_bits 8: per-token absmax int8 activations, int32 accumulation.
The out variant `ternary_linear.out(..., *, Tensor(a!) out)` is what ExecuTorch's runtime kernel implements.
The eager implementation uses the native kernel library when it is built, the pure-PyTorch reference otherwise.
"""

from __future__ import annotations

import torch

from . import formats

_lib = torch.library.Library("bonsai", "DEF")
_lib.define("ternary_linear(Tensor x, Tensor packed, Tensor scales, int in_features, int act_bits) -> Tensor")
_lib.define(
    "ternary_linear.out(Tensor x, Tensor packed, Tensor scales, int in_features, int act_bits, *, "
    "Tensor(a!) out) -> Tensor(a!)"
)


def unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Torch twin of formats.unpack: uint8 [N, row_bytes(K)] -> int8 [N, K]."""
    n = packed.shape[0]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    codes = (packed.view(n, -1, 1, formats.LANES) >> shifts) & 3
    return codes.reshape(n, -1)[:, :k].to(torch.int8) - formats.CODE_OFFSET


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of formats.quantize_activations: x f32 [M, K] -> (q as f32 integers [M, K], d f32 [M, 1])."""
    amax = x.abs().amax(dim=-1, keepdim=True)
    nonzero = amax > 0
    inv = torch.where(nonzero, formats.INT8_QMAX / torch.where(nonzero, amax, 1.0), 0.0)
    q = torch.clamp(torch.round(x * inv), -formats.INT8_QMAX, formats.INT8_QMAX)
    return q, torch.where(nonzero, amax / formats.INT8_QMAX, 0.0)


def reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, act_bits: int) -> torch.Tensor:
    """Pure-PyTorch ternary linear over x [M, K]."""
    t = unpack(packed, k)
    if act_bits == 0:
        return (x @ t.T.float()) * scales
    if act_bits == 8:
        q, d = quantize_activations(x)
        acc = (q.double() @ t.T.double()).float()  # exact: |acc| <= 127 * K << 2**53
        return (acc * d) * scales
    raise ValueError(f"ternary_linear: expected act_bits 0 or 8, got {act_bits}")


def _native():
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels if kernels.available() else None


def _compute(x, packed, scales, in_features, act_bits):
    if x.shape[-1] != in_features or packed.shape != (scales.shape[0], formats.row_bytes(in_features)):
        raise ValueError(
            f"ternary_linear: x {list(x.shape)}, packed {list(packed.shape)}, scales {list(scales.shape)} "
            f"do not fit in_features={in_features}"
        )
    x2 = x.reshape(-1, in_features).float().contiguous()
    native = _native()
    if native is not None and x2.shape[0] > 0:
        y = torch.from_numpy(native.ternary_linear(
            x2.numpy(), packed.contiguous().numpy(), scales.float().contiguous().numpy(), in_features, act_bits))
    else:
        y = reference(x2, packed, scales.float(), in_features, act_bits)
    return y.reshape(*x.shape[:-1], packed.shape[0])


@torch.library.impl(_lib, "ternary_linear", "CompositeExplicitAutograd")
def _ternary_linear(x, packed, scales, in_features, act_bits):
    return _compute(x, packed, scales, in_features, act_bits)


@torch.library.impl(_lib, "ternary_linear.out", "CompositeExplicitAutograd")
def _ternary_linear_out(x, packed, scales, in_features, act_bits, *, out):
    y = _compute(x, packed, scales, in_features, act_bits)
    out.resize_(y.shape).copy_(y)
    return out


@torch.library.register_fake("bonsai::ternary_linear")
def _ternary_linear_fake(x, packed, scales, in_features, act_bits):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))
