"""The model's custom ops, each a functional op plus the `.out` overload ExecuTorch's runtime kernels implement.

    ternary_linear(x[..., K] f32, packed[N, row_bytes(K)] u8, scales, int in_features, int act_bits,
                   int scale_layout=0) -> y[..., N] f32
Every ternary projection (docs/FORMAT.md, bonsai_export/formats.py). act_bits 0: float activations (exact
Bonsai); 8: per-token absmax int8 activations with int32 accumulation. scale_layout 0: scales f32 [N], one per
output channel (Bonsai); 1: scales f16 [N, num_blocks(K)], one per block of 128 weights (Ternary-Bonsai), each
block's int32 sum scaled on its own (formats.matmul_blocks).

    dense_linear(x[..., K] f32, weight, scales, int in_features, int weight_bits, int act_bits=0) -> y[..., N] f32
Quantized linear (the output head; docs/FORMAT.md "Dense weights"), float activations or (act_bits 8, weight_bits
8 or 4) int8 activations with one scale per group of formats.DENSE_GROUP (formats.quantize_dense_activations).
weight_bits 16: weight bf16 [N, K], scales f32 [N]; 8: int8 codes [N, K], bf16 scales [N, G], one per group of
formats.DENSE_GROUP weights along K: W[n, k] = code[n, k] * scales[n, k // DENSE_GROUP]; 4: uint8 [N, 16 G]
nibbles 0..15 (per group: low nibbles the first 16 columns, high the last 16), bf16 (scale, offset) pairs
[N, G, 2]: W = code * scale + offset.

    attention(q[1, T, H, D] f32, k_cache[1, Hkv, S, D], v_cache[1, Hkv, S, D], input_pos[1] i64)
        -> y[1, T, H, D] f32
The caches are both f32 or both f16 (`export --kv-cache f16`: half the bytes per attended position; each value
is widened exactly, then computed as with f32 caches).
Causal grouped-query attention of the T queries at positions input_pos + t over the cache prefix
[0, input_pos + t], softmax scale D**-0.5. It reads only the filled prefix of the cache (never the unwritten
rest), so a runtime needs neither zeroed caches nor a pass over all max_seq_len positions per token.

Eager implementations: the native kernel library (bonsai_export.kernels) when it is built, so eager and the .pte
run the same kernels; pure PyTorch otherwise (the *reference functions below stay the specification).
"""

from __future__ import annotations

import torch

from . import formats

_lib = torch.library.Library("bonsai", "DEF")


def _define(name: str, args: str, compute, fake) -> None:
    """Define `bonsai::name(args) -> Tensor` and its `.out` overload, with one compute function for both."""
    _lib.define(f"{name}({args}) -> Tensor")
    _lib.define(f"{name}.out({args}, *, Tensor(a!) out) -> Tensor(a!)")

    def out_variant(*inputs, out):
        y = compute(*inputs)
        out.resize_(y.shape).copy_(y)
        return out

    torch.library.impl(_lib, name, "CompositeExplicitAutograd")(compute)
    torch.library.impl(_lib, f"{name}.out", "CompositeExplicitAutograd")(out_variant)
    torch.library.register_fake(f"bonsai::{name}")(fake)


# --- ternary_linear ---

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


def reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, act_bits: int,
              scale_layout: int = 0) -> torch.Tensor:
    """Pure-PyTorch ternary linear over x [M, K]."""
    t = unpack(packed, k)
    if scale_layout == formats.SCALE_LAYOUTS["block"]:
        return _reference_blocks(x, t, scales, k, act_bits)
    if act_bits == 0:
        return (x @ t.T.float()) * scales
    if act_bits == 8:
        q, d = quantize_activations(x)
        acc = (q.double() @ t.T.double()).float()  # exact: |acc| <= 127 * K << 2**53
        return (acc * d) * scales
    raise ValueError(f"ternary_linear: expected act_bits 0 or 8, got {act_bits}")


def _reference_blocks(x: torch.Tensor, t: torch.Tensor, scales: torch.Tensor, k: int, act_bits: int) -> torch.Tensor:
    """Block scales [N, blocks]: formats.matmul_blocks in torch (int8: exact block sums, scaled in block order)."""
    s = scales.float()
    if act_bits == 0:
        return x @ (t.float() * s.repeat_interleave(formats.BLOCK_K, dim=1)[:, :k]).T
    if act_bits != 8:
        raise ValueError(f"ternary_linear: expected act_bits 0 or 8, got {act_bits}")
    q, d = quantize_activations(x)
    z = torch.zeros(x.shape[0], t.shape[0])
    for b in range(s.shape[1]):
        cols = slice(b * formats.BLOCK_K, min(k, (b + 1) * formats.BLOCK_K))
        acc = (q[:, cols].double() @ t[:, cols].T.double()).float()  # exact block sums
        z = z + acc * s[:, b]
    return z * d


def _native():
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels if kernels.available() else None


def _ternary_linear(x, packed, scales, in_features, act_bits, scale_layout=0):
    blocks = scale_layout == formats.SCALE_LAYOUTS["block"]
    want_scales = (packed.shape[0], formats.num_blocks(in_features)) if blocks else (packed.shape[0],)
    if (x.shape[-1] != in_features or packed.shape[1:] != (formats.row_bytes(in_features),)
            or tuple(scales.shape) != want_scales):
        raise ValueError(
            f"ternary_linear: x {list(x.shape)}, packed {list(packed.shape)}, scales {list(scales.shape)} "
            f"do not fit in_features={in_features} and scale_layout={scale_layout}"
        )
    x2 = x.reshape(-1, in_features).float().contiguous()
    native = _native()
    if native is not None and x2.shape[0] > 0:
        s = scales.to(torch.float16) if blocks else scales.float()
        y = torch.from_numpy(native.ternary_linear(
            x2.numpy(), packed.contiguous().numpy(), s.contiguous().numpy(), in_features, act_bits,
            scale_layout=scale_layout))
    else:
        y = reference(x2, packed, scales if blocks else scales.float(), in_features, act_bits, scale_layout)
    return y.reshape(*x.shape[:-1], packed.shape[0])


def _linear_fake(x, weight, scales, in_features, bits, scale_layout=0):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_define("ternary_linear", "Tensor x, Tensor packed, Tensor scales, int in_features, int act_bits, int scale_layout=0",
        _ternary_linear, _linear_fake)


# --- dense_linear ---

def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, 16 G] (per group of 32: byte j = code of column j | code of column 16 + j << 4) -> codes uint8
    [N, K] in [0, 15]."""
    groups = packed.view(packed.shape[0], -1, formats.DENSE_GROUP // 2)
    return torch.cat((groups & 0xF, groups >> 4), dim=-1).reshape(packed.shape[0], -1)[:, :k]


def group_scales(scales: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group values [N, G] of the group-wise formats -> float32 [N, K], the value of every weight's group."""
    return scales.float().repeat_interleave(formats.DENSE_GROUP, dim=1)[:, :k]


def dense_weight(weight: torch.Tensor, scales: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    """The float32 [N, K] matrix a dense_linear weight stands for. int8: code * scale, exact (a code of 8 bits
    times a bf16 scale's 8-bit significand); int4: code * scale + offset, the product exact and the sum rounded
    once, so any kernel that computes code * scale + offset (multiply then add, or one FMA) gets these weights."""
    if bits == 16:
        return weight.float() * scales.float()[:, None]
    if bits == 8:
        return weight.float() * group_scales(scales, k)
    if bits == 4:
        return unpack_int4(weight, k).float() * group_scales(scales[..., 0], k) + group_scales(scales[..., 1], k)
    raise ValueError(f"dense_linear: expected weight_bits 16, 8 or 4, got {bits}")


def raw16(t: torch.Tensor) -> torch.Tensor:
    """bf16 as its raw 16 bits (numpy has no bfloat16); other dtypes unchanged."""
    return t.contiguous().view(torch.int16) if t.dtype == torch.bfloat16 else t.contiguous()


def dense_activations(x: torch.Tensor, act_bits: int) -> torch.Tensor:
    """x as the head multiplies it: itself, or (act_bits 8) its int8 group codes times their scales."""
    if act_bits == 0:
        return x.float()
    x2 = x.detach().reshape(-1, x.shape[-1]).float().numpy()
    q, d = formats.quantize_dense_activations(x2)
    xq = q.astype("float32").reshape(len(x2), d.shape[1], formats.DENSE_GROUP) * d[..., None]
    return torch.from_numpy(xq.reshape(len(x2), -1)[:, : x.shape[-1]]).reshape(x.shape)


def _dense_linear(x, weight, scales, in_features, weight_bits, act_bits=0):
    if x.shape[-1] != in_features:
        raise ValueError(f"dense_linear: x {list(x.shape)} does not fit in_features={in_features}")
    if act_bits not in (0, 8) or (act_bits == 8 and weight_bits == 16):
        raise ValueError(f"dense_linear: expected act_bits 0, or 8 with weight_bits 8 or 4, got {act_bits}")
    native = _native()
    if native is None or x.numel() == 0 or weight_bits not in (16, 8, 4):
        return dense_activations(x, act_bits) @ dense_weight(weight, scales, in_features, weight_bits).T
    x2 = x.detach().reshape(-1, in_features).float().contiguous()
    y = torch.from_numpy(native.dense_linear(
        x2.numpy(), raw16(weight).numpy(), raw16(scales).numpy(), in_features, weight_bits, act_bits=act_bits))
    return y.reshape(*x.shape[:-1], weight.shape[0])


_define("dense_linear", "Tensor x, Tensor weight, Tensor scales, int in_features, int weight_bits, int act_bits=0",
        _dense_linear, _linear_fake)


# --- attention ---

def attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int) -> torch.Tensor:
    _, t, h, d = q.shape
    hkv = k_cache.shape[1]
    if pos < 0 or pos + t > k_cache.shape[2]:
        raise ValueError(f"attention: positions [{pos}, {pos + t}) do not fit the cache of {k_cache.shape[2]}")
    k = k_cache[0, :, : pos + t].to(q.dtype).repeat_interleave(h // hkv, dim=0)  # [H, L, D]; fp16 caches widened
    v = v_cache[0, :, : pos + t].to(q.dtype).repeat_interleave(h // hkv, dim=0)
    scores = (q[0].transpose(0, 1) @ k.transpose(1, 2)) * d**-0.5  # [H, T, L]
    allowed = torch.arange(pos + t)[None, :] <= (pos + torch.arange(t))[:, None]  # [T, L]
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probs @ v).transpose(0, 1).unsqueeze(0)  # [1, T, H, D]


def _attention(q, k_cache, v_cache, input_pos):
    pos = int(input_pos[0])
    native = _native()
    if native is None or q.dim() != 4 or q.shape[0] != 1 or k_cache.dim() != 4 or k_cache.shape[0] != 1:
        return attention_reference(q, k_cache, v_cache, pos)
    if pos < 0 or pos + q.shape[1] > k_cache.shape[2]:  # the reference's message, before the binding's
        return attention_reference(q, k_cache, v_cache, pos)
    cache_type = torch.float16 if k_cache.dtype == torch.float16 else torch.float32  # the kernel reads either
    out = native.attention(q[0].detach().float().contiguous().numpy(),
                           k_cache[0].detach().to(cache_type).contiguous().numpy(),
                           v_cache[0].detach().to(cache_type).contiguous().numpy(), pos)
    return torch.from_numpy(out).unsqueeze(0)


_define("attention", "Tensor q, Tensor k_cache, Tensor v_cache, Tensor input_pos", _attention,
        lambda q, k_cache, v_cache, input_pos: q.new_empty(q.shape))
