"""The report of `bonsai-export bench` that a person reads: a Markdown table and a bar chart of bench.py's results.

Numbers are written as people write them (6,770 tokens/s, 38.7, 0.42), never in exponent form; every column and
axis names its unit.
"""

from __future__ import annotations

from pathlib import Path

# (results key, column header, scale to the unit of the header, format: "n" number, "%" share; "x" is for ratios),
# after one prefill column per prompt length
COLUMNS = (
    ("ttft_s", "TTFT, 128-token prompt (ms)", 1e3, "n"),
    ("decode_tps", "decode (tokens/s)", 1, "n"),
    ("roofline_share", "of bandwidth roofline", 1, "%"),
    ("roofline_kv_share", "of roofline, weights + KV cache", 1, "%"),
    ("load_s", "load (ms)", 1e3, "n"),
    ("peak_rss_mb", "peak RSS (MB)", 1, "n"),
    ("rss_added_mb", "RSS added (MB)", 1, "n"),
)
GROUP_COLORS = {"ours": "tab:green", "peer": "tab:orange", "baseline": "tab:gray"}


def number(value: float) -> str:
    """38.7, 164, 6,770, 0.42: three significant digits at most below 1000, thousands separated above."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.01 or size == 0:
        return f"{value:.2f}"
    return f"{value:.4f}"


def cell(value, kind: str, scale: float = 1) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if kind == "%":
        return f"{value * 100:.0f}%"
    if kind == "x":
        return f"{value:.2f}x"
    return number(value * scale)


def _rss_added(run: dict):
    """Python workers: over the process after its imports; the C++ runner: over the .pte's size."""
    return run.get("peak_rss_over_baseline_mb", run.get("peak_rss_over_artifact_mb"))


def _repeats(n) -> str:
    return f"Medians of {n} runs" if n != 1 else "One run"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _side(results: dict, label: str) -> str:
    """ours, peer or baseline."""
    return results.get("groups", {}).get(label, "-")


def _heading(results: dict) -> list[str]:
    env = results["environment"]
    bw = ", ".join(f"{_threads(int(k.split('_')[-1].removesuffix('t')))} {v:.1f} GB/s"
                   for k, v in results.items() if k.startswith("read_bandwidth"))
    threads = ", ".join(map(str, results.get("threads", sorted({r["threads"] for r in results["runs"]}))))
    lines = [f"# Benchmark of `{results['artifact']}`", "",
             f"Checkpoint `{results.get('checkpoint', '?')}`. CPU: {env['cpu'] or env['machine']} ({env['cores']} "
             f"cores, our kernels: {env['isa']}); threads {threads}. Artifact {number(results['artifact_bytes'] / 1e6)}"
             f" MB, ternary {results['bits_per_ternary_weight']:.3f} bits/weight, "
             f"{number(results['bytes_per_decoded_token'] / 1e6)} MB of weights read per decoded token. Memory "
             f"read bandwidth (same run): {bw}.", ""]
    if results.get("repeats"):
        prompts = results.get("decode_prompts", {"python": 16, "runner": 128})  # reports of older runs lack them
        cache = "float16" if results.get("options", {}).get("kv_cache") == "f16" else "float32"
        lines += [f"{_repeats(results['repeats'])} after a warm-up; decode: {results.get('decode_tokens')} "
                  f"greedy tokens after a {prompts['python']}-token prompt (the C++ runner: a "
                  f"{prompts['runner']}-token prompt). Prefill: one prompt of that many tokens. Bandwidth roofline: "
                  f"bandwidth / bytes read per decoded token, of the weights alone, or with the KV cache positions "
                  f"those decode steps read on average ({cache} caches in our artifact, float32 in the stock "
                  f".onnx, float16 in llama.cpp). RSS added: a Python worker's peak over its resident size after "
                  f"imports; the C++ runner's over the .pte's size.", ""]
    return lines


def _peer_section(results: dict) -> list[str]:
    gguf, rows = results.get("gguf"), results.get("vs_llama_cpp") or []
    if not rows:
        return []
    types = "; ".join(f"{role} {t}" for role, t in gguf["tensor_types"].items()) if gguf else ""
    lines = ["## Ours / llama.cpp (same run, same thread count; above 1: ours is faster)", "",
             f"llama.cpp on `{Path(gguf['file']).name}` ({types}; {number(gguf['bytes_per_token'] / 1e6)} MB read per "
             f"decoded token), through llama-cpp-python's `llama_decode`, timed by the same worker as our Python "
             f"runners.", ""] if gguf else []
    if gguf and gguf.get("caveat"):
        lines += [f"The peer's file is {gguf['caveat']}", ""]
    columns = [("decode_tps", "decode")] + [(f"prefill_{n}_tps", f"prefill {n}")
                                            for n in results.get("prefill_lengths", (64, 128, 512))]
    body = [[r["label"], str(r["threads"]), *(cell(r.get(k), "x") for k, _ in columns)] for r in rows]
    return lines + _table(["backend", "threads", *(f"{h} (ratio)" for _, h in columns)], body) + [""]


def _agreement_section(results: dict) -> list[str]:
    greedy = results.get("greedy") or {}
    rows = greedy.get("agreement") or []
    if not rows:
        return []
    own = greedy.get("llama_cpp_prompt_ids")
    tok = ("llama.cpp's tokenizer gives the same prompt ids" if own == greedy["prompt_ids"]
           else f"llama.cpp's tokenizer gives other prompt ids ({own}); ours were used")
    lines = ["## Greedy tokens against llama.cpp", "",
             f"Prompt \"{greedy['prompt']}\" ({len(greedy['prompt_ids'])} ids {greedy['prompt_ids']}; {tok}), "
             f"{greedy['tokens']} greedy tokens from the same ids, {_threads(results['threads'][0])}.", ""]
    body = [[r["label"], f"{r['equal']} / {r['n']}", str(r["common_prefix"])] for r in rows]
    return lines + _table(["backend", "tokens equal to llama.cpp's", "equal from the start"], body) + [""]


def markdown(results: dict) -> str:
    columns = [(f"prefill_{n}_tps", f"prefill {n} (tokens/s)", 1, "n")
               for n in results.get("prefill_lengths", (64, 128, 512))] + list(COLUMNS)
    rows, order = [], {label: i for i, label in reversed(list(enumerate(r["label"] for r in results["runs"])))}
    for r in sorted(results["runs"], key=lambda r: (order[r["label"]], r["threads"])):  # a backend's rows together
        values = {**r, "rss_added_mb": _rss_added(r)}
        rows.append([r["label"], _side(results, r["label"]), str(r["threads"]),
                     *(cell(values.get(key), kind, scale) for key, _, scale, kind in columns)])
    lines = _heading(results) + _table(["backend", "side", "threads", *(h for _, h, _, _ in columns)], rows) + [""]
    lines += _peer_section(results) + _agreement_section(results)
    return "\n".join(lines)


PANELS = (("decode_tps", "decode", "tokens/s", 1), ("prefill_128_tps", "prefill, 128-token prompt", "tokens/s", 1),
          ("ttft_s", "time to first token (128-token prompt)", "ms", 1e3), ("peak_rss_mb", "peak RSS", "MB", 1))


def chart(results: dict, path: Path) -> None:
    """One panel per figure (decode, prefill, TTFT, peak RSS): bars per backend, one colour shade per thread
    count, the value on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    runs, env = results["runs"], results["environment"]
    labels = list(dict.fromkeys(r["label"] for r in runs))
    threads = sorted({r["threads"] for r in runs})
    width = 0.8 / len(threads)
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 1.5 * len(labels) * len(threads)), 8))
    for ax, (key, title, unit, scale) in zip(axes.flat, PANELS):
        for j, t in enumerate(threads):
            by_label = {r["label"]: r for r in runs if r["threads"] == t}
            xs = [i + (j - (len(threads) - 1) / 2) * width for i in range(len(labels))]
            values = [by_label.get(lb, {}).get(key) or 0 for lb in labels]
            colors = [to_rgba(GROUP_COLORS.get(results.get("groups", {}).get(lb), "tab:blue"),
                              1.0 - 0.45 * j / max(1, len(threads) - 1)) for lb in labels]
            bars = ax.bar(xs, [v * scale for v in values], width, color=colors, edgecolor="black", linewidth=0.4,
                          label=f"{t} thread{'s' if t > 1 else ''}")
            ax.bar_label(bars, labels=[number(v * scale) if v else "" for v in values], fontsize=7, padding=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xticks(range(len(labels)), [lb.replace(" (", "\n(") for lb in labels], fontsize=7)
        ax.margins(y=0.15)
        ax.legend(fontsize=7)
    checkpoint = Path(str(results.get("checkpoint", results["artifact"]))).name
    fig.suptitle(f"bonsai-export bench: {checkpoint} on {env['cpu'] or env['machine']} ({env['cores']} cores), "
                 f"{', '.join(map(str, threads))} threads\n green: ours, orange: peers, gray: baselines; "
                 f"{_repeats(results.get('repeats', '?')).lower()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
