"""Byte-level BPE (Qwen2/Qwen3, Llama-3) in the Python runners: transformers' ids through the artifact's files.

Layouts come from byte_level_layouts.py (BPE trained offline with `tokenizers`, Qwen2's exact pre-tokenizer regex
as transformers' Qwen2Tokenizer has it, Llama-3's). bonsai_runner's and the app's tokenizers are checked on the same
layouts and corpus in test_runner_tokenizer.py and test_kotlin_jvm.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from byte_level_layouts import CORPUS, LAYOUTS, write_layout

from bonsai_export import artifact as A
from bonsai_export import tokenizer as T
from bonsai_export.errors import BonsaiError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("byte-level")
    return {name: write_layout(name, root / name) for name in LAYOUTS}


def reference(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(s)["input_ids"] for s in CORPUS]


def artifact_of(layout: Path, dst: Path) -> tuple[Path, T.Settings]:
    """The tokenizer files export writes for a checkpoint of this layout, in a folder that reads as an artifact."""
    dst.mkdir()
    found = T.write_canonical(layout, dst)
    (dst / A.MANIFEST).write_text("{}")  # Tokenizer() reads a folder with a manifest as an artifact
    return dst, found


def test_the_qwen2_regex_is_transformers_own():
    from transformers.models.qwen2 import tokenization_qwen2

    assert T.SPLIT_PATTERNS["qwen2"] == tokenization_qwen2.PRETOKENIZE_REGEX


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_python_runners_give_transformers_ids(name, layouts, tmp_path):
    want = reference(layouts[name])
    assert [T.Tokenizer(layouts[name]).encode(s) for s in CORPUS] == want  # eager, on the checkpoint folder
    art, found = artifact_of(layouts[name], tmp_path / "art")
    tok = T.Tokenizer(art)
    assert [tok.encode(s) for s in CORPUS] == want  # .pte / .onnx runners: the artifact's tokenizer.json
    assert reference(art) == want, "transformers reads the artifact's files back differently"
    assert found.kind == "byte_level" and found.split == name
    assert found.to_dict()["bos"] == ([want[0][0]] if name == "llama3" else [])
    assert found.nfc == (name == "qwen2") and found.ignore_merges == (name == "llama3")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_decode_and_streaming_follow_the_pipeline(name, layouts):
    tok = T.Tokenizer(layouts[name])
    for text in CORPUS:
        ids = tok.encode(text)
        assert tok.decode(ids) == tok.pipeline.decode(ids, skip_special_tokens=True)
        stream = T.StreamDecoder(tok)
        assert "".join(stream.push(i) for i in ids) == tok.decode(ids), text


def test_the_sentencepiece_only_callers_still_refuse_byte_level(layouts):
    """The GGUF writer's llama vocabulary is SentencePiece's: settings() without byte_level refuses the layout."""
    with pytest.raises(BonsaiError, match="unsupported model"):
        T.settings(T.reference_pipeline(layouts["qwen2"]))


def _edit(spec: dict, path: list, value) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


REFUSED = {  # an edit of the Qwen2 layout's tokenizer.json -> the part the error names
    "another regex": (["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], r"\s+|\w+", "pre_tokenizer"),
    "Split removed": (["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed", "pre_tokenizer"),
    "prefix space": (["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], True, "pre_tokenizer"),
    "ByteLevel regex": (["pre_tokenizer", "pretokenizers", 1, "use_regex"], True, "pre_tokenizer"),
    "NFKC": (["normalizer"], {"type": "NFKC"}, "normalizer"),
    "dropout": (["model", "dropout"], 0.1, "model"),
    "byte fallback": (["model", "byte_fallback"], True, "model"),
    "lstrip": (["added_tokens", 0, "lstrip"], True, "added token"),
    "decoder": (["decoder"], {"type": "Fuse"}, "model"),  # read as SentencePiece-style, which it is not
}
assert len(REFUSED) == 9


@pytest.mark.parametrize("case", REFUSED)
def test_a_byte_level_pipeline_outside_the_subset_is_refused(case, layouts, tmp_path):
    from tokenizers import Tokenizer as Pipeline

    path, value, part = REFUSED[case]
    spec = json.loads((layouts["qwen2"] / "tokenizer.json").read_text())
    _edit(spec, path, value)
    with pytest.raises(BonsaiError, match=f"unsupported {part}"):
        T.settings(Pipeline.from_str(json.dumps(spec)), byte_level=True)


def test_a_missing_byte_piece_is_refused(layouts, tmp_path):
    from tokenizers import Tokenizer as Pipeline

    spec = json.loads((layouts["qwen2"] / "tokenizer.json").read_text())
    lost = T.byte_level_alphabet()[0xFF]
    del spec["model"]["vocab"][lost]
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if lost not in "".join(m)]
    with pytest.raises(BonsaiError, match="byte 0xFF"):
        T.settings(Pipeline.from_str(json.dumps(spec)), byte_level=True)


def test_the_unicode_header_is_what_its_script_writes():
    """custom_ops/runner/unicode_tables.h is generated; an edit by hand or a stale copy shows here."""
    script = ROOT / "custom_ops/runner/gen_unicode_tables.py"
    assert subprocess.run([sys.executable, str(script), "--check"], timeout=120).returncode == 0, \
        f"run python3 {script.relative_to(ROOT)}"
