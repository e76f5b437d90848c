"""`bench --device adb` against a fake `adb` on PATH: it records every call and plays the device with a local
folder standing in for /data/local/tmp, where the host's own bonsai_runner runs. So the whole sequence (devices,
push, shell, pull) is checked, and the figures it reports come from real runs."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from bonsai_export import artifact as A
from bonsai_export.cli import main
from bonsai_export.device_bench import DEVICE_DIR, RESULT_FILE
from bonsai_export.export import export
from bonsai_export.native import native_dir

FAKE_ADB = """#!{python}
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
root = os.environ["FAKE_ADB_ROOT"]
local = lambda path: path.replace("/data/local/tmp", root)
if args == ["devices"]:
    print("List of devices attached")
    for serial in os.environ["FAKE_ADB_DEVICES"].split():
        print(serial + "\\tdevice")
elif args[0] == "push":
    for src in args[1:-1]:
        shutil.copy(src, local(args[-1]))
elif args[0] == "pull":
    shutil.copy(local(args[1]), args[2])
elif args[0] == "shell" and args[1].startswith("getprop"):
    print("Fake Phone")
elif args[0] == "shell":
    sys.exit(subprocess.run(["sh", "-c", local(" ".join(args[1:]))]).returncode)
else:
    sys.exit("fake adb: unexpected call " + " ".join(args))
"""


SHORT = ("--prompt-tokens", "16", "--new-tokens", "8")  # fits the test artifact's max_seq_len 64


@pytest.fixture(scope="module")
def pte_folder(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("device-bench") / "art"
    export(tiny_ckpt, out, A.ExportConfig(max_seq_len=64))
    return out


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    bin_dir, root = tmp_path / "bin", tmp_path / "device-tmp"
    bin_dir.mkdir()
    root.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "FAKE123")
    return tmp_path / "adb.log"


@pytest.fixture
def runner_dir(tmp_path):
    """What a device build's install folder holds: the runner and every library it loads."""
    import importlib.util

    et_lib = Path(list(importlib.util.find_spec("executorch").submodule_search_locations)[0]) / "lib"
    folder = tmp_path / "runner"
    folder.mkdir()
    libraries = [*et_lib.glob("*.so"), native_dir() / "libbonsai_et_ops.so"]
    for src in [native_dir() / "bonsai_runner", *libraries]:
        (folder / src.name).symlink_to(src.resolve())
    return folder


def test_device_bench_pushes_runs_and_pulls(fake_adb, runner_dir, pte_folder, tmp_path, capsys):
    report = tmp_path / "device"
    assert main(["--quiet", "bench", str(pte_folder), "--device", "adb", "--runner-dir", str(runner_dir),
                 "--threads", "1,2", "--repeats", "2", *SHORT,
                 "--report", str(report)]) == 0
    calls = [json.loads(line) for line in fake_adb.read_text().splitlines()]
    assert calls[0] == ["devices"] and all(c[:2] == ["-s", "FAKE123"] for c in calls[1:])
    verbs = [c[2] for c in calls[1:]]
    # mkdir, two pushes, then per thread count 3 runs (one warm-up) each followed by a pull, and getprop once
    assert verbs[:3] == ["shell", "push", "push"] and verbs.count("pull") == 6 and verbs.count("shell") == 8
    calls = calls[1:]
    pushes = [c for c in calls if c[2] == "push"]
    assert pushes[0][-1] == f"{DEVICE_DIR}/bin/" and "bonsai_runner" in {Path(p).name for p in pushes[0][3:-1]}
    assert {Path(p).name for p in pushes[1][3:-1]} == {A.PTE_FILE, "tokenizer.json"}
    runs = [c[3] for c in calls if c[2] == "shell" and "bonsai_runner" in c[3]]
    assert all(f"--json {RESULT_FILE}" in r for r in runs) and sum("--threads 2" in r for r in runs) == 3
    assert [c[3] for c in calls if c[2] == "pull"] == [f"{DEVICE_DIR}/{RESULT_FILE}"] * 6

    data = json.loads(report.with_suffix(".json").read_text())
    assert data["device_model"] == "Fake Phone" and [r["threads"] for r in data["rows"]] == [1, 2]
    for row in data["rows"]:
        assert len(row["device_runs"]) == 2 and all(r["generated_tokens"] == 8 for r in row["device_runs"])
        assert row["device"]["decode_tps"] > 0 and row["host"]["decode_tps"] > 0
        # the "device" ran the same runner on the same prompt: the same greedy tokens
        assert row["device_runs"][0]["generated_ids"] == row["host_runs"][0]["generated_ids"]
    out = capsys.readouterr().out
    assert "| 2 | decode_tps |" in out and "Fake Phone" in out


def test_no_device_attached_exits_3(fake_adb, runner_dir, pte_folder, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    assert main(["bench", str(pte_folder), "--device", "adb", "--runner-dir", str(runner_dir), *SHORT]) == 3
    assert "no Android device attached" in capsys.readouterr().err
    assert json.loads(fake_adb.read_text().splitlines()[-1]) == ["devices"]  # nothing pushed


def test_adb_missing_exits_3_and_bad_options_exit_2(runner_dir, pte_folder, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere
    assert main(["bench", str(pte_folder), "--device", "adb", "--runner-dir", str(runner_dir), *SHORT]) == 3
    assert "adb not found on PATH" in capsys.readouterr().err
    assert main(["bench", str(pte_folder), "--device", "adb", *SHORT]) == 2
    assert "--device adb needs --runner-dir" in capsys.readouterr().err
    assert main(["bench", str(pte_folder), "--device", "adb", "--runner-dir", str(tmp_path), *SHORT]) == 2
    assert "no bonsai_runner" in capsys.readouterr().err


def test_unknown_serial_and_several_devices(fake_adb, runner_dir, pte_folder, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1 B2")
    assert main(["bench", str(pte_folder), "--device", "adb", "--runner-dir", str(runner_dir), *SHORT]) == 2
    assert "pick one with --serial" in capsys.readouterr().err
    assert main(["bench", str(pte_folder), "--device", "adb", "--runner-dir", str(runner_dir),
                 "--serial", "C3", *SHORT]) == 3
    assert "--serial C3: not attached" in capsys.readouterr().err
