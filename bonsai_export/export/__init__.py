"""`bonsai-export export`: checkpoint -> model definition -> artifact folder, in named stages (stages.py).

The folder is built under a temporary name beside OUT_DIR and renamed into place at the end (staging.py), so a
failed or interrupted export never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .. import artifact as A
from .. import checkpoint as C
from ..errors import BonsaiError
from ..model import TernaryLinear, build_model
from ..native import ET_OPS_LIB
from ..tokenizer import write_canonical
from .stages import progress, stage
from .staging import commit, prepare_out

log = logging.getLogger(__name__)


def ternary_stats(model) -> dict:
    linears = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    nbytes = sum(m.packed.numel() + 4 * m.scales.numel() for m in linears)
    return {"ternary_weights": weights, "ternary_bytes": nbytes, "bits_per_ternary_weight": 8 * nbytes / weights}


def export(source: str | Path, out: str | Path, cfg: A.ExportConfig, force: bool = False) -> dict:
    """Export a checkpoint (hub id or folder) to an artifact folder; returns the manifest."""
    out = Path(out)
    with progress(cfg):
        return _export(source, out, cfg, force)


def _export(source: str | Path, out: Path, cfg: A.ExportConfig, force: bool) -> dict:
    with stage("load (download, ternarize)"):
        ckpt = C.load(source, progress=False)  # the stage bar covers loading
    tmp = prepare_out(out, force, C.root_of(ckpt.folder))
    try:
        with stage("build"):
            model = build_model(ckpt, cfg)
        body = {"artifacts": [], "options": cfg.to_dict(), "model": model_info(ckpt, model),
                "source": {"checkpoint": _source_name(source), "format": ckpt.format}}
        if cfg.format in ("pte", "all"):
            body["artifacts"].append(_write_pte(model, tmp))
        if cfg.format in ("onnx", "all"):
            body["artifacts"].append(_write_onnx(model, tmp, cfg))
        if cfg.format == "gguf":
            body["artifacts"].append(_write_gguf(ckpt, tmp, cfg, model.max_seq_len))
        with stage("tokenizer"):
            body["tokenizer"] = write_canonical(ckpt.folder, tmp).to_dict()
        with stage("manifest"):
            manifest = A.write_manifest(tmp, body)
            commit(tmp, out, force)
    except OSError as exc:  # disk full, permissions: the previous artifact, if any, is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise BonsaiError(f"{out}: writing the artifact failed ({exc.strerror or exc}); free space or choose "
                          f"another -o folder (nothing was changed)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%.1f MB)", out, sum(f["bytes"] for f in manifest["files"].values()) / 1e6)
    return manifest


def _source_name(source: str | Path) -> str:
    """The checkpoint as validate and eval will find it later from any folder: a local folder as an absolute
    path, a hub id as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def model_info(ckpt: C.Checkpoint, model) -> dict:
    a = model.args
    info = {"n_layers": a.n_layers, "dim": a.dim, "vocab_size": a.vocab_size, "max_seq_len": model.max_seq_len,
            "bos_id": a.bos_id, "eos_ids": list(a.eos_ids), "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim,
            **ternary_stats(model), "head_bytes": sum(b.numel() * b.element_size() for b in model.lm_head.buffers())}
    return info


def _write_pte(model, folder: Path) -> dict:
    from .executorch import to_pte

    data = to_pte(model)  # stages export, lower, serialize
    (folder / A.PTE_FILE).write_bytes(data)
    return {"type": "pte", "file": A.PTE_FILE, "op_library": ET_OPS_LIB}


def _write_onnx(model, folder: Path, cfg: A.ExportConfig) -> dict:
    from .onnx import to_folder

    with stage(f"ONNX graph ({cfg.ternary_op} op)"):
        return to_folder(model, folder, cfg.ternary_op, {"bonsai_export_options": json.dumps(cfg.to_dict())})


def _write_gguf(ckpt: C.Checkpoint, folder: Path, cfg: A.ExportConfig, max_seq_len: int) -> dict:
    from .gguf import write_gguf

    with stage(f"GGUF ({cfg.gguf_ternary}, head {cfg.gguf_head})"):
        return write_gguf(ckpt, folder / A.GGUF_FILE, cfg, max_seq_len)
