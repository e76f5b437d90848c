"""`bonsai-export bench`: what an artifact costs, side by side with the conventional ways to run the model.

Every measurement runs in a fresh worker process (so load time and peak RSS are its own): prefill tokens/s at
several prompt lengths, time to first token, decode tokens/s over 128 tokens, load time, peak RSS; medians of
repeated runs, for 1 and 2 threads. In the same run: the machine's memory read bandwidth and each artifact's share
of its bandwidth roofline (bytes read per decoded token / bandwidth); the peers (peers.py: llama.cpp on the GGUF
of the same checkpoint, ONNX Runtime's stock MatMulNBits), with our / llama.cpp ratios and how far llama.cpp's
greedy tokens agree with ours; the baselines: the eager PyTorch bf16 reference (transformers' Llama with the
ternary scales folded in, as people run Bonsai today) and an ExecuTorch XNNPACK 8da4w export of the same folded
model (the conventional ExecuTorch choice). The report itself (Markdown, chart) is bench_report.py.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from .bench_report import chart, markdown  # noqa: F401  (the CLI's entry points)
from .device_bench import FIRST_TOKEN
from .errors import BonsaiError
from .generate import SamplingConfig, generate

log = logging.getLogger(__name__)

PREFILL_LENGTHS = (64, 128, 512)
DECODE_TOKENS = 128
GREEDY_PROMPT = "Once upon a time"  # greedy tokens of every backend from this prompt are compared with llama.cpp's
GREEDY_TOKENS = 16


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
    if spec["kind"] == "bf16-eager":
        return Bf16Reference(spec["path"], spec["max_seq_len"])
    if spec["kind"] == P.LLAMA_CPP:
        return P.LlamaCppRunner(Path(spec["path"]), spec["threads"], spec["max_seq_len"])
    from .runners import open_runner

    return open_runner(spec["path"], threads=spec["threads"], backend=spec.get("backend"))


class Bf16Reference:
    """transformers' LlamaForCausalLM in bf16 with T * scales folded into dense weights, with its KV cache."""

    name = "bf16-eager"

    def __init__(self, source: str, max_seq_len: int):
        from transformers import DynamicCache

        from . import checkpoint
        from .reference import folded_llama

        self.model = folded_llama(checkpoint.load(source, progress=False), torch.bfloat16)
        self.cache_cls = DynamicCache
        self.max_seq_len, self.cache = max_seq_len, None

    def reset(self):
        self.cache = self.cache_cls()

    def __call__(self, tokens, input_pos):
        if int(input_pos[0]) == 0:
            self.reset()
        with torch.no_grad():
            out = self.model(tokens, past_key_values=self.cache, use_cache=True)
        return out.logits.float()


def _import_runtime(spec: dict) -> None:
    if spec["kind"] == "bf16-eager":
        import transformers  # noqa: F401
    elif spec["kind"] == P.LLAMA_CPP:
        import llama_cpp  # noqa: F401
    elif spec.get("backend") == "pte":
        from .runners import load_et_ops

        load_et_ops()
    else:
        import onnxruntime  # noqa: F401


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
        logits = prefill(16)
        for pos in range(16, 16 + spec["decode_tokens"]):
            logits = runner(logits[:, -1:].argmax(-1), torch.tensor([pos]))

    out["decode_tps"] = spec["decode_tokens"] / _median_s(decode, repeats)
    peak = _status_mb("VmHWM")
    out["greedy_ids"] = greedy(runner, spec["greedy_prompt_ids"], spec["greedy_tokens"])
    if hasattr(runner, "tokenize"):
        out["own_prompt_ids"] = runner.tokenize(GREEDY_PROMPT)
    return {**out, "load_s": load_s, "peak_rss_mb": peak, "peak_rss_over_baseline_mb": peak - baseline}


def greedy(runner, prompt_ids: list[int], n: int) -> list[int]:
    """n greedy (argmax) tokens after the prompt, EOS included: generate's loop on a fresh cache."""
    runner.reset()
    return generate(runner, prompt_ids, SamplingConfig(max_new_tokens=n), eos_ids=(),
                    max_seq_len=runner.max_seq_len).tokens


def runner_worker(spec: dict) -> dict:
    """The .pte through the C++ bonsai_runner (no Python in the process: the footprint a phone app would have).
    Every run is a fresh process, so each figure includes nothing of the others."""
    from .device_bench import run_on_host, runner_args

    folder, threads, repeats, out = Path(spec["path"]), spec["threads"], spec["repeats"], {}
    for n in spec["prefill_lengths"]:
        if n + 2 <= spec["max_seq_len"]:
            runs = run_on_host(folder, runner_args(n, 2, threads), repeats)
            out[f"prefill_{n}_tps"] = statistics.median(r["prefill_tps"] for r in runs)
    runs = run_on_host(folder, runner_args(128, spec["decode_tokens"] + 1, threads), repeats)
    peak = max(r["peak_rss_mib"] for r in runs)
    ids = ",".join(map(str, spec["greedy_prompt_ids"]))
    greedy_run = run_on_host(folder, ["--tokens", ids, "--max-new-tokens", str(spec["greedy_tokens"]),
                                      "--threads", str(threads)], 1)[0]
    return {**out, "greedy_ids": greedy_run["generated_ids"], "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "decode_tps": statistics.median(r["decode_tps"] for r in runs),
            "load_s": statistics.median(r["load_s"] for r in runs), "peak_rss_mb": peak,
            "peak_rss_over_artifact_mb": peak - (folder / A.PTE_FILE).stat().st_size / 2**20}


def _run_worker(spec: dict) -> dict:
    if spec["kind"] == "pte-runner":
        return runner_worker(spec)
    # The worker must import this very package, not a bonsai_export folder in the working directory.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "bonsai_export.bench", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=tempfile.gettempdir())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise BonsaiError(f"bench worker for {spec['label']} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def export_8da4w(source: str, max_seq_len: int, out: Path) -> Path:
    """The same model with T * scales folded into plain linears, quantized the conventional ExecuTorch way
    (int8 dynamic activations, int4 weights in groups of 32, XNNPACK) and written as an artifact folder."""
    if (out / A.MANIFEST).is_file():
        return out
    from torch import nn
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from . import checkpoint, formats
    from .export import model_shape
    from .export.executorch import to_pte
    from .export.staging import commit, prepare_out
    from .model import TernaryLinear, from_checkpoint
    from .tokenizer import write_canonical

    ckpt = checkpoint.load(source, progress=False)
    model = from_checkpoint(ckpt, max_seq_len=max_seq_len)
    shape = model_shape(ckpt, model, note="XNNPACK 8da4w baseline")  # what the runners check, no ternary figures
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):  # the same fused projections as ours, scales folded in
            dense = nn.Linear(module.in_features, module.out_features, bias=False)
            values = torch.from_numpy(formats.unpack(module.packed.numpy(), module.in_features))
            dense.weight.data = values.float() * module.scales[:, None]
            model.get_submodule(name.rsplit(".", 1)[0]).register_module(name.rsplit(".", 1)[1], dense)
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
    tmp = prepare_out(out, force=True, source=checkpoint.root_of(ckpt.folder))
    options = A.ExportConfig(max_seq_len=max_seq_len)  # the defaults: our options do not describe this program
    (tmp / A.PTE_FILE).write_bytes(to_pte(model, options))
    settings = write_canonical(ckpt.folder, tmp)
    A.write_manifest(tmp, A.Manifest(artifacts=(A.ArtifactEntry(type="pte", file=A.PTE_FILE),), options=options,
                                     model=shape, source=A.Source(checkpoint=source), tokenizer=settings.to_dict()))
    commit(tmp, out, force=True)
    return out


def _specs(folder: Path, manifest: A.Manifest, args, base: dict) -> list[dict]:
    """Our artifact's backends (group "ours"), then the peers and the baselines the options ask for."""
    from .native import RUNNER, native_dir

    specs = []
    for kind in (k for k in manifest.kinds if k in A.RUNNABLE):  # a GGUF in the folder is the llama.cpp peer's
        label = kind if kind == "pte" else f"onnx-{manifest.options.ternary_op}"
        specs.append({**base, "label": label, "group": "ours", "kind": "artifact", "path": str(folder),
                      "backend": kind, "bytes_per_token": manifest.model.bytes_per_token})
        if kind == "pte" and (native_dir() / RUNNER).is_file():
            specs.append({**specs[-1], "label": "pte (C++ runner)", "kind": "pte-runner"})
    if getattr(args, "peers", True):
        specs += _peer_specs(folder, manifest, base, {s["label"] for s in specs})
    if args.baselines:
        specs += _baseline_specs(manifest.source.checkpoint, base)
    return specs


def _peer_specs(folder: Path, manifest: A.Manifest, base: dict, ours: set[str]) -> list[dict]:
    specs, source = [], manifest.source.checkpoint
    if P.STOCK not in ours:
        stock = P.stock_onnx(source, manifest.options)
        specs.append({**base, "label": P.STOCK, "group": "peer", "kind": "artifact", "path": str(stock),
                      "backend": "onnx", "bytes_per_token": A.read_manifest(stock).model.bytes_per_token})
    missing = P.llama_cpp_missing()
    if missing is not None:
        log.warning("bench: llama.cpp peer skipped: llama_cpp is not importable (%s); install it with %s",
                    missing, P.INSTALL_HINT)
        return specs
    try:
        gguf = P.gguf_summary(P.gguf_file(folder, manifest))
    except BonsaiError as exc:
        log.warning("bench: llama.cpp peer skipped: %s", exc)
        return specs
    return specs + [{**base, "label": P.LLAMA_CPP, "group": "peer", "kind": P.LLAMA_CPP, "path": gguf["file"],
                     "bytes_per_token": gguf["bytes_per_token"], "gguf": gguf}]


def _baseline_specs(source: str, base: dict) -> list[dict]:
    # rebuilt when the checkpoint, the length, this exporter or the model definition (its fused layout) changes
    out = P.cache_folder("8da4w", source, {"max_seq_len": base["max_seq_len"]}, code=("bench.py", "model.py"))
    return [{**base, "label": "bf16-eager", "group": "baseline", "kind": "bf16-eager", "path": source},
            {**base, "label": "pte-8da4w", "group": "baseline", "kind": "artifact", "backend": "pte",
             "path": str(export_8da4w(source, base["max_seq_len"], out))}]


def run_bench(folder: Path, args) -> dict:
    from .bench_kernels import environment, read_bandwidth
    from .tokenizer import Tokenizer

    manifest = A.read_manifest(folder)
    prompt_ids = Tokenizer(folder).encode(GREEDY_PROMPT)
    base = {"repeats": args.repeats, "prefill_lengths": list(PREFILL_LENGTHS), "decode_tokens": DECODE_TOKENS,
            "max_seq_len": manifest.model.max_seq_len, "greedy_prompt_ids": prompt_ids,
            "greedy_tokens": GREEDY_TOKENS}
    results = {"artifact": str(folder), "checkpoint": manifest.source.checkpoint,
               "environment": environment(), "options": manifest.options.to_dict(), "threads": list(args.threads),
               "repeats": args.repeats, "prefill_lengths": base["prefill_lengths"],
               "decode_tokens": DECODE_TOKENS, "artifact_bytes": manifest.total_bytes,
               "bits_per_ternary_weight": manifest.model.bits_per_ternary_weight,
               "bytes_per_decoded_token": manifest.model.bytes_per_token,
               "greedy": {"prompt": GREEDY_PROMPT, "prompt_ids": prompt_ids, "tokens": GREEDY_TOKENS}, "runs": []}
    specs = _specs(folder, manifest, args, base)
    results["groups"] = {s["label"]: s["group"] for s in specs}
    results["gguf"] = next((s["gguf"] for s in specs if "gguf" in s), None)
    for threads in args.threads:
        bandwidth = read_bandwidth(threads, megabytes=512, repeats=5)
        results[f"read_bandwidth_gbs_{threads}t"] = bandwidth
        for spec in specs:
            log.info("bench %s, %d thread(s)", spec["label"], threads)
            r = {"label": spec["label"], "threads": threads, **_run_worker({**spec, "threads": threads})}
            if "bytes_per_token" in spec:
                roofline = bandwidth * 1e9 / spec["bytes_per_token"]
                r.update(roofline_tps=roofline, roofline_share=r["decode_tps"] / roofline)
            results["runs"].append(r)
    results["vs_llama_cpp"] = ratios(results)
    results["greedy"]["agreement"] = agreement(results)
    return results


def ratios(results: dict) -> list[dict]:
    """Each of our backends over llama.cpp at the same thread count (above 1: ours is faster)."""
    peer = {r["threads"]: r for r in results["runs"] if r["label"] == P.LLAMA_CPP}
    keys = ("decode_tps", *(f"prefill_{n}_tps" for n in results.get("prefill_lengths", PREFILL_LENGTHS)))
    rows = []
    for r in results["runs"]:
        if results["groups"][r["label"]] != "ours" or r["threads"] not in peer:
            continue
        p = peer[r["threads"]]
        rows.append({"label": r["label"], "threads": r["threads"],
                     **{k: r[k] / p[k] for k in keys if r.get(k) and p.get(k)}})
    return rows


def agreement(results: dict) -> list[dict]:
    """How far llama.cpp's greedy tokens from the same prompt ids follow each other backend's (first thread count);
    and whether llama.cpp's own tokenizer gives our prompt ids."""
    first = results["threads"][0]
    runs = {r["label"]: r for r in results["runs"] if r["threads"] == first}
    if P.LLAMA_CPP not in runs:
        return []
    peer, rows = runs.pop(P.LLAMA_CPP), []
    for label, r in runs.items():
        same = [a == b for a, b in zip(r["greedy_ids"], peer["greedy_ids"])]
        rows.append({"label": label, "ids": r["greedy_ids"], "llama_cpp_ids": peer["greedy_ids"],
                     "equal": sum(same), "common_prefix": same.index(False) if False in same else len(same),
                     "n": len(same)})
    results["greedy"]["llama_cpp_prompt_ids"] = peer.get("own_prompt_ids")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bonsai_export.bench")
    parser.add_argument("--worker", required=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    print(json.dumps(worker(json.loads(args.worker))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
