"""The GGUF artifact: one file that stock llama.cpp loads (and so ollama, LM Studio, llama.cpp's Android apps).

Written with the `gguf` package (llama.cpp's own container writer and numpy quantizers), from the checkpoint
itself rather than from our model, because every tensor gets a llama.cpp type of its own:
- the architecture: llama.cpp's `llama` (Bonsai, Falcon3-1.58bit), `qwen3` (Ternary-Bonsai: q/k norms) or `bitnet`
  (BitNet b1.58 2B4T: sub-layer norms, the head is the token table).
- ternary projections: TQ2_0 (or TQ1_0): blocks of 256 weights along K with one fp16 scale each. A row of Bonsai
  is T * s with one scale per output channel (or per tensor), so each block's absmax is |s| and its codes are T
  exactly: the fold is exact up to rounding s to fp16 (none for bf16 scales in fp16's normal range, measured per
  export). Ternary-Bonsai's t2g has one scale per 128 weights: exact when both halves of every block share a
  magnitude, else refused, or regrouped lossily with --gguf-regroup (the block takes the larger scale, its trits
  are re-rounded; the error is measured and recorded).
- embedding and head: F16 (default; bf16 values are exact in fp16 down to 2**-14), BF16 (bit-exact), Q8_0, Q4_0;
  a group-ternary table (Ternary-Bonsai) is folded first.
- norms: F32, as llama.cpp keeps every 1-D tensor.
- q and k rows permuted from transformers' rotate-half RoPE layout to llama.cpp's interleaved pairs for the llama
  arch only, as llama.cpp's converter does (`permute_rope`); qwen3 and bitnet run NEOX RoPE, transformers' layout.
- the tokenizer: gguf_vocab.py.
- BitNet 2B4T's MLP is relu(gate)^2 * up; llama.cpp's bitnet graph computes silu(gate) * up, so such a model is
  refused unless --gguf-speed-only asks for a file that runs at its speed but not its function.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import torch

from .. import artifact as A
from .. import checkpoint as C
from ..config import ModelArgs
from ..errors import BonsaiError
from .gguf_vocab import add_vocabulary

log = logging.getLogger(__name__)

# option value -> ggml type name (gguf.GGMLQuantizationType member)
TERNARY_TYPES = {"tq2_0": "TQ2_0", "tq1_0": "TQ1_0"}
# head and embedding; TQ2_0 keeps a group-ternary table (Ternary-Bonsai) ternary: llama.cpp gathers rows of it
# and multiplies by it as it does for the layers
DENSE_TYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "tq2_0": "TQ2_0"}
FALLBACKS = {"none": None, "f16": "F16", "q8_0": "Q8_0"}  # for ternary tensors whose K the type cannot hold
FILE_TYPES = {"TQ2_0": "MOSTLY_TQ2_0", "TQ1_0": "MOSTLY_TQ1_0"}  # general.file_type: the ternary layers' type
FP16_MAX = float(np.finfo(np.float16).max)
FP16_ROUNDING = 2.0 ** -11  # the worst relative error of rounding a value in fp16's normal range
TABLES = ("model.embed_tokens", "lm_head")  # group-ternary checkpoints hold these as TernaryWeights too
# BitNet 2B4T's sub-layer norms by their HF names (gguf's name map knows only other checkpoints' names for them)
SUB_NORMS = {"self_attn.attn_sub_norm": gguf.MODEL_TENSOR.ATTN_SUB_NORM,
             "mlp.ffn_sub_norm": gguf.MODEL_TENSOR.FFN_SUB_NORM}
REGROUP_WARNING = ("gguf: --gguf-regroup: %d blocks of 256 weights held two different group scales and now hold the "
                   "larger one (worst tensor's relative error %.3g); lossy: for speed comparisons; prism's llama.cpp "
                   "fork loads the model's own Q2_0 GGUF exactly")


def qtype(name: str):
    return gguf.GGMLQuantizationType[name]


def block_size(type_name: str) -> int:
    """Weights per block along K (1 for the float types)."""
    return gguf.GGML_QUANT_SIZES[qtype(type_name)][0]


def arch_of(a: ModelArgs) -> gguf.MODEL_ARCH:
    """llama.cpp's graph for the family: Qwen3 (q/k norms), BitNet b1.58 2B4T (sub-layer norms), else Llama."""
    return gguf.MODEL_ARCH.QWEN3 if a.qk_norm else gguf.MODEL_ARCH.BITNET if a.sub_norms else gguf.MODEL_ARCH.LLAMA


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q or k projection [n_heads * head_dim, K] from transformers' RoPE layout (dimension i pairs
    with i + head_dim / 2) to llama.cpp's (dimension 2i pairs with 2i + 1): row 2i of each head is old row i,
    row 2i + 1 is old row i + head_dim / 2."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of permute_rope (what a reader of the file does to get transformers' layout back)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(ckpt: C.Checkpoint, path: Path, cfg: A.ExportConfig, max_seq_len: int) -> A.ArtifactEntry:
    """Write the GGUF file; returns the manifest's artifacts entry."""
    plan = _plan(ckpt, cfg)  # every refusal before any byte is written
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[plan["arch"]])
    _hyperparameters(writer, ckpt, max_seq_len, plan["ternary_type"])
    add_vocabulary(writer, ckpt)
    scale_error = regroup_error = 0.0
    for hf_name, gguf_name, type_name in plan["tensors"]:
        data, err, lost = _tensor(ckpt, hf_name, type_name, plan)
        scale_error, regroup_error = max(scale_error, err), max(regroup_error, lost)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype(type_name))
    if scale_error > FP16_ROUNDING:  # scales below 2**-14 keep fewer bits in fp16 than rounding alone costs
        log.warning("gguf: ternary scales below fp16's normal range (2**-14) lose precision in the blocks: worst "
                    "relative error %.3g", scale_error)
    if plan["regrouped_blocks"]:
        log.warning(REGROUP_WARNING, plan["regrouped_blocks"], regroup_error)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    details = {"arch": gguf.MODEL_ARCH_NAMES[plan["arch"]], "ternary": plan["ternary_type"],
               "head": plan["head_type"], "embedding": plan["embedding_type"], "fallback_tensors": plan["fallbacks"],
               "scale_fp16_max_rel_error": scale_error, "regrouped_blocks": plan["regrouped_blocks"],
               "regroup_max_rel_error": regroup_error, "faithful": plan["faithful"]}
    return A.ArtifactEntry(type="gguf", file=A.GGUF_FILE, bits_per_ternary_weight=_ternary_bits(ckpt, plan),
                           details=details)


def _layers(ckpt: C.Checkpoint) -> dict[str, C.TernaryWeight]:
    """The ternary projections (not a group-ternary embedding or head)."""
    return {m: w for m, w in ckpt.ternary.items() if _is_layer(ckpt, m)}


def _is_layer(ckpt: C.Checkpoint, module: str) -> bool:
    return module in ckpt.ternary and module not in TABLES


def _ternary_bits(ckpt: C.Checkpoint, plan: dict) -> float:
    """Bits per weight of the ternary layers as stored (blocks with their scales; fallbacks included)."""
    kinds = {hf: t for hf, _, t in plan["tensors"]}
    weights = bits = 0
    for module, w in _layers(ckpt).items():
        n = w.values.numel()
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype(kinds[module + ".weight"])]
        weights, bits = weights + n, bits + n * 8 * block_bytes / per_block
    return bits / weights


# ----------------------------------------------------------------------------------------------- tensor plan

def _plan(ckpt: C.Checkpoint, cfg: A.ExportConfig) -> dict:
    """(HF name, GGUF name, ggml type) of every tensor, in file order, the fallbacks taken and the blocks
    regrouped."""
    a, arch = ckpt.args, arch_of(ckpt.args)
    faithful = _check_arch(a, arch, cfg)
    names = gguf.get_tensor_name_map(arch, a.n_layers)
    ternary, head, embedding = TERNARY_TYPES[cfg.gguf_ternary], DENSE_TYPES[cfg.gguf_head], \
        DENSE_TYPES[cfg.gguf_embedding]
    tensors, fallbacks = [("model.embed_tokens.weight", "token_embd.weight", embedding)], {}
    for module, w in _layers(ckpt).items():
        gguf_name = names.get_name(module) + ".weight"
        type_name = _ternary_type(module, tuple(w.values.shape), ternary, cfg.gguf_fallback)
        if type_name != ternary:
            fallbacks[gguf_name] = type_name
        tensors.append((module + ".weight", gguf_name, type_name))
    tensors += _norms(a, arch, names)
    # A tied head is llama.cpp's default when output.weight is absent: write it only when its type differs.
    if not a.tie_embeddings or head != embedding:
        head_source = "model.embed_tokens.weight" if a.tie_embeddings else "lm_head.weight"
        tensors.append((head_source, "output.weight", head))
    for hf_name, _, type_name in tensors:
        _check_values(ckpt, hf_name, type_name)
    if fallbacks:
        log.warning("gguf: %s needs K to be a multiple of %d; %d tensors stored as %s instead: %s", ternary,
                    block_size(ternary), len(fallbacks), FALLBACKS[cfg.gguf_fallback],
                    ", ".join(fallbacks))
    mixed = _mixed(ckpt, tensors, cfg.gguf_regroup)
    return {"arch": arch, "tensors": tensors, "fallbacks": fallbacks, "ternary_type": ternary, "head_type": head,
            "embedding_type": embedding, "faithful": faithful, "mixed": set(mixed),
            "regrouped_blocks": sum(mixed.values())}


def _norms(a: ModelArgs, arch, names) -> list[tuple[str, str, str]]:
    """Every 1-D tensor (F32), the family's extra norms included."""
    out = []
    for i in range(a.n_layers):
        hf_names = [f"model.layers.{i}.{norm}" for norm in C.NORMS]
        hf_names += [f"model.layers.{i}.self_attn.{norm}" for norm in C.QK_NORMS] if a.qk_norm else []
        for hf_name in hf_names:
            out.append((hf_name + ".weight", names.get_name(hf_name) + ".weight", "F32"))
        for sub, tensor in SUB_NORMS.items() if a.sub_norms else ():
            out.append((f"model.layers.{i}.{sub}.weight", gguf.TENSOR_NAMES[tensor].format(bid=i) + ".weight", "F32"))
    return out + [("model.norm.weight", "output_norm.weight", "F32")]


def _check_arch(a: ModelArgs, arch, cfg: A.ExportConfig) -> bool:
    """Refuse what llama.cpp's graph for the family cannot compute; returns whether the file computes the model
    (False only for a non-SiLU MLP written with --gguf-speed-only)."""
    name = gguf.MODEL_ARCH_NAMES[arch]
    if a.mlp_act != "silu" and not cfg.gguf_speed_only:
        raise BonsaiError(f"config: hidden_act {a.mlp_act!r} (relu(gate)^2 * up, BitNet b1.58 2B4T): llama.cpp's "
                          f"{name} graph uses SiLU (silu(gate) * up), so its GGUF would load and run at this model's "
                          f"speed but compute another function; bitnet.cpp's own converter is the faithful path, or "
                          f"pass --gguf-speed-only to write it for speed comparisons (recorded as not faithful)")
    if arch == gguf.MODEL_ARCH.BITNET:
        if a.n_heads * a.head_dim != a.dim:
            raise BonsaiError(f"config: llama.cpp's bitnet graph needs num_attention_heads * head_dim ({a.n_heads} * "
                              f"{a.head_dim}) to equal hidden_size ({a.dim}); export --format pte or onnx")
        if not a.tie_embeddings or cfg.gguf_head != cfg.gguf_embedding:
            raise BonsaiError(f"--gguf-head {cfg.gguf_head}: llama.cpp's bitnet graph has no output tensor (the head "
                              f"is the token table), so the head must be tied and of --gguf-embedding's type "
                              f"({cfg.gguf_embedding})")
    return a.mlp_act == "silu"


def _ternary_type(module: str, shape: tuple[int, int], ternary: str, fallback: str) -> str:
    """The ternary type when the tensor's K fits its blocks, else the fallback asked for, else a refusal."""
    if shape[1] % block_size(ternary) == 0:
        return ternary
    if FALLBACKS[fallback] is None:
        raise BonsaiError(f"{module}.weight {list(shape)}: {ternary} needs K (the input size, {shape[1]}) to be a "
                          f"multiple of {block_size(ternary)}, llama.cpp's block; pass --gguf-fallback f16 (exact, "
                          f"16 bits/weight) or q8_0 (8.5 bits) to store such tensors so, or export --format pte or "
                          f"onnx")
    _check_k(module + ".weight", shape, FALLBACKS[fallback], "--gguf-fallback f16 (any K)")
    return FALLBACKS[fallback]


# The largest magnitude each type holds: fp16 values, or fp16 block scales times the largest code.
TYPE_MAX = {"F32": np.inf, "BF16": np.inf, "F16": FP16_MAX, "Q8_0": 127 * FP16_MAX, "Q4_0": 8 * FP16_MAX,
            "TQ2_0": FP16_MAX}


def _check_values(ckpt: C.Checkpoint, hf_name: str, type_name: str) -> None:
    """Refuse, before anything is written, a dense tensor its type cannot hold (K, range) and a ternary scale
    beyond fp16 (the type of every block scale)."""
    module = hf_name.removesuffix(".weight")
    if _is_layer(ckpt, module):
        scales = ckpt.ternary[module].scales.abs()
        if scales.max() > FP16_MAX:
            raise BonsaiError(f"{hf_name}: a scale of {scales.max():.4g} is beyond fp16's range ({FP16_MAX:.0f}), "
                              f"the type of TQ2_0 / TQ1_0 block scales (and of the F16 / Q8_0 fallbacks); export "
                              f"--format pte or onnx")
        return
    if type_name in FILE_TYPES and module not in ckpt.ternary:
        raise BonsaiError(f"{hf_name}: {type_name} is for a group-ternary table (Ternary-Bonsai); this one is dense: "
                          f"use --gguf-head / --gguf-embedding f16, bf16, q8_0 or q4_0")
    x = _values(ckpt, hf_name)
    _check_k(hf_name, tuple(x.shape), type_name, "--gguf-head / --gguf-embedding f16 or bf16 (any K)")
    if x.abs().max() > TYPE_MAX[type_name]:
        raise BonsaiError(f"{hf_name}: values up to {x.abs().max():.4g} overflow {type_name}'s fp16 range "
                          f"({FP16_MAX:.0f}); use --gguf-head / --gguf-embedding bf16")


def _check_k(name: str, shape: tuple[int, ...], type_name: str, fix: str) -> None:
    if shape[-1] % block_size(type_name):
        raise BonsaiError(f"{name} {list(shape)}: {type_name} needs K ({shape[-1]}) to be a multiple of "
                          f"{block_size(type_name)}; use {fix}")


def _mixed(ckpt: C.Checkpoint, tensors: list, regroup: bool) -> dict[str, int]:
    """HF name -> how many of its ternary blocks one block scale cannot hold exactly (group-scaled weights whose
    groups in one block have different magnitudes); without --gguf-regroup the first such block is refused."""
    out = {}
    for hf_name, _, type_name in tensors:
        w = ckpt.ternary.get(hf_name.removesuffix(".weight"))
        if type_name not in FILE_TYPES or w is None or w.group_size is None:
            continue
        mixed = _mixed_blocks(w, block_size(type_name))
        if mixed.any() and not regroup:
            row, b = (int(i) for i in mixed.nonzero()[0])
            block, g = block_size(type_name), w.group_size
            scales = w.scales[row, b * block // g:(b + 1) * block // g].tolist()
            raise BonsaiError(f"{hf_name} row {row}, weights {b * block}..{(b + 1) * block - 1}: its groups of {g} "
                              f"have scales {', '.join(f'{s:.6g}' for s in scales)}, but a {type_name} block holds "
                              f"one fp16 scale per {block} weights ({int(mixed.sum())} such blocks in this tensor); "
                              f"pass --gguf-regroup to write it anyway (lossy, for speed comparisons: each block "
                              f"takes the larger scale, its trits re-rounded), or export --format pte or onnx (exact)")
        if mixed.any():
            out[hf_name] = int(mixed.sum())
    return out


def _mixed_blocks(w: C.TernaryWeight, block: int) -> torch.Tensor:
    """bool [out, K / block]: blocks whose nonzero weights have more than one magnitude in fp16, the scales'
    type in the file (a group of zero trits, or of scale 0, takes any scale). Group sizes divide the block
    (Ternary-Bonsai: 128 in 256)."""
    n, k = w.values.shape
    g = w.group_size
    used = w.values.view(n, k // g, g).ne(0).any(-1)
    mags = w.scales.abs().to(torch.float16).float()
    used &= mags != 0
    mags = mags.view(n, k // block, block // g)
    hi = torch.where(used.view_as(mags), mags, -torch.inf).amax(-1)
    lo = torch.where(used.view_as(mags), mags, torch.inf).amin(-1)
    return hi > lo


# ----------------------------------------------------------------------------------------------- tensor data

def _values(ckpt: C.Checkpoint, hf_name: str) -> torch.Tensor:
    """The tensor as float32: a ternary one folded (scale * T), a dense one widened."""
    module = hf_name.removesuffix(".weight")
    return ckpt.ternary[module].folded() if module in ckpt.ternary else ckpt.dense[hf_name].float()


def _tensor(ckpt: C.Checkpoint, hf_name: str, type_name: str, plan: dict) -> tuple[np.ndarray, float, float]:
    """The tensor's bytes in its ggml type (q/k rows permuted for the llama arch), the worst relative error of
    its scales in fp16 (0 for dense tensors), and ||written - folded|| / ||folded|| of a regrouped one (else 0)."""
    module = hf_name.removesuffix(".weight")
    values = _values(ckpt, hf_name).numpy()
    err = _scale_error(ckpt.ternary[module].scales.numpy()) if _is_layer(ckpt, module) else 0.0
    a = ckpt.args
    if plan["arch"] == gguf.MODEL_ARCH.LLAMA and module.endswith("self_attn.q_proj"):
        values = permute_rope(values, a.n_heads)
    elif plan["arch"] == gguf.MODEL_ARCH.LLAMA and module.endswith("self_attn.k_proj"):
        values = permute_rope(values, a.n_kv_heads)
    # gguf's TQ2_0 / TQ1_0 quantizers take each block's absmax as its scale and round(w / scale) as its codes: the
    # trits exactly when the block holds one magnitude, the regrouping --gguf-regroup describes otherwise.
    data = gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype(type_name))
    lost = 0.0
    if hf_name in plan["mixed"]:
        written = gguf.quants.dequantize(data, qtype(type_name)).reshape(values.shape)
        lost = float(np.linalg.norm(written - values) / np.linalg.norm(values))
    return data, err, lost


def _scale_error(scales: np.ndarray) -> float:
    """Worst relative error of the scales rounded to fp16, the blocks' scale type (range checked by _plan)."""
    nonzero = scales[scales != 0].astype(np.float64)
    rounded = nonzero.astype(np.float16).astype(np.float64)
    return float(np.max(np.abs(rounded - nonzero) / np.abs(nonzero), initial=0.0))


# ----------------------------------------------------------------------------------------------- metadata

def _hyperparameters(writer, ckpt: C.Checkpoint, max_seq_len: int, ternary: str) -> None:
    """The {arch}.* keys llama.cpp's graphs read (the writer prefixes its arch; key_length / value_length: head_dim
    need not be dim / n_heads, as in Qwen3)."""
    a = ckpt.args
    writer.add_name(Path(str(ckpt.source)).name or "model")
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[ternary]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(max_seq_len)
    writer.add_embedding_length(a.dim)
    writer.add_block_count(a.n_layers)
    writer.add_feed_forward_length(a.hidden_dim)
    writer.add_head_count(a.n_heads)
    writer.add_head_count_kv(a.n_kv_heads)
    writer.add_key_length(a.head_dim)
    writer.add_value_length(a.head_dim)
    writer.add_rope_dimension_count(a.head_dim)
    writer.add_rope_freq_base(a.rope_theta)
    writer.add_layer_norm_rms_eps(a.norm_eps)
    writer.add_vocab_size(a.vocab_size)
