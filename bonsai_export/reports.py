"""The one report writer of validate, eval and bench (host and device): PREFIX.json, every figure for scripts, and
PREFIX.md, the tables a person reads (each tool renders its own Markdown)."""

from __future__ import annotations

import json
from pathlib import Path


def write(prefix: str | Path, data: dict, markdown: str) -> tuple[Path, Path]:
    """PREFIX.json and PREFIX.md (the suffixes are appended: a prefix may hold dots); returns both paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{prefix}.json"), Path(f"{prefix}.md")
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
