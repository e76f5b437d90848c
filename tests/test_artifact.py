"""artifact.py, the one artifact contract: the manifest's types round-trip through JSON, the .pte metadata through
its constant methods, and the C++ runner and the Kotlin app read the same names from copies generated from it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bonsai_export import artifact as A
from bonsai_export import artifact_sources as S
from bonsai_export import metadata as M
from bonsai_export.errors import BonsaiError

ROOT = Path(__file__).resolve().parents[1]
RUNNER_CPP = ROOT / "custom_ops/runner/bonsai_runner.cpp"
MODEL_FOLDER_KT = ROOT / "android_demo/app/src/main/java/org/bonsaiexport/demo/ModelFolder.kt"

SHAPE = A.ModelShape(n_layers=2, dim=64, vocab_size=320, max_seq_len=128, bos_id=1, eos_ids=(2, 7), n_kv_heads=2,
                     head_dim=16, ternary_weights=4096, ternary_bytes=1100, bits_per_ternary_weight=2.15,
                     head_bytes=40960)
OPTIONS = A.ExportConfig(format="all", max_seq_len=128, act_quant="none", head="int8")


def manifest(folder: Path) -> A.Manifest:
    (folder / A.PTE_FILE).write_bytes(b"program")
    (folder / A.ONNX_FILE).write_bytes(b"graph")
    arts = (A.ArtifactEntry(type="pte", file=A.PTE_FILE, op_library="libbonsai_et_ops.so"),
            A.ArtifactEntry(type="onnx", file=A.ONNX_FILE, files=(A.ONNX_FILE,), ternary_op="stock",
                            genai_config=A.GENAI_CONFIG))
    return A.Manifest(artifacts=arts, options=OPTIONS, model=SHAPE, source=A.Source("/ckpt", "qlinear"),
                      tokenizer={"bos": [1]})


def test_manifest_round_trips_through_the_folder(tmp_path):
    written = A.write_manifest(tmp_path, manifest(tmp_path))
    assert set(written.files) == {A.PTE_FILE, A.ONNX_FILE}
    assert written.files[A.PTE_FILE] == A.FileEntry(7, A.sha256(tmp_path / A.PTE_FILE))
    back = A.read_manifest(tmp_path)
    assert back == written
    assert back.artifact("onnx").ternary_op == "stock" and back.artifact("gguf") is None
    assert back.kinds == ["pte", "onnx"] and back.total_bytes == 12
    assert back.model.bytes_per_token == 1100 + 40960
    raw = json.loads((tmp_path / A.MANIFEST).read_text())
    assert raw["format_version"] == A.FORMAT_VERSION == 2
    assert "threads" not in raw["options"]  # a runtime setting: the runners take it
    assert raw["model"]["eos_ids"] == [2, 7] and raw["artifacts"][1]["files"] == [A.ONNX_FILE]


def test_gguf_details_stay_beside_the_typed_fields(tmp_path):
    (tmp_path / A.GGUF_FILE).write_bytes(b"gguf")
    entry = A.ArtifactEntry(type="gguf", file=A.GGUF_FILE, bits_per_ternary_weight=2.0625,
                            details={"ternary": "tq2_0", "fallback_tensors": []})
    body = dataclasses.replace(manifest(tmp_path), artifacts=(entry,))
    A.write_manifest(tmp_path, body)
    raw = json.loads((tmp_path / A.MANIFEST).read_text())["artifacts"][0]
    assert raw == {"type": "gguf", "file": A.GGUF_FILE, "bits_per_ternary_weight": 2.0625, "ternary": "tq2_0",
                   "fallback_tensors": []}
    assert A.read_manifest(tmp_path).artifacts[0] == entry


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(format_version=1), "format_version 1, this bonsai-export reads 2; re-export"),
    (lambda m: m["options"].update(threads=2), "unknown threads"),
    (lambda m: m["options"].update(head="int3"), "--head: expected one of bf16, int8, int4, got 'int3'"),
    (lambda m: m["model"].update(n_layers="2"), "'model' lacks one of n_layers"),
    (lambda m: m["model"].update(eos_ids=2), "'model.eos_ids' is not a list"),
    (lambda m: m["model"].update(colour="red"), "'model' has unknown fields colour"),
    (lambda m: m["artifacts"][1].update(files="model.onnx"), "artifact onnx: 'files' is not a list"),
    (lambda m: m.pop("tokenizer"), "'tokenizer' is not an object"),
])
def test_a_malformed_manifest_is_refused_on_one_line(tmp_path, edit, message):
    A.write_manifest(tmp_path, manifest(tmp_path))
    raw = json.loads((tmp_path / A.MANIFEST).read_text())
    edit(raw)
    (tmp_path / A.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BonsaiError, match=re.escape(message)):
        A.read_manifest(tmp_path, sealed=False)


def test_pte_metadata_round_trips_through_constant_methods():
    meta = M.PteMetadata(call_tokens=64, max_seq_len=128, vocab_size=320, n_layers=2, bos_id=1, eos_ids=(2, 7),
                         options=OPTIONS)
    methods = meta.methods()
    assert methods["get_max_seq_len"] == 64 and methods["get_max_context_len"] == 128  # ExecuTorch's names
    assert methods["use_kv_cache"] is True and methods["get_eos_ids"] == [2, 7]
    # what a program's method returns: a list of values (one for a scalar)
    returned = {k: (v if isinstance(v, list) else [v]) for k, v in methods.items()}
    assert M.PteMetadata.read(returned.__getitem__, "model.pte") == meta


def test_embedded_options_must_be_the_manifests(tmp_path):
    body = manifest(tmp_path)
    M.check_embedded(M.onnx_options(M.onnx_metadata(OPTIONS), "model.onnx"), body, "model.onnx")
    other = dataclasses.replace(OPTIONS, head="bf16")
    with pytest.raises(BonsaiError, match="exported with other options than bonsai_manifest.json says "
                                          r"\(head 'bf16' vs 'int8'\)"):
        M.check_embedded(M.onnx_options(M.onnx_metadata(other), "model.onnx"), body, "model.onnx")
    with pytest.raises(BonsaiError, match="no bonsai_export_options in its metadata"):
        M.onnx_options({}, "model.onnx")


@pytest.mark.parametrize("path", list(S.generated()))
def test_generated_sources_are_current(path):
    """The C++ header and the Kotlin object are artifact.py's names: regenerate with
    `python -m bonsai_export.artifact_sources` after changing it."""
    assert (ROOT / path).read_text() == S.generated()[path], f"{path} is stale"


def test_runner_and_app_spell_no_key_themselves():
    assert S.spelled_keys(RUNNER_CPP.read_text()) == set()
    # "model" is also genai_config.json's own section, which is onnxruntime-genai's format, not ours
    assert S.spelled_keys(MODEL_FOLDER_KT.read_text()) - {"model"} == set()


def test_runner_and_app_name_only_generated_keys():
    names = S.sections()
    cpp = RUNNER_CPP.read_text()
    used = re.findall(r"\b(folder|manifest|model|entry|pte)::(k\w+)", cpp)
    assert {("pte", "kFormatVersion"), ("pte", "kCallTokens"), ("pte", "kMaxSeqLen"), ("pte", "kEosIds")} <= set(used)
    header = S.cpp_header()
    for section, ident in used:
        assert re.search(rf"namespace {section} {{[^}}]*\b{ident}\b", header), f"{section}::{ident}"
    kotlin = re.findall(r"\b(Folder|Manifest|Model|Entry)\.([A-Z][A-Z_]+)\b", MODEL_FOLDER_KT.read_text())
    assert {("Model", "N_LAYERS"), ("Model", "MAX_SEQ_LEN"), ("Entry", "TERNARY_OP")} <= set(kotlin)
    for section, name in kotlin:
        assert name in names[section], f"ModelFolder.kt reads {section}.{name}, which artifact.py does not define"


def test_a_folder_described_again_from_its_manifests_json(tmp_path):
    """write_manifest also takes the JSON of a manifest (a folder whose files changed, described again)."""
    A.write_manifest(tmp_path, manifest(tmp_path))
    (tmp_path / A.PTE_FILE).write_bytes(b"another program")
    raw = json.loads((tmp_path / A.MANIFEST).read_text())
    again = A.write_manifest(tmp_path, {k: v for k, v in raw.items() if k not in ("files", A.SEAL)})
    assert again.files[A.PTE_FILE].bytes == 15 and A.verify(tmp_path) == []
    assert again.model == SHAPE and again.options == OPTIONS
