"""The one rule for names found inside a checkpoint or an artifact: they open files in that folder, nowhere else.

A shard name in model.safetensors.index.json or a file name in a manifest is data someone else wrote. Resolved
(symlinks followed) it must stay inside the folder's root, so that `../x`, `/etc/passwd` or a symlink out of the
folder is refused before anything is opened. A hub snapshot's files are symlinks into the repository's blob store,
so a hub checkpoint's root is that repository's cache folder (checkpoint_files.resolve passes it).
"""

from __future__ import annotations

from pathlib import Path

from .errors import BonsaiError


def inside(folder: Path, name, what: str, root: Path | None = None) -> Path:
    """folder / name, refused unless it is a plain relative name that resolves (symlinks too) under root
    (default: folder). `what` says where the name came from, for the message."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BonsaiError(f"{what}: {name!r} is not a file name; re-export the folder or restore the original file")
    path = Path(folder) / name
    base = Path(root if root is not None else folder).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not _under(path.resolve(), base):
        raise BonsaiError(f"{what}: {name!r} points outside {folder}; files are read only from inside the folder "
                          f"(restore the original file, or copy the data into the folder)")
    return path


def _under(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def overlaps(a: Path, b: Path) -> bool:
    """Whether one of two folders is the other or holds it (after resolving symlinks)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return _under(a, b) or _under(b, a)
