"""`bonsai-export bench OUT_DIR --device adb`: the .pte timed on an Android device by `bonsai_runner`, beside the
same runner and the same prompt on this host.

The device needs a build of `bonsai_runner` for it (Android NDK, or linux-aarch64 on an aarch64 Linux board; see
android_demo/README.md): `--runner-dir` names the folder holding the executable and the shared libraries it
loads (libexecutorch*.so, libbonsai_et_ops.so). Everything is pushed under /data/local/tmp/bonsai, the runner
writes its JSON line of timings to a file there, and the file is pulled back after each run.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from . import artifact as A
from . import tokenizer as T
from .errors import BonsaiError
from .native import RUNNER, native_dir

log = logging.getLogger(__name__)

DEVICE_DIR = "/data/local/tmp/bonsai"
RESULT_FILE = "result.json"
FIRST_TOKEN = 1000  # prompts are ids FIRST_TOKEN.. (content does not change the cost)
METRICS = ("prefill_tps", "ttft_s", "decode_tps", "load_s", "peak_rss_mib")
ADB_TIMEOUT_S = 600


class NoDeviceError(BonsaiError):
    """adb is missing or sees no device: exit status 3, distinct from bad input (2)."""

    exit_code = 3


def adb_command(serial: str | None) -> list[str]:
    """The adb invocation for the chosen device, after checking that adb sees it."""
    adb = shutil.which("adb")
    if adb is None:
        raise NoDeviceError("adb not found on PATH; install Android's platform-tools and connect a device with "
                            "USB debugging on")
    listing = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    devices = [line.split()[0] for line in listing.stdout.splitlines()[1:] if line.split()[1:] == ["device"]]
    if not devices:
        raise NoDeviceError("no Android device attached (`adb devices` lists none ready); connect one with USB "
                            "debugging on and accept the prompt on the phone")
    if serial is None and len(devices) > 1:
        raise BonsaiError(f"several devices attached ({', '.join(devices)}); pick one with --serial")
    if serial is not None and serial not in devices:
        raise NoDeviceError(f"--serial {serial}: not attached (attached: {', '.join(devices)})")
    return [adb, "-s", serial or devices[0]]


def _adb(adb: list[str], *args: str) -> str:
    result = subprocess.run([*adb, *args], capture_output=True, text=True, timeout=ADB_TIMEOUT_S)
    if result.returncode != 0:
        raise BonsaiError(f"adb {args[0]} failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result.stdout


def runner_files(runner_dir: Path) -> list[Path]:
    files = sorted(p for p in runner_dir.iterdir() if p.is_file() and (p.name == "bonsai_runner" or ".so" in p.name))
    if not any(p.name == "bonsai_runner" for p in files):
        raise BonsaiError(f"--runner-dir {runner_dir}: no bonsai_runner in it; build it for the device "
                          f"(android_demo/README.md, section 8) and pass its folder")
    return files


def runner_args(prompt_tokens: int, new_tokens: int, threads: int) -> list[str]:
    """One timed run after one untimed run of the same prompt (the warm-up every backend of the bench gets)."""
    ids = [1] + list(range(FIRST_TOKEN, FIRST_TOKEN + prompt_tokens - 1))
    return ["--tokens", ",".join(map(str, ids)), "--max-new-tokens", str(new_tokens), "--threads", str(threads),
            "--warmup", "1"]


def medians(runs: list[dict]) -> dict:
    return {m: statistics.median(r[m] for r in runs) for m in METRICS}


def push(adb: list[str], folder: Path, runner_dir: Path) -> None:
    _adb(adb, "shell", f"mkdir -p {DEVICE_DIR}/bin {DEVICE_DIR}/model")
    _adb(adb, "push", *map(str, runner_files(runner_dir)), f"{DEVICE_DIR}/bin/")
    _adb(adb, "push", str(folder / A.PTE_FILE), str(folder / T.TOKENIZER_JSON), f"{DEVICE_DIR}/model/")


def run_on_device(adb: list[str], args: list[str], repeats: int) -> list[dict]:
    command = (f"cd {DEVICE_DIR} && chmod 755 bin/bonsai_runner && LD_LIBRARY_PATH={DEVICE_DIR}/bin "
               f"bin/bonsai_runner model {shlex.join(args)} --json {RESULT_FILE}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):  # the first run warms the page cache and is dropped
            _adb(adb, "shell", command)
            local = Path(tmp) / f"run{i}.json"
            _adb(adb, "pull", f"{DEVICE_DIR}/{RESULT_FILE}", str(local))
            if i:
                runs.append(json.loads(local.read_text()))
    return runs


def run_on_host(folder: Path, args: list[str], repeats: int) -> list[dict]:
    exe = native_dir() / RUNNER
    if not exe.is_file():
        raise BonsaiError(f"{exe}: missing; `pip install .` builds the host runner")
    runs = []
    for i in range(repeats + 1):
        result = subprocess.run([str(exe), str(folder), *args], capture_output=True, text=True, timeout=ADB_TIMEOUT_S)
        if result.returncode != 0:
            raise BonsaiError(f"host bonsai_runner failed: {result.stderr.strip()[-500:]}")
        if i:
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return runs


def device_bench(folder: Path, serial: str | None, runner_dir: Path, threads: list[int], prompt_tokens: int,
                 new_tokens: int, repeats: int) -> dict:
    """Medians of `repeats` runs per thread count on the device and on this host."""
    manifest = A.read_manifest(folder)
    if not (folder / A.PTE_FILE).is_file():
        raise BonsaiError(f"{folder}: no {A.PTE_FILE}; the device bench runs the .pte (export --format pte|all)")
    if prompt_tokens < 1 or new_tokens < 2:
        raise BonsaiError("--prompt-tokens must be >= 1 and --new-tokens >= 2")
    if prompt_tokens + new_tokens > manifest.model.max_seq_len:
        raise BonsaiError(f"--prompt-tokens + --new-tokens = {prompt_tokens + new_tokens} exceeds the artifact's "
                          f"max_seq_len {manifest.model.max_seq_len}")
    files = runner_files(runner_dir)  # checked before the device is touched
    adb = adb_command(serial)
    log.info("pushing %d runner files and the artifact to %s", len(files), DEVICE_DIR)
    push(adb, folder, runner_dir)
    report = {"artifact": str(folder), "serial": adb[-1],
              "device_model": _adb(adb, "shell", "getprop ro.product.model").strip(),
              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "rows": []}
    for t in threads:
        args = runner_args(prompt_tokens, new_tokens, t)
        log.info("device run, %d thread(s)", t)
        device = run_on_device(adb, args, repeats)
        host = run_on_host(folder, args, repeats)
        report["rows"].append({"threads": t, "device": medians(device), "host": medians(host),
                               "device_runs": device, "host_runs": host})
    return report


def markdown(report: dict) -> str:
    lines = [f"# Device benchmark of `{report['artifact']}`", "",
             f"bonsai_runner on {report['device_model'] or report['serial']} and on this host: prompt "
             f"{report['prompt_tokens']} tokens, {report['new_tokens']} new tokens, medians of {report['repeats']} "
             "runs.", "", "| threads | figure | device | this host |", "|---|---|---|---|"]
    for row in report["rows"]:
        lines += [f"| {row['threads']} | {m} | {row['device'][m]:.4g} | {row['host'][m]:.4g} |" for m in METRICS]
    return "\n".join(lines) + "\n"
