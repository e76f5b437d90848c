"""`bonsai-export export`: checkpoint -> model definition -> artifact folder, in named stages.

The folder is built under a temporary name beside OUT_DIR and renamed into place at the end, so a failed or
interrupted export never leaves a half-written artifact.
"""

from __future__ import annotations

import ctypes
import errno
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
from ..paths import overlaps
from ..model import TernaryLinear, from_checkpoint
from ..native import ET_OPS_LIB
from ..tokenizer import write_canonical

log = logging.getLogger(__name__)


_bar = None  # the running export's stage bar (tqdm), None when progress is off


@contextmanager
def stage(name: str):
    """One named step of the export: the bar shows it while it runs, the log gets its duration."""
    start = time.perf_counter()
    if _bar is not None:
        _bar.set_description_str(name)
    yield
    if _bar is not None:
        _bar.update(1)
    log.info("[%s] done in %.1f s", name, time.perf_counter() - start)


def _stage_count(cfg: A.ExportConfig) -> int:
    pte, onnx, gguf = cfg.format in ("pte", "all"), cfg.format in ("onnx", "all"), cfg.format == "gguf"
    return 4 + 3 * pte + onnx + gguf  # load, build, [export, lower, serialize], [ONNX graph], [GGUF], tokenizer,
    # manifest


@contextmanager
def _progress(cfg: A.ExportConfig):
    global _bar
    if not log.isEnabledFor(logging.INFO):  # --quiet
        yield
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # Our log lines above the bar (the libraries' are in the log file, see quiet.py).
    with logging_redirect_tqdm([logging.getLogger("bonsai_export")]), \
            tqdm(total=_stage_count(cfg), unit="stage", bar_format=BAR) as bar:
        _bar = bar
        try:
            yield
        finally:
            _bar = None


BAR = "{desc:<28} {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}"


def ternary_stats(model) -> dict:
    linears = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    nbytes = sum(m.packed.numel() + 4 * m.scales.numel() for m in linears)
    return {"ternary_weights": weights, "ternary_bytes": nbytes, "bits_per_ternary_weight": 8 * nbytes / weights}


def build_model(ckpt: C.Checkpoint, cfg: A.ExportConfig):
    """The model exactly as the artifact computes it (eager runners and validators use this too)."""
    model = from_checkpoint(ckpt, act_quant=cfg.act_quant, max_seq_len=cfg.max_seq_len)
    return quantize_dense_(model, cfg.embedding, cfg.head)


def _prepare_out(out: Path, force: bool, source: Path) -> Path:
    """The staging folder of an export to `out`, after refusing every `out` whose replacement would lose data."""
    _refuse_overlap(out, source)
    nonempty = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if nonempty and not force:
        raise BonsaiError(f"{out}: exists and is not empty; choose a new -o folder or pass --force to replace it")
    if nonempty and not A.is_artifact(out):
        raise BonsaiError(f"{out}: exists and is not an artifact folder (no {A.MANIFEST}); --force replaces only a "
                          f"previous export: choose a new -o folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        return Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise BonsaiError(f"{out}: cannot write there ({exc.strerror}); choose a writable -o folder") from None


def _refuse_overlap(out: Path, source: Path) -> None:
    """The checkpoint being read, a folder inside it or one holding it would be replaced by the artifact."""
    resolved = out.resolve()
    if resolved == resolved.parent:
        raise BonsaiError(f"{out}: is the file system's root; choose a new folder for the artifact, e.g. -o out/model")
    if overlaps(out, source):
        raise BonsaiError(f"{out}: is the checkpoint folder {source}, inside it, or holds it; writing there would "
                          f"replace the checkpoint: choose a -o folder outside it")


def _staging_prefix(out: Path) -> str:
    """Staging folders are named PREFIX + the exporting process's id + a random suffix, beside OUT_DIR."""
    return f".{out.name}.partial-"


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of exports that were killed (their process is gone) are removed by the next export."""
    prefix = _staging_prefix(out)
    for folder in out.parent.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("-")[0]  # OUT_DIR's own name may contain dashes
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (AttributeError, OSError):
        return False


def _commit(tmp: Path, out: Path, force: bool) -> None:
    """Put the finished folder in place: no moment exists at which OUT_DIR is missing or half-written."""
    tmp.chmod(0o755)
    if not force:  # rename(2) replaces only a missing or empty folder: an export that finished meanwhile stays
        try:
            os.rename(tmp, out)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise BonsaiError(f"{out}: was written by another export while this one ran; choose a new -o folder "
                              f"or pass --force to replace it") from None
    elif not out.exists():
        os.replace(tmp, out)
    elif out.is_dir() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous artifact
    else:  # a file in the way, or no renameat2: two renames, the previous artifact kept until the second is done
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def export(source: str | Path, out: str | Path, cfg: A.ExportConfig, force: bool = False) -> dict:
    """Export a checkpoint (hub id or folder) to an artifact folder; returns the manifest."""
    out = Path(out)
    with _progress(cfg):
        return _export(source, out, cfg, force)


def _export(source: str | Path, out: Path, cfg: A.ExportConfig, force: bool) -> dict:
    with stage("load (download, ternarize)"):
        ckpt = C.load(source, progress=False)  # the stage bar covers loading
    tmp = _prepare_out(out, force, C.root_of(ckpt.folder))
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
            _commit(tmp, out, force)
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
