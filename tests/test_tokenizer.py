"""One tokenizer truth: every layout of this lineage gives transformers' ids in every Python runner.

The reference of a checkpoint folder is `transformers.AutoTokenizer.from_pretrained(folder)`. The eager runner reads
the checkpoint; the .pte and .onnx runners read the artifact's canonical tokenizer.json; transformers reading the
artifact folder must give the same ids again, and so must onnxruntime-genai where its tokenizer can (it has no
pre-tokenizer: docs/TOKENIZER.md). bonsai_runner (C++) and the app (Kotlin) are checked against the same layouts
and corpus in test_runner_tokenizer.py and test_kotlin_jvm.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import pytest
from tokenizer_layouts import CORPUS, LAYOUTS, write_layout

from bonsai_export import artifact as A
from bonsai_export import tokenizer as T
from bonsai_export.errors import BonsaiError
from bonsai_export.export import export
from bonsai_export.runners import open_runner
from bonsai_export.sentencepiece_json import spm_to_tokenizer_json
from bonsai_export.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def layouts(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    base = root / "_base.tokenizer.json"
    spm_to_tokenizer_json(tiny_ckpt / "tokenizer.model", base)
    return {name: write_layout(name, root / name, tiny_ckpt / "tokenizer.model", base) for name in LAYOUTS}


@pytest.fixture(scope="module")
def artifact(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok-art") / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="all", act_quant="none", max_seq_len=64))
    return out


def reference(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(s)["input_ids"] for s in CORPUS]


def retokenize(artifact, layout, dst):
    """The artifact with the tokenizer files export writes for a checkpoint of this layout."""
    shutil.copytree(artifact, dst)
    manifest = A.read_manifest(dst)  # before the files change: write_manifest hashes them again
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (dst / name).unlink(missing_ok=True)
    A.write_manifest(dst, dataclasses.replace(manifest, tokenizer=T.write_canonical(layout, dst).to_dict()))
    return dst


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_runner_gives_transformers_ids(name, layouts, artifact, tmp_path):
    want = reference(layouts[name])
    assert [Tokenizer(layouts[name]).encode(s) for s in CORPUS] == want  # eager, on the checkpoint folder
    art = retokenize(artifact, layouts[name], tmp_path / "art")
    for backend in ("pte", "onnx"):
        runner = open_runner(art, backend=backend)
        assert [Tokenizer(runner.tokenizer_dir).encode(s) for s in CORPUS] == want, backend
    assert reference(art) == want, "transformers reads the artifact's files back differently"
    settings = json.loads((art / A.MANIFEST).read_text())["tokenizer"]
    assert settings["bos"] == ([1] if want[0][:1] == [1] else [])


def test_decode_and_streaming_follow_the_pipeline(layouts):
    from tokenizers import Tokenizer as Pipeline

    tok = Tokenizer(layouts["metaspace-first-legacy-false"])
    for text in CORPUS:
        ids = tok.encode(text)
        assert tok.decode(ids) == tok.pipeline.decode(ids, skip_special_tokens=True)
        stream = T.StreamDecoder(tok)
        assert "".join(stream.push(i) for i in ids) == tok.decode(ids)
    assert isinstance(tok.pipeline, Pipeline)


def test_json_and_model_disagreeing_is_said_in_one_line(layouts, tmp_path, caplog):
    """transformers converts a bare tokenizer.model with its own merge order and without BOS: the export says
    which file it follows and the first string that differs."""
    with caplog.at_level(logging.WARNING, logger="bonsai_export.tokenizer"):
        T.write_canonical(layouts["metaspace-first-legacy-false"], tmp_path)
    lines = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(lines) == 1 and "tokenizer.json and tokenizer.model" in lines[0] and CORPUS[0] in lines[0]


def test_a_pipeline_outside_the_runners_subset_is_refused(layouts, tmp_path):
    folder = shutil.copytree(layouts["json-only-legacy-normalizer"], tmp_path / "bytelevel")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(BonsaiError, match="unsupported pre_tokenizer"):
        T.write_canonical(folder, tmp_path)


def test_onnxruntime_genai_tokenizer_where_it_can(layouts, artifact, tmp_path):
    """genai's Encode adds no special tokens unless asked (update_options), and has no pre-tokenizer: text that
    starts with whitespace or holds special-token strings is split its own way. Everything else must match."""
    og = pytest.importorskip("onnxruntime_genai")
    art = retokenize(artifact, layouts["metaspace-first-legacy-false"], tmp_path / "art")
    tok = og.Tokenizer(og.Model(str(art)))
    tok.update_options(add_special_tokens="true")
    want = reference(art)
    plain = [i for i, s in enumerate(CORPUS) if s and not s[0].isspace() and "<" not in s]
    assert len(plain) >= 18
    assert [[int(t) for t in tok.encode(CORPUS[i])] for i in plain] == [want[i] for i in plain]
