"""An artifact folder is written to a staging folder beside OUT_DIR and swapped in atomically at the end, so a
failed, interrupted or killed export never leaves a half-written artifact, and an export never replaces data that
is not a previous artifact: `prepare_out` before the first byte, `commit` after the last."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

from .. import artifact as A
from ..errors import BonsaiError
from ..paths import overlaps


def prepare_out(out: Path, force: bool, source: Path) -> Path:
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


def commit(tmp: Path, out: Path, force: bool) -> None:
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
