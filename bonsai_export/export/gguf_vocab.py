"""The GGUF file's tokenizer: the checkpoint's reference pipeline (tokenizer.py, transformers' reading of the folder)
as one of llama.cpp's vocabularies.

- SentencePiece-style BPE (Llama-2, Mistral, Bonsai): llama.cpp's "llama" model, pieces with scores that rank
  merges as the pipeline does.
- Byte-level BPE (Qwen2/Qwen3, Llama-3, Falcon3, BitNet 2B4T): llama.cpp's "gpt2" model, the byte-level pieces and
  merges as tokenizer.json has them, and the pre-tokenizer by the name llama.cpp gives that regex.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from .. import checkpoint as C
from ..errors import BonsaiError
from ..tokenizer import TOKENIZER_CONFIG, Settings, chat_template_source, reference_pipeline, settings

# byte_level.SPLIT_PATTERNS name -> llama.cpp's tokenizer.ggml.pre of the same regex (llama-vocab.cpp: "qwen2" is
# LLAMA_VOCAB_PRE_TYPE_QWEN2, "llama-bpe" LLAMA_VOCAB_PRE_TYPE_LLAMA3, which also takes words found whole in the
# vocabulary first, as Llama-3's ignore_merges does)
GPT2_PRE = {"qwen2": "qwen2", "llama3": "llama-bpe"}


def add_vocabulary(writer, ckpt: C.Checkpoint) -> None:
    """The tokenizer keys: the vocabulary, special ids, BOS / EOS behaviour and the chat template if any."""
    pipeline = reference_pipeline(ckpt.folder)
    found = settings(pipeline, byte_level=True)  # refuses a pipeline outside the subset every runner implements
    spec = json.loads(pipeline.to_str())
    if found.kind == "byte_level":
        _gpt2(writer, spec, found, ckpt)
    else:
        _sentencepiece(writer, spec, found, ckpt)
    template = _chat_template(ckpt.folder)
    if template is not None:
        writer.add_chat_template(template)


def _chat_template(folder: Path) -> str | None:
    """The folder's template as transformers picks it (a missing or malformed tokenizer_config.json: none)."""
    try:
        config = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    return chat_template_source(folder, config if isinstance(config, dict) else {})


# ----------------------------------------------------------------------------------------------- byte-level BPE

def _gpt2(writer, spec: dict, found: Settings, ckpt: C.Checkpoint) -> None:
    """llama.cpp's byte-level BPE: pieces by id, merges in rank order, added special tokens CONTROL (llama.cpp
    parses them out of text as transformers does), BOS as the post-processor adds it."""
    a = ckpt.args
    tokens, types = _byte_level_tokens(spec, a.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GPT2_PRE[found.split])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []])
    writer.add_bos_token_id(found.bos[0] if found.bos else a.bos_id)
    writer.add_eos_token_id(a.eos_ids[0])  # llama.cpp stops on one EOS id (and on control tokens it names EOG)
    writer.add_pad_token_id(a.pad_id)
    unk = spec["model"].get("unk_token")
    if unk in spec["model"]["vocab"]:
        writer.add_unk_token_id(spec["model"]["vocab"][unk])
    writer.add_add_bos_token(bool(found.bos))  # the llama-bpe pre-tokenizer defaults to true, Qwen2's to false
    writer.add_add_eos_token(bool(found.eos))


def _byte_level_tokens(spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    pieces, added = _pieces(spec)
    t = gguf.TokenType
    tokens, types = [], []
    for i in range(max(len(pieces), vocab_size)):
        tokens.append(pieces.get(i, f"[PAD{i}]"))  # rows past the tokenizer (Qwen has spare embedding rows)
        types.append(t.UNUSED if i not in pieces else t.NORMAL if i not in added
                     else t.CONTROL if added[i].get("special") else t.USER_DEFINED)
    return tokens, types


def _pieces(spec: dict) -> tuple[dict[int, str], dict[int, dict]]:
    """Every piece by id (the vocabulary's, then the added tokens'), and the added tokens by id."""
    pieces = {i: p for p, i in spec["model"]["vocab"].items()}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    pieces.update({i: t["content"] for i, t in added.items()})
    if sorted(pieces) != list(range(len(pieces))):
        raise BonsaiError("tokenizer: its ids are not 0..n-1 without gaps; llama.cpp's vocabulary is a list by id")
    return pieces, added


# ----------------------------------------------------------------------------------------------- SentencePiece

def _sentencepiece(writer, spec: dict, found: Settings, ckpt: C.Checkpoint) -> None:
    """llama.cpp's SentencePiece vocabulary: pieces by id, scores that rank merges as the pipeline's BPE merges
    do, token types, special ids and the BOS / EOS / prefix-space behaviour."""
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
    pieces, added = _pieces(spec)
    rank = {}
    for r, merge in enumerate(spec["model"].get("merges") or []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    tokens, scores, types = [], [], []
    for i in range(max(len(pieces), vocab_size)):
        piece = pieces.get(i, f"[PAD{i}]")  # rows past the tokenizer
        tokens.append(piece)
        scores.append(-float(rank[piece]) if piece in rank else 0.0)
        types.append(_token_type(piece, added.get(i), _unk(spec), i in pieces))
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
