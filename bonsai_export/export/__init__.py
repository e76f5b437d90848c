"""`bonsai-export export`: checkpoint -> model definition -> artifact folder, in named stages (stages.py).

The folder is built under a temporary name beside OUT_DIR and renamed into place at the end (staging.py), so a
failed or interrupted export never leaves a half-written artifact.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .. import artifact as A
from .. import formats
from .. import checkpoint as C
from ..errors import BonsaiError
from ..model import build_model, table_formats
from ..native import ET_OPS_LIB
from ..tokenizer import write_canonical
from .stages import progress, stage
from .staging import commit, prepare_out

log = logging.getLogger(__name__)


def ternary_stats(model) -> dict:
    """The decoder layers' ternary matrices (t2 or t2g; a ternary head counts in head_bytes): weights, stored
    bytes (codes and scales) and bits per weight."""
    linears = [m for m in model.layers.modules() if hasattr(m, "scale_layout")]
    weights = sum(m.in_features * m.out_features for m in linears)
    nbytes = sum(b.numel() * b.element_size() for m in linears for b in (m.packed, m.scales))
    block = {m.scale_layout for m in linears} == {formats.SCALE_LAYOUTS["block"]}
    return {"ternary_weights": weights, "ternary_bytes": nbytes, "bits_per_ternary_weight": 8 * nbytes / weights,
            "ternary_format": "t2g" if block else "t2"}


def export(source: str | Path, out: str | Path, cfg: A.ExportConfig, force: bool = False) -> A.Manifest:
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
        artifacts = _write_artifacts(ckpt, model, tmp, cfg)
        with stage("tokenizer"):
            tokenizer = write_canonical(ckpt.folder, tmp).to_dict()
        with stage("manifest"):
            manifest = A.write_manifest(tmp, A.Manifest(
                artifacts=artifacts, options=cfg, model=model_shape(ckpt, model), tokenizer=tokenizer,
                source=A.Source(checkpoint=_source_name(source), format=ckpt.format)))
            commit(tmp, out, force)
    except OSError as exc:  # disk full, permissions: the previous artifact, if any, is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise BonsaiError(f"{out}: writing the artifact failed ({exc.strerror or exc}); free space or choose "
                          f"another -o folder (nothing was changed)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%.1f MB)", out, manifest.total_bytes / 1e6)
    return manifest


def _source_name(source: str | Path) -> str:
    """The checkpoint as validate and eval will find it later from any folder: a local folder as an absolute
    path, a hub id as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def model_shape(ckpt: C.Checkpoint, model, note: str | None = None) -> A.ModelShape:
    a = model.args
    head_bytes = sum(b.numel() * b.element_size() for b in model.lm_head.buffers())
    figures = ternary_stats(model) if note is None else {}  # a baseline's layers are not ternary
    if note is None:
        figures["embedding_format"], figures["head_format"] = table_formats(model)
    return A.ModelShape(n_layers=a.n_layers, dim=a.dim, vocab_size=a.vocab_size, max_seq_len=model.max_seq_len,
                        bos_id=a.bos_id, eos_ids=tuple(a.eos_ids), n_kv_heads=a.n_kv_heads, head_dim=a.head_dim,
                        **figures, head_bytes=head_bytes if note is None else 0, note=note)


def _write_artifacts(ckpt: C.Checkpoint, model, folder: Path, cfg: A.ExportConfig) -> tuple[A.ArtifactEntry, ...]:
    arts = []
    if cfg.format in ("pte", "all"):
        arts.append(write_pte(model, folder, cfg))
    if cfg.format in ("onnx", "all"):
        from .onnx import to_folder

        with stage(f"ONNX graph ({cfg.ternary_op} op)"):
            arts.append(to_folder(model, folder, cfg))
    if cfg.format == "gguf":
        from .gguf import write_gguf

        with stage(f"GGUF ({cfg.gguf_ternary}, head {cfg.gguf_head})"):
            arts.append(write_gguf(ckpt, folder / A.GGUF_FILE, cfg, model.max_seq_len))
    return tuple(arts)


def write_pte(model, folder: Path, cfg: A.ExportConfig) -> A.ArtifactEntry:
    from .executorch import to_pte

    (folder / A.PTE_FILE).write_bytes(to_pte(model, cfg))  # stages export, lower, serialize
    return A.ArtifactEntry(type="pte", file=A.PTE_FILE, op_library=ET_OPS_LIB)
