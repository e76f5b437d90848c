"""The bad-input matrix: every wrong input the CLI can meet gives one line naming the problem and the fix, a
non-zero exit status, no traceback, and never a half-written artifact. Plus the artifact guarantees: interrupted
exports leave the previous artifact intact, the same inputs give byte-identical files, `verify` checks them."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bonsai_export
from bonsai_export import artifact as A
from bonsai_export.cli import main
from bonsai_export.export import export

# Subprocesses import the bonsai_export this test imported (installed, or the source tree in development).
PACKAGE_PARENT = str(Path(bonsai_export.__file__).resolve().parents[1])
Q = "model.layers.0.self_attn.q_proj"


def fails(argv: list[str], message: str, capsys, code: int = 2) -> None:
    assert main(["--quiet", *argv]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err[-3000:]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def artifact(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="all", max_seq_len=32))
    return out


@pytest.fixture
def art_copy(artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(artifact, dst)
    return dst


def rewrite_manifest(folder: Path, **edits) -> None:
    """Make the manifest describe the folder's files as they are now, sealed (a folder written elsewhere, or by
    someone who knows the format), with `edits` applied to its model section."""
    manifest = json.loads((folder / A.MANIFEST).read_text())
    body = {k: v for k, v in manifest.items() if k not in ("files", "format_version", "bonsai_export_version")}
    A.write_manifest(folder, {**body, "model": {**body["model"], **edits}})


# ---- checkpoints ----

def edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


CHECKPOINT_CASES = {
    "missing safetensors": (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
    "truncated safetensors": (lambda f: os.truncate(f / "model.safetensors", (f / "model.safetensors").stat().st_size // 2),
                              "not a readable safetensors file"),
    "corrupt safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"),
                            "not a readable safetensors file"),
    "wrong dtype": (lambda f: edit_tensors(f, lambda t: t.__setitem__(f"{Q}.weight", t[f"{Q}.weight"].to(torch.int32))),
                    f"{Q}.weight"),
    "shape mismatch": (lambda f: edit_tensors(f, lambda t: t.__setitem__(f"{Q}.weight", t[f"{Q}.weight"][:-1])),
                       f"{Q}.weight"),
    "NaN weight": (lambda f: edit_tensors(f, lambda t: t[f"{Q}.weight"].__setitem__((0, 0), float("nan"))),
                   "contains NaN or Inf"),
    "unsupported config": (lambda f: (f / "config.json").write_text(json.dumps(
        {**json.loads((f / "config.json").read_text()), "rope_scaling": {"type": "yarn", "factor": 4.0}})),
        "rope_scaling"),
    "tokenizer of another model": (lambda f: grow_tokenizer(f), "the tokenizer has 32005 tokens but the model's vocab"),
    "corrupt tokenizer": (lambda f: (f / "tokenizer.json").write_text("{not json"), "cannot read its tokenizer"),
}


def grow_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(5)])
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(case, tiny_copy, tmp_path, capsys):
    edit, message = CHECKPOINT_CASES[case]
    edit(tiny_copy)
    out = tmp_path / "out"
    fails(["export", str(tiny_copy), "-o", str(out)], message, capsys)
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "no artifact, no staging folder left"


def test_hub_id_unreachable(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    fails(["export", "nobody-here/no-such-model", "-o", str(tmp_path / "o")], "could not download from the Hugging "
          "Face hub", capsys)


# ---- output folders ----

def test_output_folder_not_writable(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    fails(["export", str(tiny_ckpt), "-o", str(tmp_path / "file" / "out")], "cannot write there", capsys)
    fails(["export", str(tiny_ckpt), "-o", str(tmp_path / "file")], "exists and is not empty", capsys)


def test_full_disk_keeps_the_previous_artifact(tiny_ckpt, art_copy, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(A, "write_manifest", no_space)
    fails(["export", str(tiny_ckpt), "-o", str(art_copy), "--format", "pte", "--force"], "No space left on device",
          capsys)
    monkeypatch.undo()
    assert A.verify(art_copy) == [] and (art_copy / A.ONNX_FILE).is_file(), "the previous artifact is untouched"
    assert [p.name for p in art_copy.parent.iterdir()] == ["art"], "no staging folder left"


# ---- run options ----

@pytest.mark.parametrize("argv,message", [
    (["--prompt", ""], "--prompt: empty"),
    (["--prompt", "   "], "--prompt: empty"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature: expected >= 0"),
    (["--prompt", "x", "--temperature", "nan"], "--temperature: expected a finite number"),
    (["--prompt", "x", "--top-p", "0"], "--top-p: expected a value in (0, 1]"),
    (["--prompt", "x", "--top-p", "inf"], "--top-p: expected a value in (0, 1]"),
    (["--prompt", "x", "--top-k", "-3"], "--top-k: expected >= 0"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens: expected >= 1"),
    (["--prompt", "word " * 40], "42 tokens leave no room in max_seq_len=32; shorten"),
])
def test_bad_run_options(artifact, argv, message, capsys):
    fails(["run", str(artifact), *argv], message, capsys)


# ---- artifacts ----

def test_newer_format_version(art_copy, capsys):
    manifest = json.loads((art_copy / A.MANIFEST).read_text())
    (art_copy / A.MANIFEST).write_text(json.dumps({**manifest, "format_version": A.FORMAT_VERSION + 1}))
    fails(["run", str(art_copy), "--prompt", "x"], "written by a newer bonsai-export", capsys)
    fails(["verify", str(art_copy)], "upgrade bonsai-export", capsys)


@pytest.mark.parametrize("backend,file", [("pte", A.PTE_FILE), ("onnx", A.ONNX_FILE)])
def test_truncated_model_file(art_copy, backend, file, capsys):
    path = art_copy / file
    os.truncate(path, path.stat().st_size // 3)
    fails(["validate", str(art_copy), "--backend", backend], "truncated or replaced", capsys)
    # The same damage in a folder whose manifest agrees (copied half-way, then re-described): the runtime's refusal
    # still becomes one line.
    rewrite_manifest(art_copy)
    fails(["validate", str(art_copy), "--backend", backend], "cannot load it", capsys)


def test_op_library_missing_or_for_another_cpu(art_copy, capsys):
    (art_copy / A.ORT_OPS_LIB).unlink()
    fails(["validate", str(art_copy), "--backend", "onnx"], f"{A.ORT_OPS_LIB}: missing", capsys)
    # An aarch64 build (a folder exported on an ARM machine): a valid ELF header for another machine.
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    header[16:20] = (3).to_bytes(2, "little") + (183).to_bytes(2, "little")  # ET_DYN, EM_AARCH64
    (art_copy / A.ORT_OPS_LIB).write_bytes(bytes(header))
    rewrite_manifest(art_copy)
    fails(["validate", str(art_copy), "--backend", "onnx"], "ONNX Runtime cannot load it", capsys)


def test_executorch_op_library_for_another_cpu(artifact, tmp_path):
    """In a fresh process (this one has loaded the real library already)."""
    native = tmp_path / "native"
    native.mkdir()
    (native / "libbonsai_et_ops.so").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    env = {**os.environ, "BONSAI_NATIVE_DIR": str(native), "PYTHONPATH": PACKAGE_PARENT}
    result = subprocess.run([sys.executable, "-m", "bonsai_export", "--quiet", "run", str(artifact), "--prompt", "x"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "libbonsai_et_ops.so: cannot be loaded" in result.stderr and "Traceback" not in result.stderr


# ---- artifacts you can trust ----

def test_verify(art_copy, capsys):
    assert main(["verify", str(art_copy)]) == 0
    assert "OK" in capsys.readouterr().out
    data = bytearray((art_copy / A.PTE_FILE).read_bytes())
    data[1000] ^= 0xFF  # same size, different content
    (art_copy / A.PTE_FILE).write_bytes(bytes(data))
    (art_copy / "notes.txt").write_text("mine")
    (art_copy / "tokenizer.model").unlink()
    assert main(["--json", "verify", str(art_copy)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and sorted(report["problems"]) == sorted([
        "model.pte: sha256 differs from the manifest (modified or corrupt)", "notes.txt: not in the manifest",
        "tokenizer.model: missing"])
    fails(["verify", str(art_copy / "nope")], "not a bonsai-export artifact folder", capsys)


def test_same_inputs_give_byte_identical_artifacts(tiny_ckpt, artifact, tmp_path):
    again = tmp_path / "again"
    export(tiny_ckpt, again, A.ExportConfig(format="all", max_seq_len=32))
    first, second = A.read_manifest(artifact)["files"], A.read_manifest(again)["files"]
    assert first == second and (artifact / A.MANIFEST).read_bytes() == (again / A.MANIFEST).read_bytes()


def test_killed_export_leaves_the_previous_artifact(tiny_ckpt, art_copy, tmp_path):
    before = A.read_manifest(art_copy)
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    proc = subprocess.Popen([sys.executable, "-m", "bonsai_export", "export", str(tiny_ckpt), "-o", str(art_copy),
                             "--format", "all", "--max-seq-len", "32", "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # Kill it once it has started writing: its staging folder appears beside the artifact.
    deadline = time.time() + 240
    while time.time() < deadline and not list(art_copy.parent.glob(".art.partial-*/*")):
        time.sleep(0.05)
    assert proc.poll() is None, f"export ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert A.read_manifest(art_copy) == before and A.verify(art_copy) == [], "the previous artifact is intact"
    # The killed export's staging folder is all that is left, and the next export removes it.
    leftovers = [p for p in art_copy.parent.iterdir() if p.name != "art"]
    assert all(p.name.startswith(".art.partial-") for p in leftovers)
    export(tiny_ckpt, art_copy, A.ExportConfig(format="pte", max_seq_len=32), force=True)
    assert [p.name for p in art_copy.parent.iterdir()] == ["art"] and A.verify(art_copy) == []
