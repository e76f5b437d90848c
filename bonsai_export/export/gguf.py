"""The GGUF artifact: one file that stock llama.cpp loads (and so ollama, LM Studio, llama.cpp's Android apps).

Written with the `gguf` package (llama.cpp's own container writer and numpy quantizers), from the checkpoint
itself rather than from our model, because every tensor gets a llama.cpp type of its own:
- ternary projections: TQ2_0 (or TQ1_0): blocks of 256 weights along K with one fp16 scale each. A row of Bonsai
  is T * s with one scale per output channel, so each block's absmax is |s| and its codes are T exactly: the
  fold is exact up to rounding s to fp16 (none for bf16 scales in fp16's normal range, measured per export).
- embedding and head: F16 (default; bf16 values are exact in fp16 down to 2**-14), BF16 (bit-exact), Q8_0, Q4_0.
- norms: F32, as llama.cpp keeps every 1-D tensor.
- q and k rows permuted from transformers' rotate-half RoPE layout to llama.cpp's interleaved pairs, as
  llama.cpp's converter does for Llama models (`permute_rope`).
- the tokenizer: the checkpoint's reference pipeline (tokenizer.py) as a SentencePiece "llama" vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np

from .. import artifact as A
from .. import checkpoint as C
from ..errors import BonsaiError
from ..tokenizer import reference_pipeline, settings

log = logging.getLogger(__name__)

# option value -> ggml type name (gguf.GGMLQuantizationType member)
TERNARY_TYPES = {"tq2_0": "TQ2_0", "tq1_0": "TQ1_0"}
DENSE_TYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
FALLBACKS = {"none": None, "f16": "F16", "q8_0": "Q8_0"}  # for ternary tensors whose K the type cannot hold
FILE_TYPES = {"TQ2_0": "MOSTLY_TQ2_0", "TQ1_0": "MOSTLY_TQ1_0"}  # general.file_type: the ternary layers' type
FP16_MAX = float(np.finfo(np.float16).max)
FP16_ROUNDING = 2.0 ** -11  # the worst relative error of rounding a value in fp16's normal range


def qtype(name: str):
    return gguf.GGMLQuantizationType[name]


def block_size(type_name: str) -> int:
    """Weights per block along K (1 for the float types)."""
    return gguf.GGML_QUANT_SIZES[qtype(type_name)][0]


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
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _hyperparameters(writer, ckpt, max_seq_len, plan["ternary_type"])
    _tokenizer(writer, ckpt)
    scale_error = 0.0
    for hf_name, gguf_name, type_name in plan["tensors"]:
        data, err = _tensor(ckpt, hf_name, type_name)
        scale_error = max(scale_error, err)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype(type_name))
    if scale_error > FP16_ROUNDING:  # scales below 2**-14 keep fewer bits in fp16 than rounding alone costs
        log.warning("gguf: ternary scales below fp16's normal range (2**-14) lose precision in the blocks: worst "
                    "relative error %.3g", scale_error)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    details = {"ternary": plan["ternary_type"], "head": plan["head_type"], "embedding": plan["embedding_type"],
               "fallback_tensors": plan["fallbacks"], "scale_fp16_max_rel_error": scale_error}
    return A.ArtifactEntry(type="gguf", file=A.GGUF_FILE, bits_per_ternary_weight=_ternary_bits(ckpt, plan),
                           details=details)


def _ternary_bits(ckpt: C.Checkpoint, plan: dict) -> float:
    """Bits per weight of the ternary layers as stored (blocks with their scales; fallbacks included)."""
    kinds = {hf: t for hf, _, t in plan["tensors"]}
    weights = bits = 0
    for module, w in ckpt.ternary.items():
        n = w.values.numel()
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype(kinds[module + ".weight"])]
        weights, bits = weights + n, bits + n * 8 * block_bytes / per_block
    return bits / weights


# ----------------------------------------------------------------------------------------------- tensor plan

def _plan(ckpt: C.Checkpoint, cfg: A.ExportConfig) -> dict:
    """(HF name, GGUF name, ggml type) of every tensor, in file order, and the fallbacks taken."""
    a = ckpt.args
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, a.n_layers)
    ternary, head, embedding = TERNARY_TYPES[cfg.gguf_ternary], DENSE_TYPES[cfg.gguf_head], \
        DENSE_TYPES[cfg.gguf_embedding]
    tensors, fallbacks = [("model.embed_tokens.weight", "token_embd.weight", embedding)], {}
    for module, w in ckpt.ternary.items():
        gguf_name = names.get_name(module) + ".weight"
        type_name = _ternary_type(module, tuple(w.values.shape), ternary, cfg.gguf_fallback)
        if type_name != ternary:
            fallbacks[gguf_name] = type_name
        tensors.append((module + ".weight", gguf_name, type_name))
    for i in range(a.n_layers):
        for norm in C.NORMS:
            hf_name = f"model.layers.{i}.{norm}"
            tensors.append((hf_name + ".weight", names.get_name(hf_name) + ".weight", "F32"))
    tensors.append(("model.norm.weight", "output_norm.weight", "F32"))
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
    return {"tensors": tensors, "fallbacks": fallbacks, "ternary_type": ternary, "head_type": head,
            "embedding_type": embedding}


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
TYPE_MAX = {"F32": np.inf, "BF16": np.inf, "F16": FP16_MAX, "Q8_0": 127 * FP16_MAX, "Q4_0": 8 * FP16_MAX}


def _check_values(ckpt: C.Checkpoint, hf_name: str, type_name: str) -> None:
    """Refuse, before anything is written, a dense tensor its type cannot hold (K, range) and a ternary scale
    beyond fp16 (the type of every block scale)."""
    module = hf_name.removesuffix(".weight")
    if module in ckpt.ternary:
        scales = ckpt.ternary[module].scales.abs()
        if scales.max() > FP16_MAX:
            raise BonsaiError(f"{hf_name}: a scale of {scales.max():.4g} is beyond fp16's range ({FP16_MAX:.0f}), "
                              f"the type of TQ2_0 / TQ1_0 block scales (and of the F16 / Q8_0 fallbacks); export "
                              f"--format pte or onnx")
        return
    x = ckpt.dense[hf_name]
    _check_k(hf_name, tuple(x.shape), type_name, "--gguf-head / --gguf-embedding f16 or bf16 (any K)")
    if x.abs().max() > TYPE_MAX[type_name]:
        raise BonsaiError(f"{hf_name}: values up to {x.abs().max():.4g} overflow {type_name}'s fp16 range "
                          f"({FP16_MAX:.0f}); use --gguf-head / --gguf-embedding bf16")


def _check_k(name: str, shape: tuple[int, ...], type_name: str, fix: str) -> None:
    if shape[-1] % block_size(type_name):
        raise BonsaiError(f"{name} {list(shape)}: {type_name} needs K ({shape[-1]}) to be a multiple of "
                          f"{block_size(type_name)}; use {fix}")


# ----------------------------------------------------------------------------------------------- tensor data

def _tensor(ckpt: C.Checkpoint, hf_name: str, type_name: str) -> tuple[np.ndarray, float]:
    """The tensor's bytes in its ggml type (q/k rows permuted), and the worst relative error of its scales in
    fp16 (0 for dense tensors)."""
    module = hf_name.removesuffix(".weight")
    if module in ckpt.ternary:
        w = ckpt.ternary[module]
        values, err = w.folded().numpy(), _scale_error(w.scales.numpy())
    else:
        values, err = ckpt.dense[hf_name].float().numpy(), 0.0
    a = ckpt.args
    if module.endswith("self_attn.q_proj"):
        values = permute_rope(values, a.n_heads)
    elif module.endswith("self_attn.k_proj"):
        values = permute_rope(values, a.n_kv_heads)
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype(type_name)), err


def _scale_error(scales: np.ndarray) -> float:
    """Worst relative error of the scales rounded to fp16, the blocks' scale type (range checked by _plan)."""
    nonzero = scales[scales != 0].astype(np.float64)
    rounded = nonzero.astype(np.float16).astype(np.float64)
    return float(np.max(np.abs(rounded - nonzero) / np.abs(nonzero), initial=0.0))


# ----------------------------------------------------------------------------------------------- metadata

def _hyperparameters(writer, ckpt: C.Checkpoint, max_seq_len: int, ternary: str) -> None:
    """The llama.* keys llama.cpp's Llama graph reads (key_length / value_length: head_dim need not be
    dim / n_heads)."""
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


def _tokenizer(writer, ckpt: C.Checkpoint) -> None:
    """The reference pipeline (transformers' reading of the checkpoint) as llama.cpp's SentencePiece vocabulary:
    pieces by id, scores that rank merges as the pipeline's BPE merges do, token types, special ids and the
    BOS / EOS / prefix-space behaviour."""
    pipeline = reference_pipeline(ckpt.folder)
    found = settings(pipeline)  # refuses a pipeline outside the subset (non-BPE, other pre-tokenizers)
    spec = json.loads(pipeline.to_str())
    tokens, scores, types = _vocabulary(spec, ckpt.args.vocab_size)
    a = ckpt.args
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(a.bos_id)
    writer.add_eos_token_id(a.eos_ids[0])  # llama.cpp stops on one EOS id (and on control tokens it names EOG)
    unk = _unk(spec)
    if unk is not None:
        writer.add_unk_token_id(spec["model"]["vocab"][unk])
    writer.add_pad_token_id(a.pad_id)
    writer.add_add_bos_token(bool(found.bos))
    writer.add_add_eos_token(bool(found.eos))
    writer.add_add_space_prefix(found.prefix != "never")


def _unk(spec: dict) -> str | None:
    """The unknown piece: the BPE model's unk_token, which transformers 5's rebuilt pipeline leaves out, else
    SentencePiece's llama name for it."""
    vocab = spec["model"]["vocab"]
    unk = spec["model"].get("unk_token") or "<unk>"
    return unk if unk in vocab else None


def _vocabulary(spec: dict, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and types by id. llama.cpp's SentencePiece tokenizer merges the adjacent pair whose
    merged piece has the highest score, so a piece scores minus the rank of the first merge that makes it:
    the pipeline's merge order. Pieces no merge makes (characters, bytes, specials) score 0."""
    vocab = spec["model"]["vocab"]
    pieces = {i: p for p, i in vocab.items()}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    if sorted(set(pieces) | set(added)) != list(range(len(set(pieces) | set(added)))):
        raise BonsaiError("tokenizer: its ids are not 0..n-1 without gaps; llama.cpp's vocabulary is a list by id")
    n = max(len(set(pieces) | set(added)), vocab_size)
    rank = {}
    for r, merge in enumerate(spec["model"].get("merges") or []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    tokens, scores, types = [], [], []
    for i in range(n):
        piece = added[i]["content"] if i in added else pieces.get(i, f"[PAD{i}]")  # rows past the tokenizer
        tokens.append(piece)
        scores.append(-float(rank[piece]) if piece in rank else 0.0)
        types.append(_token_type(piece, added.get(i), _unk(spec), i in pieces or i in added))
    return tokens, scores, types


def _token_type(piece: str, added: dict | None, unk: str | None, known: bool) -> int:
    t = gguf.TokenType
    if not known:
        return t.UNUSED
    if piece == unk:
        return t.UNKNOWN
    if added is not None:
        return t.CONTROL if added.get("special") else t.USER_DEFINED
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return t.BYTE
    return t.NORMAL

