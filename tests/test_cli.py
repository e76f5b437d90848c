"""The command line: the embedded default, streaming output, info, and one-line errors with exit code 2."""

import json

import pytest

from bonsai_export.cli import main


def test_run_streams_greedy_text(tiny_ckpt, capsys):
    assert main(["run", str(tiny_ckpt), "--prompt", "Once upon a time", "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time") + 4
    assert "8 new tokens" in err and "decode" in err
    assert main(["--quiet", "run", str(tiny_ckpt), "--prompt", "Once upon a time", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == out  # greedy: deterministic


def test_run_uses_the_embedded_default(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BONSAI_EXPORT_CACHE", str(tmp_path))
    assert main(["--quiet", "run", "--prompt", "Hello", "--max-new-tokens", "3", "--act-quant", "int8"]) == 0
    assert (tmp_path / "tiny-seed0" / "model.safetensors").is_file()
    assert capsys.readouterr().out.startswith("Hello")


def test_info_json(tiny_ckpt, capsys):
    assert main(["--quiet", "info", str(tiny_ckpt), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "qlinear"
    assert d["parameters"]["ternary"] == 2 * (2 * 192 * 192 + 2 * 96 * 192 + 3 * 512 * 192)  # q,o; k,v; mlp
    assert d["parameters"]["total"] == 13_103_552
    assert 0.4 < d["ternary_sparsity"] < 0.6
    assert main(["--quiet", "info", str(tiny_ckpt)]) == 0
    assert "ternary sparsity" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["run", "no/such/dir", "--prompt", "x"], "no such folder, and not a hub id"),
    (["run", "--prompt", "x", "--top-p", "0"], "--top-p: expected a value in (0, 1]"),
    (["run", "--prompt", "x", "--max-seq-len", "99999"], "max_seq_len: expected 1..256"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BONSAI_EXPORT_CACHE", str(tmp_path))
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
