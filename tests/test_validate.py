"""Text-level parity: `validate`'s greedy-text check and `run`'s greedy text against transformers' own tokenizer and
`generate` on the scale-folded Llama (reference.py), on exact artifacts (float activations, bf16 head)."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from bonsai_export import artifact as A
from bonsai_export import checkpoint
from bonsai_export.cli import main
from bonsai_export.export import export
from bonsai_export.reference import folded_llama
from bonsai_export.synthetic import make_checkpoint
from bonsai_export.validate import is_exact

PROMPT = "The Python language reference describes"
NEW_TOKENS = 16
# validate's cheap settings: the held-out text and teacher-forced decode are not what these tests are about
FAST = ["--max-text-tokens", "256", "--steps", "8", "--max-new-tokens", str(NEW_TOKENS)]


@pytest.fixture(scope="module")
def exact_artifacts(tiny_ckpt, tmp_path_factory) -> dict:
    """One .pte and one .onnx folder of the tiny checkpoint computing the reference's math (`run` opens the .pte
    of a folder holding both, so each format gets its own folder)."""
    root = tmp_path_factory.mktemp("exact")
    for fmt in ("pte", "onnx"):
        export(tiny_ckpt, root / fmt, A.ExportConfig(format=fmt, act_quant="none", head="bf16", max_seq_len=64))
    return {fmt: root / fmt for fmt in ("pte", "onnx")}


@pytest.fixture(scope="module")
def transformers_greedy(tiny_ckpt) -> dict:
    """transformers alone: AutoTokenizer, the folded fp32 Llama and greedy `generate` (no EOS on this model)."""
    tok = AutoTokenizer.from_pretrained(str(tiny_ckpt))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = folded_llama(checkpoint.load(tiny_ckpt, progress=False)).generate(ids, do_sample=False,
                                                                          max_new_tokens=NEW_TOKENS)[0]
    new = out[ids.shape[1]:].tolist()
    assert len(new) == NEW_TOKENS and 2 not in new, new  # else the comparison below would need EOS handling
    return {"prompt_ids": ids[0].tolist(), "new_ids": new, "new_text": tok.decode(new, skip_special_tokens=True),
            "text": tok.decode(out, skip_special_tokens=True)}


def _validate(art, tmp_path, capsys, *extra) -> tuple[int, dict, str]:
    """-> exit code, the JSON report, stdout + stderr."""
    code = main(["--quiet", "validate", str(art), "--report", str(tmp_path / "rep"), *FAST, *extra])
    out = capsys.readouterr()
    return code, json.loads((tmp_path / "rep.json").read_text()), out.out + out.err


@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_validate_greedy_text_equals_transformers_on_an_exact_artifact(exact_artifacts, transformers_greedy, fmt,
                                                                       tmp_path, capsys):
    code, report, err = _validate(exact_artifacts[fmt], tmp_path, capsys)
    assert code == 0 and not report["failures"], err
    g, want = report["generation"], transformers_greedy
    assert g["exact_artifact"] and g["max_new_tokens"] == NEW_TOKENS
    assert g["prompt_ids_reference"] == g["prompt_ids_artifact"] == want["prompt_ids"]
    assert g["tokens_reference"] == g["tokens_artifact"] == want["new_ids"]
    assert g["text_reference"] == g["text_artifact"] == want["new_text"]
    assert g["prompt_ids_equal"] and g["tokens_equal"] and g["text_equal"] and g["first_difference"] is None
    assert "| greedy ids identical | True (first difference: None) |" in (tmp_path / "rep.md").read_text()
    rows = summary_rows(err)  # the terminal's summary table
    assert rows["check"] == ["check", "value", "gate"] and "verdict: PASS" in err, err
    assert rows["top-1 agreement"][-4:] == ["100.00%", ">=", "98%", "ok"], rows
    assert rows["greedy text = transformers'"][-3:] == ["yes", "required", "ok"], rows


def summary_rows(output: str) -> dict[str, list[str]]:
    """validate's terminal table: the check's name (before its first comma) -> the row's words."""
    return {line.split(",")[0].split("  ")[0]: line.split() for line in output.splitlines() if "  " in line}


def _swap_prompt_token(art, prompt_ids: list[int]) -> None:
    """Give the prompt's third piece the id of its neighbour and back (a loadable, wrong tokenizer.json), and
    describe the edited file in the manifest as a folder re-described after editing would."""
    path = art / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    by_id = {i: piece for piece, i in vocab.items()}
    a, b = prompt_ids[2], prompt_ids[2] + 1
    vocab[by_id[a]], vocab[by_id[b]] = b, a
    path.write_text(json.dumps(data, ensure_ascii=False))
    manifest = json.loads((art / A.MANIFEST).read_text())
    manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": A.sha256(path)}
    manifest[A.SEAL] = A.seal_of(manifest)
    (art / A.MANIFEST).write_text(json.dumps(manifest))


def test_validate_fails_on_an_edited_artifact_tokenizer(exact_artifacts, transformers_greedy, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(exact_artifacts["pte"], art)
    _swap_prompt_token(art, transformers_greedy["prompt_ids"])
    code, report, err = _validate(art, tmp_path, capsys)
    g = report["generation"]
    assert code == 1 and not g["prompt_ids_equal"] and g["prompt_ids_first_difference"] == 2
    assert g["prompt_ids_reference"] == transformers_greedy["prompt_ids"]
    assert "FAIL: the artifact's tokenizer gives the prompt other ids than transformers' AutoTokenizer from " \
           "position 2" in err and "(--require-prompt-ids)" in err
    # the logits checks share the checkpoint's tokenizer on both sides, so only the text check sees the edit
    assert not any("top-1" in f or "perplexity" in f or "KL" in f for f in report["failures"]), report["failures"]
    assert summary_rows(err)["prompt ids = transformers'"][-3:] == ["no", "required", "FAIL"] and "verdict: FAIL" in err
    code, report, err = _validate(art, tmp_path, capsys, "--no-require-prompt-ids", "--require-text", "never")
    assert code == 0, err


def test_validate_fails_against_another_checkpoint(exact_artifacts, tmp_path, capsys):
    other = make_checkpoint("tiny", tmp_path / "seed1", seed=1, progress=False)
    code, report, err = _validate(exact_artifacts["onnx"], tmp_path, capsys, "--reference", str(other))
    g = report["generation"]
    assert code == 1 and g["prompt_ids_equal"] and not g["tokens_equal"] and g["first_difference"] == 0
    assert "FAIL: greedy text differs from transformers' greedy text from new token 0" in err
    assert "(--require-text exact)" in err


@pytest.mark.parametrize("options,backend,exact", [
    ({"act_quant": "none", "embedding": "bf16", "head": "bf16"}, "pte", True),
    ({"act_quant": "none", "embedding": "bf16", "head": "bf16"}, "onnx-custom", True),
    ({"act_quant": "none", "embedding": "bf16", "head": "bf16"}, "onnx-stock", False),  # MatMulNBits
    ({"act_quant": "int8", "embedding": "bf16", "head": "bf16"}, "pte", False),
    ({"act_quant": "none", "embedding": "int8", "head": "bf16"}, "pte", False),
    ({"act_quant": "none", "embedding": "bf16", "head": "int8"}, "onnx-custom", False),
    ({"act_quant": "none", "embedding": "bf16", "head": "int4"}, "pte", False),
])
def test_only_artifacts_computing_the_reference_math_are_exact(options, backend, exact):
    assert is_exact(A.ExportConfig(**options), backend) == exact


@pytest.mark.parametrize("target", ["checkpoint", "pte", "onnx"])
def test_run_prints_transformers_greedy_text(tiny_ckpt, exact_artifacts, transformers_greedy, target, capsys):
    path = tiny_ckpt if target == "checkpoint" else exact_artifacts[target]
    argv = ["run", str(path), "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)]  # --temperature 0: greedy
    assert main(["--quiet", *argv]) == 0
    assert capsys.readouterr().out == transformers_greedy["text"] + "\n"
    assert main(["--json", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == transformers_greedy["new_ids"]
