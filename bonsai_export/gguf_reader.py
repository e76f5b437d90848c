"""prism-ml's Ternary-Bonsai GGUF (`Q2_0`, ggml type 42 in the files of prism's llama.cpp fork; 142 in its later
builds, where upstream's group-64 Q2_0 took 42) read into HF names, dense tensors and group-ternary weights.

Q2_0 block, 128 weights along a row in 34 bytes (the fork's ggml-common.h `block_q2_0`): an fp16 scale d, then
32 bytes of 2-bit codes, weight j in bits 2*(j % 4) of byte j // 4 (low bits first); w_j = (code - 1) * d. Code 3
(+2 d) is never written for ternary weights and is refused. The gguf package parses the container (header,
metadata, tensor infos); it does not know type 42, so the tensors are sized and decoded here. llama.cpp stores
Qwen3's q/k projections unpermuted (its Qwen2-family RoPE is the rotate-half layout), so names map one to one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import BonsaiError

Q2_0_TYPES = (42, 142)
Q2_0_GROUP, Q2_0_BLOCK_BYTES = 128, 34
DENSE_TYPES = {0: np.float32, 1: np.float16, 30: None}  # F32, F16, BF16 (read as raw uint16)
ARCH = "qwen3"

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(name: str) -> str:
    """GGUF tensor name -> HF name ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
    base, _, suffix = name.rpartition(".")
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    raise BonsaiError(f"{name}: GGUF tensor of no Qwen3 module bonsai-export implements")


def _reader_class():
    from gguf import GGUFReader

    class Reader(GGUFReader):
        """The package's reader with tensor infos kept raw (name, dims, type, offset): its own tensor pass
        refuses ggml types it does not know, Q2_0 among them."""

        def _build_tensors(self, start_offs, fields):
            self.tensor_infos = []
            for field in fields:
                _, name, _, dims, raw_type, offset = field.parts
                self.tensor_infos.append((bytes(name).decode("utf-8"), [int(d) for d in dims], int(raw_type[0]),
                                          int(start_offs + offset[0])))

    return Reader


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _config(reader, vocab_size: int, tied: bool, path: Path) -> dict:
    """The Qwen3 config.json the GGUF metadata describes (the names transformers' Qwen3Config reads)."""
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise BonsaiError(f"{path.name}: general.architecture is {arch!r}; bonsai-export reads Qwen3 GGUF files "
                          f"(Ternary-Bonsai)")
    rotated = sorted(k for k in reader.fields if k.startswith("prism.hadamard"))
    if rotated:
        raise BonsaiError(f"{path.name}: declares {rotated[0]} (weights stored in a rotated basis), which "
                          f"bonsai-export does not implement")

    def need(key: str):
        value = _field(reader, f"{ARCH}.{key}")
        if value is None:
            raise BonsaiError(f"{path.name}: missing GGUF metadata {ARCH}.{key}")
        return value

    cfg = {
        "model_type": "qwen3", "vocab_size": vocab_size, "hidden_size": int(need("embedding_length")),
        "num_hidden_layers": int(need("block_count")), "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": int(need("attention.head_count")),
        "num_key_value_heads": int(need("attention.head_count_kv")),
        "head_dim": int(need("attention.key_length")), "max_position_embeddings": int(need("context_length")),
        # float32 in the file: its shortest decimal is the config's value (1e-06, not 9.99999997e-07)
        "rms_norm_eps": float(str(np.float32(need("attention.layer_norm_rms_epsilon")))),
        "rope_theta": float(str(np.float32(need("rope.freq_base")))),
        "tie_word_embeddings": tied,
    }
    for key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                          ("pad_token_id", "padding_token_id")):
        value = _field(reader, f"tokenizer.ggml.{gguf_key}")
        if value is not None:
            cfg[key] = int(value)
    if _field(reader, f"{ARCH}.rope.scaling.type", "none") not in ("none", "linear") or \
            _field(reader, f"{ARCH}.rope.scaling.factor", 1.0) != 1.0:
        raise BonsaiError(f"{path.name}: unsupported {ARCH}.rope.scaling.*; bonsai-export implements default RoPE")
    return cfg


def decode_q2_0(raw: np.ndarray, name: str, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q2_0 bytes of an [n, k] tensor -> (T int8 [n, k], scales float32 [n, k / 128])."""
    blocks = raw.reshape(n, k // Q2_0_GROUP, Q2_0_BLOCK_BYTES)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # [n, G]
    qs = blocks[..., 2:]  # [n, G, 32]
    codes = np.stack([(qs >> shift) & 3 for shift in (0, 2, 4, 6)], axis=-1).reshape(n, k)  # byte j//4, bits 2(j%4)
    bad = codes == 3
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise BonsaiError(f"{name}: code 3 (+2 * scale) at row {row}, group {col // Q2_0_GROUP}: not a ternary "
                          f"Q2_0 tensor")
    if not np.isfinite(scales).all():
        row, group = (int(i) for i in np.argwhere(~np.isfinite(scales))[0])
        raise BonsaiError(f"{name}: scale of row {row}, group {group} is NaN or Inf")
    return torch.from_numpy(codes.astype(np.int8) - 1), torch.from_numpy(scales)


def _tensor(reader, name: str, dims: list[int], kind: int, offset: int, span: int, path: Path):
    """One tensor: a dense torch tensor (norms, a 16-bit table) or a (T, scales) pair for Q2_0."""
    shape = tuple(reversed(dims))  # GGUF lists the innermost dimension first
    count = int(np.prod(shape))
    if kind in Q2_0_TYPES:
        if len(shape) != 2:
            raise BonsaiError(f"{name}: Q2_0 tensor of shape {list(shape)}; expected a matrix")
        if shape[1] % Q2_0_GROUP:
            raise BonsaiError(f"{name}: {shape[1]} columns are not a multiple of Q2_0's {Q2_0_GROUP}-weight block")
        nbytes = count // Q2_0_GROUP * Q2_0_BLOCK_BYTES
    elif kind in DENSE_TYPES:
        nbytes = count * (4 if kind == 0 else 2)
    else:
        raise BonsaiError(f"{name}: ggml type {kind} is not read by bonsai-export (Q2_0, F32, F16, BF16 are)")
    if offset + nbytes > reader.data.size:
        raise BonsaiError(f"{path.name}: truncated: {name} needs bytes {offset}..{offset + nbytes} but the file "
                          f"has {reader.data.size}; re-download it")
    if span >= nbytes + reader.alignment:  # the next tensor starts further than alignment padding explains
        what = (f"Q2_0 blocks of {Q2_0_GROUP} weights in {Q2_0_BLOCK_BYTES} bytes" if kind in Q2_0_TYPES
                else f"ggml type {kind}")
        raise BonsaiError(f"{name}: holds {span} bytes where {what} need {nbytes}: another block size "
                          f"(upstream's 64-weight Q2_0?) is not read")
    raw = reader.data[offset:offset + nbytes]
    if kind in Q2_0_TYPES:
        return decode_q2_0(raw, name, *shape)
    if kind == 30:
        return torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(raw.view(DENSE_TYPES[kind]).astype(np.float32)).reshape(shape)


def read(path: Path) -> tuple[dict, dict]:
    """(config dict, tensors): HF name -> dense tensor ("model.norm.weight"), or HF module name -> (T, scales)
    for Q2_0 weights ("model.layers.0.self_attn.q_proj")."""
    path = Path(path)
    try:
        reader = _reader_class()(str(path))
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise BonsaiError(f"{path.name}: not a readable GGUF file ({str(exc)[:120] or type(exc).__name__}); "
                          f"re-download it") from None
    infos = sorted(reader.tensor_infos, key=lambda t: t[3])
    ends = [t[3] for t in infos[1:]] + [reader.data.size]
    tensors = {}
    for (name, dims, kind, offset), end in zip(infos, ends):
        value = _tensor(reader, name, dims, kind, offset, end - offset, path)
        hf = hf_name(name)
        tensors[hf.removesuffix(".weight") if isinstance(value, tuple) else hf] = value
    embed = tensors.get("model.embed_tokens", tensors.get("model.embed_tokens.weight"))
    if embed is None:
        raise BonsaiError(f"{path.name}: no token_embd.weight tensor")
    vocab = int(embed[0].shape[0] if isinstance(embed, tuple) else embed.shape[0])
    tied = "lm_head" not in tensors and "lm_head.weight" not in tensors
    return _config(reader, vocab, tied, path), tensors
