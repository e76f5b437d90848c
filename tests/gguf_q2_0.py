"""Test helper: Ternary-Bonsai GGUF files written with the gguf package, Q2_0 blocks encoded here from the block
layout of prism's llama.cpp fork (an fp16 scale, then 32 bytes; weight j in bits 2*(j % 4) of byte j // 4, code
t + 1), independently of bonsai_export.gguf_reader."""

from pathlib import Path

import numpy as np
import torch

LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(module: str) -> str:
    if module in TOP:
        return TOP[module] + ".weight"
    _, _, i, sub = module.split(".", 3)
    return f"blk.{i}.{LAYER[sub]}.weight"


def encode_q2_0(values: torch.Tensor, scales: torch.Tensor, group: int = 128) -> np.ndarray:
    """T int8 [N, K] and scales [N, K / group] -> Q2_0 bytes [N, K / group * (2 + group / 4)]."""
    n, k = values.shape
    if scales.shape[1] != k // group:  # group-128 scales written as smaller blocks (upstream's group 64)
        scales = scales.repeat_interleave(k // group // scales.shape[1], dim=1)
    codes = (values.numpy().astype(np.int16) + 1).astype(np.uint8).reshape(n, k // group, group // 4, 4)
    qs = codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)
    d = scales.numpy().astype(np.float16).reshape(n, k // group, 1).view(np.uint8)
    return np.concatenate([d, qs], axis=-1).reshape(n, -1)


def write(path: Path, args, ternary: dict, dense: dict, qtype: int = 42, group: int = 128, extra_kv=None) -> Path:
    """A GGUF of a Qwen3 checkpoint's canonical form: TernaryWeights as Q2_0, dense tensors as F32."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "qwen3")
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_block_count(args.n_layers)
    w.add_feed_forward_length(args.hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_key_length(args.head_dim)
    w.add_value_length(args.head_dim)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_rope_freq_base(args.rope_theta)
    w.add_bos_token_id(args.bos_id)
    w.add_eos_token_id(args.eos_ids[0])
    for key, value in (extra_kv or {}).items():
        w.add_uint32(key, value)
    for module, t in ternary.items():
        raw = encode_q2_0(t.values, t.scales, group).view(np.int8)  # not uint8: the writer keeps raw_shape as is
        w.add_tensor(gguf_name(module), raw, raw_shape=list(t.values.shape), raw_dtype=qtype)
    for name, t in dense.items():
        w.add_tensor(gguf_name(name.removesuffix(".weight")), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
