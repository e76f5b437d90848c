"""`bonsai-export bench`: what an artifact costs, side by side with the conventional ways to run the model.

This module plans the runs and derives the comparisons; each measurement runs in a fresh worker process
(bench_worker.py, so load time and peak RSS are its own): prefill tokens/s at
several prompt lengths, time to first token, decode tokens/s over 128 tokens, load time, peak RSS; medians of
repeated runs, for 1 and 2 threads. In the same run: the machine's memory read bandwidth and each artifact's share
of its bandwidth roofline (bytes read per decoded token / bandwidth: the weights alone, and the weights with the
KV cache positions each decode step reads at that run's context); the peers (peers.py: llama.cpp on the GGUF
of the same checkpoint, ONNX Runtime's stock MatMulNBits), with our / llama.cpp ratios and how far llama.cpp's
greedy tokens agree with ours; the baselines: the eager PyTorch bf16 reference (transformers' Llama with the
ternary scales folded in, as people run Bonsai today) and an ExecuTorch XNNPACK 8da4w export of the same folded
model (the conventional ExecuTorch choice; baselines.py). The report itself (Markdown, chart) is bench_report.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import artifact as A
from . import bench_worker
from . import peers as P
from .baselines import baseline_specs
from .errors import BonsaiError

log = logging.getLogger(__name__)

PREFILL_LENGTHS = (64, 128, 512)
DECODE_TOKENS = 128
GREEDY_PROMPT = "Once upon a time"  # greedy tokens of every backend from this prompt are compared with llama.cpp's
GREEDY_TOKENS = 16
# Bytes of one cached K or V value: our artifacts' per their --kv-cache, ONNX Runtime's stock export float32,
# llama.cpp float16 (its default cache type).
CACHE_BYTES = {"f32": 4, "f16": 2}


def kv_bytes_per_position(model: A.ModelShape, value_bytes: int) -> int:
    """KV cache bytes a decode step reads per attended position: K and V of every layer."""
    return model.n_layers * 2 * model.n_kv_heads * model.head_dim * value_bytes


def _specs(folder: Path, manifest: A.Manifest, args, base: dict) -> list[dict]:
    """Our artifact's backends (group "ours"), then the peers and the baselines the options ask for."""
    from .native import RUNNER, native_dir

    specs = []
    for kind in (k for k in manifest.kinds if k in A.RUNNABLE):  # a GGUF in the folder is the llama.cpp peer's
        label = kind if kind == "pte" else f"onnx-{manifest.options.ternary_op}"
        specs.append({**base, "label": label, "group": "ours", "kind": "artifact", "path": str(folder),
                      "backend": kind, "bytes_per_token": manifest.model.bytes_per_token,
                      "kv_bytes_per_position": kv_bytes_per_position(manifest.model,
                                                                      CACHE_BYTES[manifest.options.kv_cache])})
        if kind == "pte" and (native_dir() / RUNNER).is_file():
            specs.append({**specs[-1], "label": "pte (C++ runner)", "kind": "pte-runner"})
    if getattr(args, "peers", True):
        specs += _peer_specs(folder, manifest, base, {s["label"] for s in specs})
    if args.baselines:
        specs += baseline_specs(manifest.source.checkpoint, base)
    return specs


def _peer_specs(folder: Path, manifest: A.Manifest, base: dict, ours: set[str]) -> list[dict]:
    specs, source = [], manifest.source.checkpoint
    if P.STOCK not in ours:
        stock = P.stock_onnx(source, manifest.options)
        specs.append({**base, "label": P.STOCK, "group": "peer", "kind": "artifact", "path": str(stock),
                      "backend": "onnx", "bytes_per_token": A.read_manifest(stock).model.bytes_per_token,
                      "kv_bytes_per_position": kv_bytes_per_position(manifest.model, CACHE_BYTES["f32"])})
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
                     "bytes_per_token": gguf["bytes_per_token"], "gguf": gguf,
                     "kv_bytes_per_position": kv_bytes_per_position(manifest.model, CACHE_BYTES["f16"])}]


def run_bench(folder: Path, args) -> dict:
    from .bench_kernels import environment, read_bandwidth
    from .tokenizer import Tokenizer

    manifest = A.read_manifest(folder)
    prompt_ids = Tokenizer(folder).encode(GREEDY_PROMPT)
    base = {"repeats": args.repeats, "prefill_lengths": list(PREFILL_LENGTHS), "decode_tokens": DECODE_TOKENS,
            "max_seq_len": manifest.model.max_seq_len, "greedy_prompt": GREEDY_PROMPT,
            "greedy_prompt_ids": prompt_ids, "greedy_tokens": GREEDY_TOKENS}
    results = {"artifact": str(folder), "checkpoint": manifest.source.checkpoint,
               "environment": environment(), "options": manifest.options.to_dict(), "threads": list(args.threads),
               "repeats": args.repeats, "prefill_lengths": base["prefill_lengths"],
               "decode_tokens": DECODE_TOKENS, "artifact_bytes": manifest.total_bytes,
               "decode_prompts": {"python": bench_worker.DECODE_PROMPT, "runner": bench_worker.RUNNER_DECODE_PROMPT},
               "bits_per_ternary_weight": manifest.model.bits_per_ternary_weight,
               "bytes_per_decoded_token": manifest.model.bytes_per_token,
               "greedy": {"prompt": GREEDY_PROMPT, "prompt_ids": prompt_ids, "tokens": GREEDY_TOKENS}, "runs": []}
    specs = _specs(folder, manifest, args, base)
    results["groups"] = {s["label"]: s["group"] for s in specs}
    results["gguf"] = next((s["gguf"] for s in specs if "gguf" in s), None)
    for threads in args.threads:
        bandwidth = read_bandwidth(threads, megabytes=512, repeats=5)
        results[f"read_bandwidth_gbs_{threads}t"] = bandwidth
        results["runs"] += [_measure(spec, threads, bandwidth) for spec in specs]
    results["vs_llama_cpp"] = ratios(results)
    results["greedy"]["agreement"] = agreement(results)
    return results


def _measure(spec: dict, threads: int, bandwidth_gbs: float) -> dict:
    """One backend at one thread count, in its worker; with its share of the bandwidth roofline when its bytes
    per decoded token are known: of the weights alone, and of the weights and the KV cache its decode steps read
    (decode_positions: the mean count of cache positions a step attends to in that worker's decode)."""
    log.info("bench %s, %d thread(s)", spec["label"], threads)
    r = {"label": spec["label"], "threads": threads, **bench_worker.run({**spec, "threads": threads})}
    if "bytes_per_token" in spec:
        roofline = bandwidth_gbs * 1e9 / spec["bytes_per_token"]
        r.update(roofline_tps=roofline, roofline_share=r["decode_tps"] / roofline)
        if "kv_bytes_per_position" in spec and "decode_positions" in r:
            kv = spec["kv_bytes_per_position"] * r["decode_positions"]
            r.update(kv_bytes_per_token=kv,
                     roofline_kv_share=r["decode_tps"] * (spec["bytes_per_token"] + kv) / (bandwidth_gbs * 1e9))
    return r


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
