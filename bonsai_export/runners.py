"""Runners: one interface over the eager model and every artifact, for `run`, `validate` and `bench`.

A runner maps (tokens[1, T] int64, input_pos[1] int64) -> logits[1, T, vocab] float32 and keeps its own KV cache.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from . import artifact as A
from .errors import BonsaiError

ET_OPS_LIB = "libbonsai_et_ops.so"
_loaded_et_ops: Path | None = None


def native_dir() -> Path:
    """Where the native libraries live: $BONSAI_NATIVE_DIR, else bonsai_export/_native (pip install puts them)."""
    return Path(os.environ.get("BONSAI_NATIVE_DIR", Path(__file__).resolve().parent / "_native"))


def load_et_ops() -> Path:
    """Register our ExecuTorch kernels with the runtime the Python bindings use (once per process)."""
    global _loaded_et_ops
    if _loaded_et_ops is None:
        path = native_dir() / ET_OPS_LIB
        if not path.is_file():
            raise BonsaiError(f"{path}: missing; the ExecuTorch op library is built by `pip install .` "
                              f"(or set BONSAI_NATIVE_DIR to a build folder holding {ET_OPS_LIB})")
        import executorch.runtime  # noqa: F401  (loads libexecutorch.so, which our library links to)

        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        _loaded_et_ops = path
    return _loaded_et_ops


class Runner:
    name = "runner"
    max_seq_len: int
    bos_id: int
    eos_ids: tuple[int, ...]
    tokenizer_dir: Path

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the cache (the next call starts at position 0)."""


class EagerRunner(Runner):
    name = "eager"

    def __init__(self, model, tokenizer_dir: Path):
        self.model, self.tokenizer_dir = model, Path(tokenizer_dir)
        self.max_seq_len, self.bos_id, self.eos_ids = model.max_seq_len, model.args.bos_id, model.args.eos_ids

    def __call__(self, tokens, input_pos):
        with torch.no_grad():
            return self.model(tokens, input_pos)

    def reset(self):
        self.model.reset_cache()


class PteRunner(Runner):
    name = "pte"

    def __init__(self, folder: Path, threads: int = 0):
        load_et_ops()
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.tokenizer_dir = Path(folder)
        if threads:
            portable_lib._unsafe_reset_threadpool(threads)
        self.program = Runtime.get().load_program(str(Path(folder) / A.PTE_FILE))
        meta = {m: self.program.load_method(m).execute([])[0]
                for m in (A.META_MAX_SEQ_LEN, A.META_BOS_ID, A.META_EOS_IDS)}
        self.max_seq_len, self.bos_id = int(meta[A.META_MAX_SEQ_LEN]), int(meta[A.META_BOS_ID])
        eos = self.program.load_method(A.META_EOS_IDS).execute([])
        self.eos_ids = tuple(int(e) for e in eos)
        self.method = self.program.load_method("forward")

    def __call__(self, tokens, input_pos):
        t, pos = tokens.shape[1], int(input_pos[0])
        if pos + t > self.max_seq_len:
            raise BonsaiError(f"positions {pos}..{pos + t - 1} exceed the artifact's max_seq_len "
                              f"{self.max_seq_len}; re-export with a larger --max-seq-len")
        return self.method.execute([tokens, input_pos])[0]

    # reset(): nothing to do. Attention reads only cache positions [0, input_pos + T), all written by this
    # sequence's calls, so a new sequence simply starts again at input_pos 0.


def open_runner(path: str | Path | None, act_quant: str = "none", max_seq_len: int | None = None,
                threads: int = 0) -> Runner:
    """An artifact folder opens its runtime; anything else is a checkpoint run by the eager model."""
    if path is not None and A.is_artifact(path):
        manifest = A.read_manifest(Path(path))
        kinds = [a["type"] for a in manifest["artifacts"]]
        if "pte" in kinds:
            return PteRunner(Path(path), threads or manifest["options"].get("threads", 0))
        raise BonsaiError(f"{path}: holds {', '.join(kinds)}; this version runs .pte artifacts")
    from . import checkpoint
    from .model import from_checkpoint
    from .synthetic import default_model

    ckpt = checkpoint.load(path if path is not None else default_model())
    return EagerRunner(from_checkpoint(ckpt, act_quant=act_quant, max_seq_len=max_seq_len), ckpt.folder)
