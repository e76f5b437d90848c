"""Tokenizer layouts this lineage of checkpoints ships, built from Mistral v1's SentencePiece model (Bonsai's), and
a corpus of awkward strings. The reference ids of a layout are what transformers.AutoTokenizer makes of its folder.

    python tests/tokenizer_layouts.py OUT   writes one folder per layout (tokenizer files only) under OUT
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bonsai_export.tokenizer import PROBE_TEXTS as CORPUS  # the strings export checks

FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _metaspace(scheme: str):
    def edit(t: dict) -> None:
        t["normalizer"] = None
        t["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": False}
    return edit


# name -> (tokenizer_config.json additions, edit of tokenizer.json or None, keep tokenizer.json, keep tokenizer.model)
LAYOUTS = {
    "model-only": ({}, None, False, True),
    "model-only-bos": ({"add_bos_token": True}, None, False, True),
    "json-legacy-normalizer": ({}, None, True, True),
    "json-only-legacy-normalizer": ({}, None, True, False),
    "json-legacy-normalizer-no-bos": ({"add_bos_token": False}, None, True, True),
    "metaspace-first-legacy-false": ({"legacy": False}, _metaspace("first"), True, True),
    "metaspace-first-legacy-true": ({"legacy": True}, _metaspace("first"), True, True),
    "metaspace-always-legacy-true": ({"legacy": True}, _metaspace("always"), True, True),
    "metaspace-always-legacy-false": ({"legacy": False}, _metaspace("always"), True, True),
    "metaspace-never-legacy-false": ({"legacy": False}, _metaspace("never"), True, True),
    "metaspace-never-legacy-true": ({"legacy": True}, _metaspace("never"), True, True),
    "metaspace-first-no-prefix-space": ({"legacy": False, "add_prefix_space": False}, _metaspace("first"), True, True),
    "metaspace-first-eos": ({"legacy": False, "add_eos_token": True}, _metaspace("first"), True, True),
}


def write_layout(name: str, folder: Path, spm_model: Path, base_json: Path) -> Path:
    """Tokenizer files of layout `name` in `folder` (other files there are left alone)."""
    extra, edit, keep_json, keep_model = LAYOUTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        (folder / f).unlink(missing_ok=True)
    if keep_model:
        shutil.copyfile(spm_model, folder / "tokenizer.model")
    if keep_json:
        t = json.loads(Path(base_json).read_text())
        if edit:
            edit(t)
        (folder / "tokenizer.json").write_text(json.dumps(t, ensure_ascii=False))
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           **extra}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def reference_ids(folder: Path, corpus=CORPUS) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(s)["input_ids"] for s in corpus]


def main(out: Path) -> None:
    from bonsai_export.tokenizer import mistral_v1_spm
    from bonsai_export.sentencepiece_json import spm_to_tokenizer_json

    out.mkdir(parents=True, exist_ok=True)
    spm = mistral_v1_spm()
    base = out / "_base.tokenizer.json"
    spm_to_tokenizer_json(spm, base)
    for name in LAYOUTS:
        write_layout(name, out / name, spm, base)
    (out / "corpus.json").write_text(json.dumps(CORPUS, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
