"""`bonsai-export export`: checkpoint -> model definition -> artifact folder, in named stages.

The folder is built under a temporary name beside OUT_DIR and renamed into place at the end, so a failed or
interrupted export never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .. import artifact as A
from .. import checkpoint as C
from ..dense import quantize_dense_
from ..errors import BonsaiError
from ..model import TernaryLinear, from_checkpoint

log = logging.getLogger(__name__)


@contextmanager
def stage(name: str):
    start = time.perf_counter()
    log.info("[%s] ...", name)
    yield
    log.info("[%s] done in %.1f s", name, time.perf_counter() - start)


def ternary_stats(model) -> dict:
    linears = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    nbytes = sum(m.packed.numel() + 4 * m.scales.numel() for m in linears)
    return {"ternary_weights": weights, "ternary_bytes": nbytes, "bits_per_ternary_weight": 8 * nbytes / weights}


def build_model(ckpt: C.Checkpoint, cfg: A.ExportConfig):
    """The model exactly as the artifact computes it (eager runners and validators use this too)."""
    model = from_checkpoint(ckpt, act_quant=cfg.act_quant, max_seq_len=cfg.max_seq_len)
    return quantize_dense_(model, cfg.embedding, cfg.head)


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise BonsaiError(f"{out}: exists and is not empty; choose a new -o folder or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _commit(tmp: Path, out: Path) -> None:
    tmp.chmod(0o755)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)


def export(source: str | Path, out: str | Path, cfg: A.ExportConfig, force: bool = False) -> dict:
    """Export a checkpoint (hub id or folder) to an artifact folder; returns the manifest."""
    out = Path(out)
    with stage("load"):
        ckpt = C.load(source)
    tmp = _prepare_out(out, force)
    try:
        with stage("build"):
            model = build_model(ckpt, cfg)
        body = {"artifacts": [], "options": cfg.to_dict(), "model": model_info(ckpt, model),
                "source": {"checkpoint": str(source), "format": ckpt.format}}
        if cfg.format in ("pte", "all"):
            body["artifacts"].append(_write_pte(model, tmp))
        if cfg.format in ("onnx", "all"):
            body["artifacts"].append(_write_onnx(model, tmp, cfg))
        with stage("tokenizer"):
            for f in ckpt.tokenizer_files:
                shutil.copyfile(f, tmp / f.name)
        manifest = A.write_manifest(tmp, body)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%.1f MB)", out, sum(f["bytes"] for f in manifest["files"].values()) / 1e6)
    return manifest


def model_info(ckpt: C.Checkpoint, model) -> dict:
    a = model.args
    info = {"n_layers": a.n_layers, "dim": a.dim, "vocab_size": a.vocab_size, "max_seq_len": model.max_seq_len,
            "bos_id": a.bos_id, "eos_ids": list(a.eos_ids), "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim,
            **ternary_stats(model), "head_bytes": sum(b.numel() * b.element_size() for b in model.lm_head.buffers())}
    return info


def _write_pte(model, folder: Path) -> dict:
    from .executorch import to_pte

    with stage("lower to ExecuTorch"):
        data = to_pte(model)
    with stage("serialize"):
        (folder / A.PTE_FILE).write_bytes(data)
    return {"type": "pte", "file": A.PTE_FILE, "op_library": "libbonsai_et_ops.so"}


def _write_onnx(model, folder: Path, cfg: A.ExportConfig) -> dict:
    from .onnx import to_folder

    with stage(f"build ONNX graph ({cfg.ternary_op} ternary op)"):
        return to_folder(model, folder, cfg.ternary_op, {"bonsai_export_options": json.dumps(cfg.to_dict())})
