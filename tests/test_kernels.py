"""Native packed-ternary kernels (bonsai_export.kernels) against the numpy reference (bonsai_export.formats).

Every kernel table this CPU supports runs the same suite: integer results must equal formats.py exactly, float
results (act_bits=0) agree within float rounding. Build the library first (`pip install .`, or cmake into build/
and set BONSAI_KERNELS_LIB=build/custom_ops).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonsai_export import formats
from bonsai_export import kernels as K

REPO = Path(__file__).resolve().parents[1]
FORMAT_HEADER = REPO / "custom_ops" / "core" / "include" / "bonsai" / "ternary_format.h"
ALL_ISAS = K.isa_names()  # the native registry, best first
TOKENS = (1, 2, 7, 64)  # decode, tiny batches, a prefill chunk
# act_bits=0 sums in float32 in a kernel-specific order: error bound relative to sum_k |x| * |scale|.
FLOAT_REL_TOL = 1e-5
EXAMPLES_PER_ISA = 60

SUPPORTED = [isa for isa in ALL_ISAS if K.isa_supported(isa)]


@pytest.fixture(params=SUPPORTED)
def isa(request):
    K.set_isa(request.param)
    yield request.param
    K.set_isa("auto")


def random_problem(seed: int, m: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    scales = rng.uniform(0.01, 2.0, size=n).astype(np.float32)
    return t, formats.pack(t), x, scales


def assert_float_close(y: np.ndarray, x: np.ndarray, t: np.ndarray, scales: np.ndarray) -> None:
    want = (x.astype(np.float64) @ t.T.astype(np.float64)) * scales
    bound = FLOAT_REL_TOL * (np.abs(x).astype(np.float64).sum(axis=1, keepdims=True) * np.abs(scales)) + 1e-30
    assert np.all(np.abs(y - want) <= bound), f"max error {np.abs(y - want).max()} above {bound.min()}"


def header_constants() -> dict[str, int]:
    """Evaluate the `constexpr int kName = expr;` lines of ternary_format.h (C++ integer arithmetic)."""
    values: dict[str, int] = {}
    for name, expr in re.findall(r"constexpr int (k\w+) = ([^;]+);", FORMAT_HEADER.read_text()):
        assert re.fullmatch(r"[\w\s*/+()-]+", expr), f"unexpected expression for {name}: {expr}"
        values[name] = int(eval(expr.replace("/", "//"), {"__builtins__": {}}, dict(values)))
    return values


def test_header_constants_match_formats():
    c = header_constants()
    assert c["kBlockK"] == formats.BLOCK_K
    assert c["kBlockBytes"] == formats.BLOCK_BYTES
    assert c["kLanes"] == formats.LANES
    assert c["kCodeOffset"] == formats.CODE_OFFSET
    assert c["kInt8QMax"] == formats.INT8_QMAX
    assert {c["kActBitsNone"], c["kActBitsInt8"]} == set(formats.ACT_MODES.values())
    assert {"channel": c["kScaleChannel"], "block": c["kScaleBlock"]} == formats.SCALE_LAYOUTS
    for k in (1, 127, 128, 129, 1536, 4096, 5000):
        assert K._load().bonsai_row_bytes(k) == formats.row_bytes(k)


def test_dense_group_matches_the_c_header():
    """One group size per language: formats.DENSE_GROUP and kernels.h's BONSAI_DENSE_GROUP."""
    header = (REPO / "custom_ops" / "core" / "include" / "bonsai" / "kernels.h").read_text()
    assert re.findall(r"#define BONSAI_DENSE_GROUP (\d+)", header) == [str(formats.DENSE_GROUP)]


def test_format_md_sections_named_in_the_code_exist():
    """Every `FORMAT.md, "Section"` or `FORMAT.md "Section"` that a source file points to starts a heading of
    docs/FORMAT.md (the dense formats are written down there like the ternary one)."""
    headings = [line.lstrip("#").strip() for line in (REPO / "docs" / "FORMAT.md").read_text().splitlines()
                if line.startswith("#")]
    sources = [*REPO.glob("custom_ops/**/*.[ch]*"), *REPO.glob("bonsai_export/**/*.py")]
    found = (m for path in sources for m in re.findall(r'FORMAT\.md,? "([^"]+)"', path.read_text(errors="ignore")))
    named = {" ".join(name.replace("//", " ").split()) for name in found}  # a name may wrap over comment lines
    assert "Dense weights" in named
    missing = sorted(name for name in named if not any(h.startswith(name) for h in headings))
    assert not missing, f"sections named in the code but not in docs/FORMAT.md: {missing}"


def test_isa_registry_names_every_table_best_first():
    """One registry (dispatch.cpp): the names documented for BONSAI_FORCE_ISA, best first, ref last."""
    assert ALL_ISAS == ("avx512", "avx2", "dotprod", "neon", "ref")


def test_auto_isa_is_best_supported():
    K.set_isa("auto")
    best = next(isa for isa in ALL_ISAS if isa in SUPPORTED)
    assert K.isa() == best
    assert "ref" in SUPPORTED


@settings(max_examples=EXAMPLES_PER_ISA, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.sampled_from(TOKENS),
    n=st.integers(1, 300),
    k=st.integers(1, 700),
    threads=st.sampled_from((1, 2)),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(isa, m, n, k, threads, seed):
    t, packed, x, scales = random_problem(seed, m, n, k)
    q, _ = formats.quantize_activations(x)
    np.testing.assert_array_equal(K.int8_accumulate(q, packed, k, threads=threads), formats.int8_accumulate(q, t))
    y8 = K.ternary_linear(x, packed, scales, k, act_bits=8, threads=threads)
    np.testing.assert_array_equal(y8, formats.matmul(x, packed, scales, k, act_bits=8))
    assert_float_close(K.ternary_linear(x, packed, scales, k, act_bits=0, threads=threads), x, t, scales)


def test_block_multiples_and_extremes(isa):
    """Bonsai's K, full +-1 rows (largest accumulators) and int8 extremes."""
    for m, n, k in [(1, 1536, 1536), (64, 96, 4096), (7, 33, 128)]:
        t, packed, x, scales = random_problem(m * n + k, m, n, k)
        t[0] = 1
        t[-1] = -1
        packed = formats.pack(t)
        q = np.full((m, k), 127, dtype=np.int8)
        q[-1] = -128
        np.testing.assert_array_equal(K.int8_accumulate(q, packed, k), formats.int8_accumulate(q, t))
        np.testing.assert_array_equal(K.ternary_linear(x, packed, scales, k, 8), formats.matmul(x, packed, scales, k, 8))


def test_quantization_ties_and_zero_rows(isa):
    """x * 127/amax lands exactly on .5 (round half to even) and an all-zero token gives q = 0, d = 0."""
    k = 300
    x = np.zeros((3, k), dtype=np.float32)
    x[0] = (np.arange(k) % 9 - 4.5).astype(np.float32)
    x[0, 0] = 127.0  # amax 127: inv = 1, so the .5 values are exact ties
    x[2] = np.linspace(-3, 3, k, dtype=np.float32)
    q, d = K.quantize_activations(x)
    q_ref, d_ref = formats.quantize_activations(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)
    assert not q[1].any() and d[1] == 0


def run_python(code: str, forced_isa: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter that imports the same bonsai_export as this one (not whatever package
    the working directory holds) with BONSAI_FORCE_ISA set."""
    pkg_parent = str(Path(K.__file__).resolve().parents[1])
    env = {**os.environ, K.ENV_FORCE_ISA: forced_isa, "PYTHONPATH": pkg_parent}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())


@pytest.mark.parametrize("forced", SUPPORTED)
def test_force_isa_env_selects_path(forced):
    """BONSAI_FORCE_ISA picks the table in a fresh process, and that table is exact."""
    code = (
        "import numpy as np; from bonsai_export import kernels as K, formats as F\n"
        "rng = np.random.default_rng(0); t = rng.integers(-1, 2, (37, 300), dtype=np.int8); p = F.pack(t)\n"
        "x = rng.standard_normal((7, 300)).astype(np.float32); s = np.ones(37, np.float32)\n"
        "assert np.array_equal(K.ternary_linear(x, p, s, 300, 8, threads=2), F.matmul(x, p, s, 300, 8))\n"
        "print(K.isa())"
    )
    out = run_python(code, forced)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == forced


@pytest.mark.parametrize("forced", ["sse9"] + [isa for isa in ALL_ISAS if isa not in SUPPORTED])
def test_force_isa_env_rejects_unusable(forced):
    code = (
        "import numpy as np; from bonsai_export import kernels as K, formats as F\n"
        "print(K.isa())\n"
        "try:\n"
        "    K.ternary_linear(np.ones((1, 4), np.float32), F.pack(np.ones((2, 4), np.int8)), np.ones(2, np.float32), 4, 8)\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    out = run_python(code, forced)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "unavailable"
    assert f"ISA '{forced}'" in out.stdout and "error:" in out.stdout


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown"):
        K.set_isa("sse9")


def _valid(m=2, n=3, k=130):
    t, packed, x, scales = random_problem(0, m, n, k)
    return x, packed, scales, k


BAD_ARGUMENTS = [  # (change to valid keyword arguments, expected message)
    (lambda a: {**a, "x": a["x"].astype(np.float64)}, "expected x float32"),
    (lambda a: {**a, "x": a["x"][0]}, "expected x float32 with 2 dims"),
    (lambda a: {**a, "x": a["x"][:, :-1]}, r"expected x float32 \[M>0, 130\]"),
    (lambda a: {**a, "x": a["x"][:0]}, r"expected x float32 \[M>0, 130\]"),
    (lambda a: {**a, "packed": a["packed"].view(np.int8)}, "expected packed uint8"),
    (lambda a: {**a, "packed": a["packed"][:, :32]}, r"expected packed uint8 \[N>0, 64\]"),
    (lambda a: {**a, "scales": a["scales"][:-1]}, r"expected scales float32 \[3\]"),
    (lambda a: {**a, "scales": a["scales"].astype(np.float16)}, "expected scales float32"),
    (lambda a: {**a, "k": 0}, "expected K > 0"),
    (lambda a: {**a, "act_bits": 4}, "expected act_bits"),
    (lambda a: {**a, "threads": 0}, "expected threads"),
]


def test_bad_argument_table_size():
    assert len(BAD_ARGUMENTS) == 11


@pytest.mark.parametrize("change, message", BAD_ARGUMENTS)
def test_binding_rejects_bad_arguments(change, message):
    x, packed, scales, k = _valid()
    args = change({"x": x, "packed": packed, "scales": scales, "k": k, "act_bits": 8, "threads": 1})
    with pytest.raises(ValueError, match=message):
        K.ternary_linear(**args)


def test_int8_accumulate_rejects_bad_arguments():
    x, packed, _, k = _valid()
    with pytest.raises(ValueError, match="expected q int8"):
        K.int8_accumulate(x, packed, k)
    with pytest.raises(ValueError, match=r"expected q int8 \[M>0, 130\]"):
        K.int8_accumulate(np.zeros((2, 129), np.int8), packed, k)


def test_c_side_validates_without_the_binding():
    """The C entry points check arguments themselves (other runtimes call them without Python's checks)."""
    lib = K._load()
    x, packed, scales, k = _valid()
    y = np.empty((2, 3), np.float32)
    call = lambda *a: lib.bonsai_ternary_linear(*a, None)  # noqa: E731
    ok = [x.ctypes.data, 2, k, packed.ctypes.data, packed.shape[1], scales.ctypes.data, 3, 8, y.ctypes.data]
    assert call(*ok) == 0
    bad = {0: None, 1: 0, 2: -5, 4: packed.shape[1] - 32, 5: None, 6: 0, 7: 16, 8: None}
    expected = {0: 1, 1: 2, 2: 2, 4: 2, 5: 1, 6: 2, 7: 3, 8: 1}
    for index, value in bad.items():
        args = list(ok)
        args[index] = value
        assert call(*args) == expected[index], f"argument {index} = {value}"
        assert lib.bonsai_last_error().decode().startswith("bonsai_ternary_linear: expected") or "null" in (
            lib.bonsai_last_error().decode()
        )
    assert len(bad) == 8
    acc = np.empty((2, 3), np.int32)
    q = np.zeros((2, k), np.int8)
    rc = lib.bonsai_int8_accumulate(q.ctypes.data, 2, k, packed.ctypes.data, 65, 3, acc.ctypes.data, None)
    assert rc == 2 and "expected packed row bytes 64" in lib.bonsai_last_error().decode()


def test_thread_pool_matches_single_thread():
    _, packed, x, scales = random_problem(7, 64, 1000, 1536)
    one = K.ternary_linear(x, packed, scales, 1536, 8, threads=1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(K.ternary_linear(x, packed, scales, 1536, 8, threads=threads), one)


def test_library_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv(K.ENV_LIB, str(tmp_path))
    assert K.library_path() == tmp_path / K.LIB_NAME
    monkeypatch.setenv(K.ENV_LIB, str(tmp_path / "x.so"))
    assert K.library_path() == tmp_path / "x.so"


def test_parallel_struct_mirrors_the_header():
    """kernels._Parallel is bonsai_parallel of parallel.h, field by field, as the C compiler lays it out."""
    header = (REPO / "custom_ops/core/include/bonsai/parallel.h").read_text()
    body = re.search(r"typedef struct bonsai_parallel \{(.*?)\} bonsai_parallel;", header, re.S).group(1)
    fields = re.findall(r"(\w+\*?)\s+(\w+);", body)
    c_types = {"bonsai_parallel_for_fn": ctypes.c_void_p, "void*": ctypes.c_void_p, "int32_t": ctypes.c_int32}
    assert K._Parallel._fields_ == [(name, c_types[kind]) for kind, name in fields]
    assert [K._Parallel.runtime_ctx.offset, K._Parallel.num_threads.offset, ctypes.sizeof(K._Parallel)] == [8, 16, 24]


@pytest.mark.parametrize("layout", sorted(formats.SCALE_LAYOUTS))
def test_bench_kernels_smoke(tmp_path, layout):
    """bench-kernels runs end to end (our kernels, MatMulNBits with its parity check, fp32) and writes JSON, with
    either scale layout."""
    from bonsai_export import bench_kernels

    out = tmp_path / "bench.json"
    args = ["--quick", "--no-model", "--tokens", "1,2", "--threads", "1", "--repeats", "1", "--json-out", str(out),
            "--scale-layout", layout]
    assert bench_kernels.main(args) == 0
    report = __import__("json").loads(out.read_text())
    assert report["scale_layout"] == layout
    assert [r["workload"] for r in report["results"]] == [f"{n}x{k}" for n, k in bench_kernels.SINGLE_SHAPES for _ in (1, 2)]
    assert all(r["ours_ms"] > 0 and r["ort_ms"] > 0 and r["torch_ms"] > 0 for r in report["results"])
    assert report["environment"]["isa"] == K.isa()


def test_ort_weight_mapping_is_exact():
    """MatMulNBits bits=2 with zero point 2 decodes code = t + 2 back to t exactly."""
    from bonsai_export.bench_kernels import ORT_ZERO_POINT, ort_weights

    t = np.random.default_rng(3).integers(-1, 2, size=(5, 256), dtype=np.int8)
    blobs = ort_weights(t)  # [N, K/128, 32]
    codes = (blobs[..., :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # [N, blocks, 32, 4]
    np.testing.assert_array_equal(codes.reshape(5, 256).astype(np.int8) - ORT_ZERO_POINT, t)
