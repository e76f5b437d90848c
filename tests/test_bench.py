"""`bonsai-export bench` on the host: the report a person reads (Markdown headers and numbers, the chart), and the
peers beside our artifact (llama.cpp when llama_cpp imports, one skip line when it does not)."""

import importlib.util
import json
import re
import sys

import pytest

from bonsai_export import artifact as A
from bonsai_export import bench
from bonsai_export.bench_report import chart, markdown, number
from bonsai_export.cli import main
from bonsai_export.export import export

EXPONENT = re.compile(r"\d[eE][+-]?\d")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(label, threads, scale):
    return {"label": label, "threads": threads, "prefill_64_tps": 6770.123 * scale, "prefill_128_tps": 250.4 * scale,
            "prefill_512_tps": 96.04 * scale, "ttft_s": 0.00871 / scale, "decode_tps": 38.72 * scale,
            "roofline_share": 0.4231, "roofline_kv_share": 0.4712, "load_s": 0.1234, "peak_rss_mb": 1234.5,
            "peak_rss_over_baseline_mb": 59.2,
            "greedy_ids": [5, 6, 7, 8], "own_prompt_ids": [1, 2, 3]}


def _results():
    runs = [_run(label, t, t * s) for t in (1, 2) for label, s in (("pte", 1.0), (bench.P.LLAMA_CPP, 1.25))]
    results = {"artifact": "out/bonsai", "checkpoint": "ckpt/bonsai-500m", "threads": [1, 2], "repeats": 5,
               "decode_tokens": 128, "environment": {"cpu": "AMD EPYC", "cores": 2, "isa": "avx2", "machine": "x86_64"},
               "artifact_bytes": 262_144_000, "bits_per_ternary_weight": 2.0208, "bytes_per_decoded_token": 203e6,
               "read_bandwidth_gbs_1t": 12.34, "read_bandwidth_gbs_2t": 17.01, "runs": runs,
               "groups": {"pte": "ours", bench.P.LLAMA_CPP: "peer"},
               "gguf": {"file": "/cache/gguf-x/model.gguf", "bytes_per_token": 150e6,
                        "tensor_types": {"ternary layers": "TQ2_0", "head": "F16"}},
               "greedy": {"prompt": "Once upon a time", "prompt_ids": [1, 2, 3], "tokens": 4}}
    results["vs_llama_cpp"] = bench.ratios(results)
    results["greedy"]["agreement"] = bench.agreement(results)
    return results


@pytest.mark.parametrize("value, text", [(6770.123, "6,770"), (38.72, "38.7"), (164.4, "164"), (5.678, "5.68"),
                                         (0.0123, "0.01"), (0.000123, "0.0001"), (0, "0.00"), (1234567.0, "1,234,567")])
def test_numbers_are_written_for_people(value, text):
    assert number(value) == text


def test_markdown_has_units_and_readable_numbers(tmp_path):
    results = _results()
    text = markdown(results)
    assert not EXPONENT.search(text), text
    for header in ("| backend | side | threads |", "prefill 128 (tokens/s)", "TTFT, 128-token prompt (ms)",
                   "decode (tokens/s)", "of bandwidth roofline", "of roofline, weights + KV cache", "load (ms)",
                   "peak RSS (MB)", "RSS added (MB)"):
        assert header in text
    row = "| pte | ours | 1 | 6,770 | 250 | 96.0 | 8.71 | 38.7 | 42% | 47% | 123 | 1,234 | 59.2 |"
    assert row + "\n| pte | ours | 2 |" in text
    assert "AMD EPYC" in text and "ckpt/bonsai-500m" in text and "threads 1, 2" in text
    # ours / llama.cpp: llama.cpp is 1.25x faster in every figure here
    assert "| pte | 1 | 0.80x | 0.80x | 0.80x | 0.80x |" in text and "TQ2_0" in text
    assert "| pte | 4 / 4 | 4 |" in text and "same prompt ids" in text

    assert "after a 16-token prompt (the C++ runner: a 128-token prompt)" in text and "float32 caches in our" in text
    results.update(decode_prompts={"python": 8, "runner": 64}, options={"kv_cache": "f16"})
    assert "after a 8-token prompt (the C++ runner: a 64-token prompt)" in markdown(results)
    assert "float16 caches in our artifact" in markdown(results)

    png = tmp_path / "bench.png"
    chart(results, png)
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    """trained-small (every ternary matrix's K a multiple of 256, as llama.cpp's TQ2_0 needs) as a .pte."""
    from bonsai_export.synthetic import make_checkpoint

    root = tmp_path_factory.mktemp("bench")
    ckpt = make_checkpoint("trained-small", root / "ckpt", seed=0, progress=False)
    export(ckpt, root / "art", A.ExportConfig(format="pte", max_seq_len=320))
    return root / "art"


@pytest.fixture(scope="module")
def peer_cache(tmp_path_factory):
    """The peers' exports (stock .onnx, GGUF), made once for this module's benches."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture
def short_bench(monkeypatch, tmp_path, peer_cache):
    """Fewer and shorter runs than a real bench; a private cache for the peers' exports."""
    monkeypatch.setattr(bench, "PREFILL_LENGTHS", (32,))
    monkeypatch.setattr(bench, "DECODE_TOKENS", 16)
    monkeypatch.setenv("BONSAI_EXPORT_CACHE", str(peer_cache))
    return ["--threads", "1", "--repeats", "1", "--no-baselines", "--report", str(tmp_path / "report")]


def test_bench_without_llama_cpp_says_it_skipped_the_peer(small_artifact, short_bench, monkeypatch, tmp_path,
                                                          capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    assert main(["bench", str(small_artifact), *short_bench]) == 0
    out, err = capsys.readouterr()
    skipped = [line for line in err.splitlines() if "llama.cpp peer skipped" in line]
    assert len(skipped) == 1 and "pip install '.[peers]'" in skipped[0] and "Traceback" not in err
    results = json.loads((tmp_path / "report.json").read_text())
    labels = {r["label"] for r in results["runs"]}
    assert bench.P.LLAMA_CPP not in labels and {"pte", bench.P.STOCK} <= labels
    assert results["vs_llama_cpp"] == [] and not EXPONENT.search(out)
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG_MAGIC
    # The KV cache a decode step reads: float32 K and V of every layer, at the worker's mean context
    model = A.read_manifest(small_artifact).model
    per_position = model.n_layers * 2 * model.n_kv_heads * model.head_dim * 4
    for r in results["runs"]:
        prompt = 128 if r["label"] == "pte (C++ runner)" else 16
        assert r["decode_positions"] == prompt + (16 - 1) / 2 + 1  # short_bench: 16 decode steps
        assert r["kv_bytes_per_token"] == per_position * r["decode_positions"]
        bytes_read = results["bytes_per_decoded_token"] if r["label"] != bench.P.STOCK else None
        if bytes_read:
            bandwidth = results[f"read_bandwidth_gbs_{r['threads']}t"] * 1e9
            want = r["decode_tps"] * (bytes_read + r["kv_bytes_per_token"]) / bandwidth
            assert r["roofline_kv_share"] == pytest.approx(want) and r["roofline_kv_share"] > r["roofline_share"]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp (llama-cpp-python) is not installed: pip install '.[peers]'")
@pytest.mark.skipif("gguf" not in A.ARTIFACT_FORMATS, reason="no `export --format gguf` in this tree yet")
def test_bench_measures_llama_cpp_beside_ours(small_artifact, short_bench, tmp_path):
    assert main(["--quiet", "bench", str(small_artifact), *short_bench]) == 0
    results = json.loads((tmp_path / "report.json").read_text())
    peer = [r for r in results["runs"] if r["label"] == bench.P.LLAMA_CPP]
    assert len(peer) == 1
    for key in ("prefill_32_tps", "ttft_s", "decode_tps", "load_s", "peak_rss_mb", "roofline_share"):
        assert peer[0][key] > 0, key
    assert len(peer[0]["greedy_ids"]) == bench.GREEDY_TOKENS
    ratios = {r["label"]: r for r in results["vs_llama_cpp"]}
    assert set(ratios) >= {"pte"} and all(r["decode_tps"] > 0 and r["prefill_32_tps"] > 0 for r in ratios.values())
    agreement = {r["label"]: r for r in results["greedy"]["agreement"]}
    assert agreement["pte"]["n"] == bench.GREEDY_TOKENS
    text = (tmp_path / "report.md").read_text()
    assert "Ours / llama.cpp" in text and "Greedy tokens against llama.cpp" in text and not EXPONENT.search(text)
