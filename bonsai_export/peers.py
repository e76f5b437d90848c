"""The peers `bonsai-export bench` measures beside our artifacts, from the same checkpoint, in the same run.

- llama.cpp, through llama-cpp-python (`pip install '.[peers]'`), on the GGUF that `export --format gguf` writes.
  `LlamaCppRunner` drives its low-level API (`llama_decode` on a batch we fill, logits of the last position only),
  so the bench's worker times exactly the calls it times for our Python runners: one call for the prompt, then
  one call per greedy token with the argmax taken in Python. Everything else is llama.cpp's defaults (mmap'd
  weights, fp16 KV cache, its flash-attention choice, prompt batches of up to 2048 tokens in ubatches of 512).
- ONNX Runtime's stock MatMulNBits: our `--ternary-op stock` export, the ternary layers as 2-bit MatMulNBits.

Both are exported once into the cache folder (keyed by the checkpoint, the options and the exporter's source) and
reused by later runs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from . import artifact as A
from .checkpoint_files import read_json
from .errors import BonsaiError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[peers]' (llama-cpp-python; it compiles llama.cpp, ~25 minutes on 2 cores)"
LLAMA_CPP = "llama.cpp"
STOCK = "onnx-stock"


def llama_cpp_missing() -> str | None:
    """None when llama_cpp imports here, else why not, on one line."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError/OSError: its shared library failed to load
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'not installed'}"
    return None


def cache_folder(kind: str, source: str, options: dict, code: tuple[str, ...] = ()) -> Path:
    """A cache folder for an artifact made from `source`, whose name changes with the checkpoint's files, the
    options and the code that makes it (the exporter's, and the package modules named in `code`)."""
    from .synthetic import cache_dir

    folder = Path(source).expanduser()
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    package = Path(__file__).parent
    code_hash = hashlib.sha256()
    for f in [*sorted((package / "export").glob("*.py")), *(package / name for name in code)]:
        code_hash.update(f.read_bytes())
    ident = f"{kind}|{folder.resolve() if folder.is_dir() else source}|{stamp}|{sorted(options.items())}"
    return cache_dir() / f"{kind}-{hashlib.sha256(ident.encode() + code_hash.digest()).hexdigest()[:12]}"


def _exported(kind: str, source: str, cfg: A.ExportConfig) -> Path:
    """The artifact folder of `cfg` exported from `source` into the cache (exported now when missing)."""
    from .export import export

    out = cache_folder(kind, source, cfg.to_dict())
    if not (out / A.MANIFEST).is_file():
        log.info("bench: exporting %s of %s for the peer (once; cached in %s)", cfg.format, source, out)
        export(source, out, cfg, force=True)
    return out


def stock_onnx(source: str, options: A.ExportConfig) -> Path:
    """Our export with `--ternary-op stock` (MatMulNBits), the artifact's other options kept."""
    keep = {k: getattr(options, k) for k in ("max_seq_len", "act_quant", "embedding", "head")}
    return _exported("onnx-stock", source, A.ExportConfig(format="onnx", ternary_op="stock", **keep))


# The GGUF type of the same precision as our head / embedding format, so that the peer reads as many dense bytes
# per token as our artifact (issue 16 compares "our 8-bit head vs Q8_0, our 4-bit head vs Q4_0").
# (A group-ternary table, t2g in the manifest, is TQ2_0: regrouped to one scale per 256 like the layers.)
GGUF_DENSE_OF = {"bf16": "f16", "int8": "q8_0", "int4": "q4_0", "t2g": "tq2_0"}


def gguf_file(folder: Path, manifest: A.Manifest) -> Path:
    """The artifact's own GGUF when it has one, else the GGUF `export --format gguf` writes from its checkpoint.

    That one is written with --gguf-regroup and --gguf-speed-only, so that every family gets a peer to time: both
    change nothing where the checkpoint does not need them (blocks one scale holds exactly, a SiLU MLP); where they
    do (Ternary-Bonsai's t2g groups, BitNet 2B4T's relu^2), the file's manifest entry records it and gguf_summary's
    `caveat` says so. Its head and embedding have the precision of the artifact's (GGUF_DENSE_OF); a tied
    checkpoint's one table takes the head's, since every token reads it as the head."""
    if (own := manifest.artifact("gguf")) is not None:
        return folder / own.file
    source, model, options = manifest.source.checkpoint, manifest.model, manifest.options
    head = GGUF_DENSE_OF[model.head_format or options.head]
    embedding = head if _tied(source) else GGUF_DENSE_OF[model.embedding_format or options.embedding]
    out = _exported("gguf", source,
                    A.ExportConfig(format="gguf", max_seq_len=options.max_seq_len, gguf_regroup=True,
                                   gguf_speed_only=True, gguf_head=head, gguf_embedding=embedding))
    return out / A.read_manifest(out).artifact("gguf").file


def _tied(source: str) -> bool:
    """Whether a local checkpoint folder ties its head to the token table (its config.json, read as the checkpoint
    reader reads it: never through a link out of the folder; a malformed file is a BonsaiError)."""
    folder = Path(source)
    return folder.is_dir() and read_json(folder / "config.json", required=False).get("tie_word_embeddings") is True


def gguf_summary(path: Path) -> dict:
    """Tensor types of a GGUF (ternary layers, head, embedding) and the bytes a decoded token reads: every
    2-D weight but the embedding table (one row of it is read per token), unless that table is the head too (no
    output tensor)."""
    from gguf import GGUFReader

    tensors = GGUFReader(path).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    types = {}
    for t in tensors:
        role = ("embedding" if t.name == "token_embd.weight" else "head" if t.name == "output.weight"
                else "ternary layers" if t.name.startswith("blk.") and len(t.shape) == 2 else None)
        if role:
            types.setdefault(role, set()).add(t.tensor_type.name)
    if tied and "embedding" in types:
        types["head"] = types["embedding"]
    read = sum(int(t.n_bytes) for t in tensors if len(t.shape) == 2 and (tied or t.name != "token_embd.weight"))
    return {"file": str(path), "bytes": path.stat().st_size, "bytes_per_token": read,
            "tensor_types": {role: ", ".join(sorted(v)) for role, v in types.items()}, "caveat": _caveat(path)}


def _caveat(path: Path) -> str | None:
    """What the file does not compute of the checkpoint, from the manifest entry beside it (None: the file is the
    checkpoint's weights up to fp16 rounding of the scales, or carries no manifest to say otherwise)."""
    if not (path.parent / A.MANIFEST).is_file():
        return None
    entry = A.read_manifest(path.parent).artifact("gguf")
    details = entry.details if entry is not None else {}
    notes = []
    if details.get("faithful") is False:
        notes.append("not faithful: llama.cpp's graph uses SiLU where the model's MLP is relu^2 (speed only)")
    if details.get("regrouped_blocks"):
        notes.append(f"lossy: {details['regrouped_blocks']} blocks regrouped to one scale per 256 weights (worst "
                     f"tensor's relative error {details['regroup_max_rel_error']:.3g})")
    return "; ".join(notes) or None


class LlamaCppRunner:
    """llama.cpp behind the runner interface of bonsai_export.runners: (tokens[1, T], input_pos[1]) ->
    logits[1, 1, vocab] of the last position, with its own KV cache (sequence 0)."""

    name = LLAMA_CPP

    def __init__(self, gguf: Path, threads: int, n_ctx: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
        if not self.model:
            raise BonsaiError(f"{gguf}: llama.cpp could not load it (its log says why with --verbose)")
        params = L.llama_context_default_params()
        params.n_ctx, params.n_threads, params.n_threads_batch = n_ctx, threads, threads
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise BonsaiError(f"{gguf}: llama.cpp could not create a context of {n_ctx} positions")
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.max_seq_len, self.n_batch = n_ctx, L.llama_n_batch(self.ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)

    def reset(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own ids for `text` (BOS as the GGUF says), to compare with our tokenizer's."""
        vocab = self.L.llama_model_get_vocab(self.model)
        raw = text.encode()
        ids = (self.L.llama_token * (len(raw) + 8))()
        n = self.L.llama_tokenize(vocab, raw, len(raw), ids, len(ids), True, False)
        return list(ids[:n])

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        ids, start = tokens[0].tolist(), int(input_pos[0])
        for offset in range(0, len(ids), self.n_batch):  # prompts longer than a batch go in several calls
            chunk = ids[offset:offset + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, start + offset + i, 1, 0, 0
            b.logits[len(chunk) - 1] = 1
            status = self.L.llama_decode(self.ctx, b)
            if status != 0:
                raise BonsaiError(f"llama.cpp: llama_decode returned {status} at position {start + offset}")
        logits = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, -1), shape=(self.vocab,))
        return torch.from_numpy(logits.copy())[None, None]
