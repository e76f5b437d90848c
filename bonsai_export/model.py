"""A compact, export-ready Llama for Bonsai-shaped models (and Qwen3: the same plus per-head q/k RMSNorm; BitNet
b1.58 2B4T: the same plus RMSNorms before o_proj and down_proj and a ReLU^2 MLP).

GQA attention with HF's rotate-half RoPE, fp32 RMSNorm, SwiGLU MLP, a static KV cache of max_seq_len, and every
ternary projection through `bonsai::ternary_linear`. Group-scaled ternary checkpoints (one scale per 128 weights,
Ternary-Bonsai) run eagerly through GroupTernaryLinear / GroupTernaryEmbedding (the fp32 reference); their export
form (build_model) packs every linear, the embedding and the head as t2g (docs/FORMAT.md "Scales": scale_layout 1).
ExecuTorch's LLM contract: forward(tokens[1, T], input_pos[1]) -> logits[1, T, vocab]; the caches are buffers
updated in place at input_pos.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifact as A
from . import formats, ops  # noqa: F401  (ops registers torch.ops.bonsai.ternary_linear)
from .checkpoint import NORMS, QK_NORMS, SUB_NORMS, Checkpoint
from .config import ModelArgs
from .dense import FORMATS as DENSE_FORMATS
from .dense import Bf16Embedding, DenseLinear, Int8Embedding, quantize_dense_
from .errors import BonsaiError
from .ternary_layers import (BlockTernaryEmbedding, BlockTernaryLinear, GroupTernaryEmbedding, GroupTernaryLinear,
                             TernaryLinear)

# Projections that read the same input run as one matrix, their rows concatenated in this order (keys: our
# modules; values: the checkpoint's HF modules). Exact: every output row is computed on its own, and int8
# activations are quantized per token, now once instead of three or two times. Decode then runs 4 parallel
# matmuls per layer instead of 7: the 16 layers' ternary weights streamed in 8.4-8.7 ms instead of 10.0-10.9 at
# 2 threads (bench-kernels, full size, this host).
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # Bonsai computes the norm in fp32 whatever the activation dtype
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


# The KV cache's element types (`export --kv-cache`): float32, or float16 at half the bytes per position (rows
# rounded to nearest fp16 as they are written; bonsai::attention widens them exactly).
CACHE_DTYPES = {"f32": torch.float32, "f16": torch.float16}


class KVCache(nn.Module):
    def __init__(self, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        shape = (1, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # pos: [T] absolute positions; k, v: [1, n_kv, T, head_dim] float32, stored in the cache's type
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self.k, self.v


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def linear(in_features: int, out_features: int, act_bits: int, group: int | None, packed: bool) -> nn.Module:
    """A ternary projection: packed per-channel (`group` None); group-scaled packed as t2g (`packed`) or eager."""
    if group is None:
        return TernaryLinear(in_features, out_features, act_bits)
    if packed:
        return BlockTernaryLinear(in_features, out_features, act_bits)
    return GroupTernaryLinear(in_features, out_features, group)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, make_linear, max_seq_len: int, cache_dtype: torch.dtype):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        q_dim, kv_dim = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        self.qkv_split = (q_dim, kv_dim, kv_dim)
        self.qkv_proj = make_linear(args.dim, q_dim + 2 * kv_dim)
        self.o_proj = make_linear(q_dim, args.dim)
        self.qk_norm = args.qk_norm
        if args.qk_norm:  # Qwen3: each head of q and k normalized over head_dim, before RoPE
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)
        if args.sub_norms:  # BitNet: the attention output normalized before o_proj quantizes it
            self.attn_sub_norm = RMSNorm(q_dim, args.norm_eps)
        self.sub_norm = args.sub_norms
        self.cache = KVCache(args.n_kv_heads, max_seq_len, args.head_dim, cache_dtype)

    def forward(self, x, cos, sin, pos, input_pos):
        b, t, _ = x.shape  # x: [1, T, dim]; cos, sin: [T, 1, hd]; pos: [T] = input_pos + arange(T)
        q, k, v = self.qkv_proj(x).split(self.qkv_split, dim=-1)
        q = q.reshape(b, t, self.n_heads, self.head_dim)  # [1, T, H, hd]
        k = k.reshape(b, t, self.n_kv_heads, self.head_dim)  # [1, T, Hkv, hd]
        v = v.reshape(b, t, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_cache, v_cache = self.cache.update(pos, k.transpose(1, 2), v.transpose(1, 2))  # [1, Hkv, S, hd]
        y = torch.ops.bonsai.attention(q, k_cache, v_cache, input_pos)  # [1, T, H, hd], reads [0, pos + T)
        y = y.reshape(b, t, -1)
        return self.o_proj(self.attn_sub_norm(y) if self.sub_norm else y)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, make_linear):
        super().__init__()
        self.gate_up_proj = make_linear(args.dim, 2 * args.hidden_dim)
        self.down_proj = make_linear(args.hidden_dim, args.dim)
        self.mlp_act = args.mlp_act  # "silu" (SwiGLU) or "relu2" (BitNet b1.58)
        if args.sub_norms:  # BitNet: the product normalized before down_proj quantizes it
            self.ffn_sub_norm = RMSNorm(args.hidden_dim, args.norm_eps)
        self.sub_norm = args.sub_norms

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        h = (F.silu(gate) if self.mlp_act == "silu" else relu2(gate)) * up  # [1, T, hidden_dim]
        return self.down_proj(self.ffn_sub_norm(h) if self.sub_norm else h)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58's MLP activation (transformers' "relu2"): relu(x)^2."""
    return F.relu(x).square()


class Block(nn.Module):
    def __init__(self, args: ModelArgs, make_linear, max_seq_len: int, cache_dtype: torch.dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, make_linear, max_seq_len, cache_dtype)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = FeedForward(args, make_linear)

    def forward(self, x, cos, sin, pos, input_pos):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, pos, input_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, act_quant: str = "none", max_seq_len: int | None = None,
                 group: int | None = None, packed: bool = False, kv_cache: str = "f32"):
        """`group`: None for per-channel ternary linears (packed, bonsai::ternary_linear), else the group size of
        group-scaled ones: eager fp32 (float activations only), or `packed` as t2g through bonsai::ternary_linear."""
        super().__init__()
        if act_quant not in formats.ACT_MODES:
            raise BonsaiError(f"act_quant: expected one of {', '.join(formats.ACT_MODES)}, got {act_quant!r}")
        if group is not None and act_quant != "none" and not packed:
            raise BonsaiError(f"act_quant {act_quant}: the eager model of group-scaled ternary weights (one scale "
                              f"per {group}) runs float activations; use --act-quant none, or export the "
                              f"checkpoint (its t2g artifact takes int8 activations)")
        max_seq_len = max_seq_len or args.max_seq_len
        if not 1 <= max_seq_len <= args.max_seq_len:
            raise BonsaiError(f"max_seq_len: expected 1..{args.max_seq_len} (the model's limit), got {max_seq_len}")
        self.args, self.act_quant, self.max_seq_len = args, act_quant, max_seq_len
        act_bits = formats.ACT_MODES[act_quant]
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        make_linear = partial(linear, act_bits=act_bits, group=group, packed=packed)
        if kv_cache not in CACHE_DTYPES:
            raise BonsaiError(f"kv_cache: expected one of {', '.join(CACHE_DTYPES)}, got {kv_cache!r}")
        self.layers = nn.ModuleList(Block(args, make_linear, max_seq_len, CACHE_DTYPES[kv_cache])
                                    for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout: [S, head_dim]
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, T]; input_pos [P] with P = 1 or T, input_pos[0] = the position of tokens[:, 0].
        Returns the logits of the last P positions, [1, P, vocab]: input_pos [1] (ExecuTorch's LLM-runner
        contract) asks for the next token only and skips the head on the rest of the prompt (a fifth of prefill
        time at Bonsai's size); the positions of all T tokens ask for every position, as scoring needs."""
        t = tokens.shape[1]
        start = input_pos[:1]
        pos = start + torch.arange(t, device=tokens.device)  # [T]
        cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)  # [T, 1, hd]
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, pos, start)
        return self.lm_head(self.norm(h[:, t - input_pos.shape[0]:])).float()

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.cache.k.zero_()
            layer.self_attn.cache.v.zero_()


def from_checkpoint(ckpt: Checkpoint, act_quant: str | None = None, max_seq_len: int | None = None,
                    packed: bool = False, kv_cache: str = "f32") -> Transformer:
    """Build the model (fp32 dense parts, packed ternary linears) from a canonical checkpoint; `packed`: a
    group-scaled checkpoint's linears, embedding and head as t2g (else they run eagerly in fp32). `act_quant`
    None: the mode the checkpoint's own model computes (ckpt.act_quant: int8 for BitNet formats)."""
    act_quant = ckpt.act_quant if act_quant is None else act_quant
    model = Transformer(ckpt.args, act_quant, max_seq_len, ckpt.group_size, packed, kv_cache)
    dense = ckpt.dense
    with torch.no_grad():
        _load_table(model, ckpt, packed)
        model.norm.weight.copy_(dense["model.norm.weight"].float())
        for i, layer in enumerate(model.layers):
            for norm in NORMS:
                getattr(layer, norm).weight.copy_(dense[f"model.layers.{i}.{norm}.weight"].float())
            for norm in QK_NORMS if ckpt.args.qk_norm else ():
                layer.self_attn.get_submodule(norm).weight.copy_(dense[f"model.layers.{i}.self_attn.{norm}.weight"])
            for norm in SUB_NORMS if ckpt.args.sub_norms else ():
                layer.get_submodule(norm).weight.copy_(dense[f"model.layers.{i}.{norm}.weight"].float())
            for sub, parts in FUSED.items():
                ws = [ckpt.ternary[f"model.layers.{i}.{part}"] for part in parts]
                values, scales = torch.cat([w.values for w in ws]), torch.cat([w.scales for w in ws])
                module = layer.get_submodule(sub)
                if isinstance(module, BlockTernaryLinear):
                    module.load(values, scales, f"{ckpt.source}: model.layers.{i}.{parts[0]}")
                else:
                    module.load(values, scales)
    return model.eval()


def _load_table(model: Transformer, ckpt: Checkpoint, packed: bool) -> None:
    """The embedding and the head: dense tensors, or group-ternary ones (Ternary-Bonsai) kept int8 plus scales
    (eager) or t2g (`packed`). A tied head reads the embedding's weight in either form; packed, the very same
    buffers, so an artifact holds the table once."""
    embed = ckpt.ternary.get("model.embed_tokens")
    if embed is not None and packed:
        table = BlockTernaryLinear(ckpt.args.dim, ckpt.args.vocab_size, act_bits=0)
        table.load(embed.values, embed.scales, f"{ckpt.source}: model.embed_tokens")
        model.embed_tokens = BlockTernaryEmbedding(table.packed, table.scales, ckpt.args.dim)
    elif embed is not None:
        model.embed_tokens = GroupTernaryEmbedding(embed)
    else:
        model.embed_tokens.weight.copy_(ckpt.dense["model.embed_tokens.weight"].float())
    own_head = ckpt.ternary.get("lm_head")
    head = own_head if own_head is not None else (embed if ckpt.args.tie_embeddings else None)
    if head is not None and packed:
        # the head takes the layers' activations: t2g with float activations is ALU-bound (at 151936 x 2048 one
        # token measured 124 ms float, 8.3 ms int8 on AVX-512), so a float head would cap int8 decode at 8 tok/s
        model.lm_head = BlockTernaryLinear(ckpt.args.dim, ckpt.args.vocab_size, formats.ACT_MODES[model.act_quant])
        if own_head is None and embed is not None:
            model.lm_head.packed, model.lm_head.scales = model.embed_tokens.packed, model.embed_tokens.scales
        else:
            model.lm_head.load(head.values, head.scales, f"{ckpt.source}: lm_head")
    elif head is not None:
        model.lm_head = GroupTernaryLinear(ckpt.args.dim, ckpt.args.vocab_size, head.group_size)
        model.lm_head.load(head.values, head.scales)
    else:
        dense = ckpt.dense.get("lm_head.weight", ckpt.dense.get("model.embed_tokens.weight"))
        model.lm_head.weight.copy_(dense.float())


def build_model(ckpt: Checkpoint, cfg: A.ExportConfig) -> Transformer:
    """The model exactly as the artifact of `cfg` computes it: the export's input, and the tests' reference."""
    if ckpt.group_size is None:
        model = from_checkpoint(ckpt, act_quant=cfg.act_quant, max_seq_len=cfg.max_seq_len, kv_cache=cfg.kv_cache)
        return quantize_dense_(model, cfg.embedding, cfg.head, formats.ACT_MODES[cfg.head_act_quant])
    model = from_checkpoint(ckpt, act_quant=cfg.act_quant, max_seq_len=cfg.max_seq_len, packed=True,
                            kv_cache=cfg.kv_cache)
    return _dense_tables_(model, cfg)


def _dense_tables_(model: Transformer, cfg: A.ExportConfig) -> Transformer:
    """A group-scaled checkpoint's embedding and head stay t2g where the checkpoint has them ternary (its own
    values, lossless: the default "bf16" formats mean exactly that); a dense one takes its --embedding / --head
    format. A lossy format for a ternary table is refused: it would be larger and lose the checkpoint's values."""
    for option, value, ternary in (("embedding", cfg.embedding, isinstance(model.embed_tokens, BlockTernaryEmbedding)),
                                   ("head", cfg.head, isinstance(model.lm_head, BlockTernaryLinear))):
        if ternary and value != "bf16":
            raise BonsaiError(f"--{option} {value}: this checkpoint's {option} is group-ternary and is exported as "
                              f"t2g (2.125 bits a weight, its own values); leave --{option} at its default")
    if isinstance(model.embed_tokens, nn.Embedding):
        weight = model.embed_tokens.weight.detach()
        model.embed_tokens = Bf16Embedding(weight) if cfg.embedding == "bf16" else Int8Embedding(weight)
    if isinstance(model.lm_head, nn.Linear):
        model.lm_head = DenseLinear(model.lm_head.weight, cfg.head, formats.ACT_MODES[cfg.head_act_quant])
    return model


def table_formats(model: Transformer) -> tuple[str, str]:
    """The stored formats of the embedding and the head: "t2g", or the dense format's name."""
    embed = model.embed_tokens
    embedding = ("t2g" if isinstance(embed, BlockTernaryEmbedding) else "int8" if isinstance(embed, Int8Embedding)
                 else "bf16")
    head = model.lm_head
    bits = {f.bits: name for name, f in DENSE_FORMATS.items()}
    return embedding, ("t2g" if isinstance(head, BlockTernaryLinear) else bits[head.bits])


def ternary_values(model: Transformer) -> dict[str, np.ndarray]:
    """Unpacked int8 ternary matrices keyed by the checkpoint's module names ("layers.0.self_attn.q_proj"), fused
    projections split back into their parts (for tests and reports)."""
    shapes = model.args.linear_shapes
    values = {}
    for i, layer in enumerate(model.layers):
        for sub, parts in FUSED.items():
            m = layer.get_submodule(sub)
            rows = np.cumsum([shapes[part][0] for part in parts])[:-1]
            t = m.values.numpy() if isinstance(m, GroupTernaryLinear) else formats.unpack(m.packed.numpy(),
                                                                                             m.in_features)
            for part, t in zip(parts, np.split(t, rows)):
                values[f"layers.{i}.{part}"] = t
    return values
