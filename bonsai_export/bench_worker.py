"""One backend measured in a process of its own, so that load time and peak RSS are its own: the Python runners,
llama.cpp and the bf16 reference in a `python -m bonsai_export.bench_worker` process, the .pte through the C++
bonsai_runner in fresh runner processes. bench.py plans the runs and gathers what this module measures."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import artifact as A
from . import peers as P
from .baselines import BF16_EAGER, Bf16Reference
from .device_bench import FIRST_TOKEN
from .errors import BonsaiError
from .generate import greedy


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB. VmHWM, unlike getrusage's ru_maxrss, restarts at exec,
    so a worker does not inherit its parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) * 1e-9)
    return statistics.median(times)


def _open(spec: dict):
    if spec["kind"] == BF16_EAGER:
        return Bf16Reference(spec["path"], spec["max_seq_len"])
    if spec["kind"] == P.LLAMA_CPP:
        return P.LlamaCppRunner(Path(spec["path"]), spec["threads"], spec["max_seq_len"])
    from .runners import open_runner

    return open_runner(spec["path"], threads=spec["threads"], backend=spec.get("backend"))


def _import_runtime(spec: dict) -> None:
    if spec["kind"] == BF16_EAGER:
        import transformers  # noqa: F401
    elif spec["kind"] == P.LLAMA_CPP:
        import llama_cpp  # noqa: F401
    elif spec.get("backend") == "pte":
        from .runners import load_et_ops

        load_et_ops()
    else:
        import onnxruntime  # noqa: F401


# Prompt tokens before the timed decode: the Python workers' and the C++ runner's (bench_report's heading says so).
DECODE_PROMPT, RUNNER_DECODE_PROMPT = 16, 128


def decode_positions(prompt: int, steps: int) -> float:
    """Mean count of cache positions a decode step attends to: `steps` steps after a `prompt`-token prefill, the
    step at position p reading positions 0..p."""
    return prompt + (steps - 1) / 2 + 1


def worker(spec: dict) -> dict:
    """Measure one backend in this process; returns the figures (printed as JSON by --worker)."""
    torch.set_num_threads(spec["threads"])
    _import_runtime(spec)  # module imports are not load time
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    runner = _open(spec)
    load_s = time.perf_counter() - start
    repeats, out = spec["repeats"], {}

    def prefill(n):
        runner.reset()
        return runner(torch.arange(FIRST_TOKEN, FIRST_TOKEN + n)[None], torch.tensor([0]))

    for n in spec["prefill_lengths"]:
        if n < runner.max_seq_len:
            out[f"prefill_{n}_tps"] = n / _median_s(lambda: prefill(n), repeats)
    out["ttft_s"] = _median_s(lambda: int(prefill(128)[0, -1].argmax()), repeats)

    def decode():
        logits = prefill(DECODE_PROMPT)
        for pos in range(DECODE_PROMPT, DECODE_PROMPT + spec["decode_tokens"]):
            logits = runner(logits[:, -1:].argmax(-1), torch.tensor([pos]))

    out["decode_tps"] = spec["decode_tokens"] / _median_s(decode, repeats)
    out["decode_positions"] = decode_positions(DECODE_PROMPT, spec["decode_tokens"])
    peak = _status_mb("VmHWM")
    out["greedy_ids"] = greedy(runner, spec["greedy_prompt_ids"], spec["greedy_tokens"])
    if hasattr(runner, "tokenize"):
        out["own_prompt_ids"] = runner.tokenize(spec["greedy_prompt"])
    return {**out, "load_s": load_s, "peak_rss_mb": peak, "peak_rss_over_baseline_mb": peak - baseline}


def runner_worker(spec: dict) -> dict:
    """The .pte through the C++ bonsai_runner (no Python in the process: the footprint a phone app would have).
    Every run is a fresh process, so each figure includes nothing of the others."""
    from .device_bench import run_on_host, runner_args

    folder, threads, repeats, out = Path(spec["path"]), spec["threads"], spec["repeats"], {}
    for n in spec["prefill_lengths"]:
        if n + 2 <= spec["max_seq_len"]:
            runs = run_on_host(folder, runner_args(n, 2, threads), repeats)
            out[f"prefill_{n}_tps"] = statistics.median(r["prefill_tps"] for r in runs)
    runs = run_on_host(folder, runner_args(RUNNER_DECODE_PROMPT, spec["decode_tokens"] + 1, threads), repeats)
    peak = max(r["peak_rss_mib"] for r in runs)
    ids = ",".join(map(str, spec["greedy_prompt_ids"]))
    greedy_run = run_on_host(folder, ["--tokens", ids, "--max-new-tokens", str(spec["greedy_tokens"]),
                                      "--threads", str(threads)], 1)[0]
    return {**out, "greedy_ids": greedy_run["generated_ids"], "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "decode_tps": statistics.median(r["decode_tps"] for r in runs),
            "decode_positions": decode_positions(RUNNER_DECODE_PROMPT, spec["decode_tokens"]),
            "load_s": statistics.median(r["load_s"] for r in runs), "peak_rss_mb": peak,
            "peak_rss_over_artifact_mb": peak - (folder / A.PTE_FILE).stat().st_size / 2**20}


def run(spec: dict) -> dict:
    """One backend's figures: the C++ runner's runs from here, anything else in a fresh worker process."""
    if spec["kind"] == "pte-runner":
        return runner_worker(spec)
    # The worker must import this very package, not a bonsai_export folder in the working directory.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "bonsai_export.bench_worker", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=tempfile.gettempdir())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise BonsaiError(f"bench worker for {spec['label']} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bonsai_export.bench_worker")
    parser.add_argument("--worker", required=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    print(json.dumps(worker(json.loads(args.worker))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
