"""Malformed tensors fed to our native ops through their runtimes must fail with an error, never crash.

ONNX Runtime: each case is a one-node graph (bonsai::TernaryMatMul or bonsai::DenseMatMul) whose inputs are graph
inputs with free dims, so ORT's shape inference never stops a bad case before our kernel. A valid problem gets one
mutation (wrong rank, dtype, K, packed bytes, scales length, empty or huge dims, bad attribute values); the run
must either succeed (valid and empty cases, with the right output shape) or raise an ORT error that names the
problem.

ExecuTorch: small programs call bonsai::ternary_linear / dense_linear / attention with the weights as *inputs*
with dynamic dims (torch.export.Dim), so the .pte takes runtime shapes its fake kernel never saw. ExecuTorch's
own set_input refuses a rank or dtype change before any kernel runs, so those (and bad int attributes, which are
constants of the program) are baked into extra programs instead of fed at run time.

Every fuzz run happens in a subprocess (this file run as a script), so a crash fails the test with its signal and
the last case printed instead of killing pytest. Hypothesis is derandomized with a bounded number of examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bonsai_export
from bonsai_export.formats import DENSE_GROUP

REPO = Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(Path(bonsai_export.__file__).resolve().parents[1])
ORT_EXAMPLES = 16  # per mutation kind
ET_EXAMPLES = 6  # per op and mutation kind
TIMEOUT_S = 240
INT64_MAX = 2**63 - 1
ROW_BYTES_PER_BLOCK, BLOCK_K = 32, 128


def row_bytes(k: int) -> int:
    return -(-k // BLOCK_K) * ROW_BYTES_PER_BLOCK


# ---------------------------------------------------------------- pytest side: run the workers, read reports

def run_worker(kind: str, examples: int) -> dict:
    """Runs this file as `python test_native_fuzz.py KIND N`; returns its JSON report (last stdout line)."""
    # The worker imports the bonsai_export this test imported (installed, or the source tree in development).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, kind, str(examples)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env, cwd=REPO)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"{kind} fuzz worker exited with {proc.returncode} (negative = signal):\n{tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def native_library(name: str) -> Path:
    from bonsai_export.native import native_dir

    path = native_dir() / name
    if not path.is_file():
        pytest.skip(f"{path} not built (pip install ., or BONSAI_NATIVE_DIR pointing at a build)")
    return path


def test_onnxruntime_ops_reject_malformed_tensors():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("hypothesis")
    native_library("libbonsai_ort_ops.so")
    report = run_worker("ort", ORT_EXAMPLES)
    # Every mutation kind ran at least once, and both outcomes happened.
    assert set(report["kinds"]) >= set(ORT_MUTATIONS), report
    assert report["errors"] > 0 and report["ok"] > 0, report


def test_executorch_ops_reject_malformed_tensors():
    pytest.importorskip("executorch")
    pytest.importorskip("hypothesis")
    native_library("libbonsai_et_ops.so")
    report = run_worker("et", ET_EXAMPLES)
    assert set(report["kinds"]) >= {f"{op}:{m}" for op, ms in ET_MUTATIONS.items() for m in ms}, report
    assert set(report["baked"]) == set(ET_BAKED), report


# ---------------------------------------------------------------- ONNX Runtime worker

def fuzz(examples: int, strategy, check) -> None:
    """check(case) over `examples` deterministic draws of strategy (no example database, no deadline)."""
    from hypothesis import HealthCheck, given, settings

    run = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                   suppress_health_check=list(HealthCheck))(given(strategy)(check))
    run()


# mutation -> fragment of the expected error (None: the run must succeed)
ORT_MUTATIONS = {
    "valid": None,
    "empty_m": None,
    "huge_empty_x": None,           # x [0, 2^40, K]: zero rows however large the other dims
    "x_last_dim": "must end in in_features",
    "x_rank0": "must end in in_features",
    "weight_cols": "do not fit K=",
    "weight_rank": "must be",
    "scales_len": "do not fit K=",
    "scales_rank": "scales must be",  # float32 [N] (bf16 weights) or bfloat16 [N, G] (int8 / int4)
    "empty_n": "rows (N)",
    "in_features": "in_features must be in",
    "bits_attr": "must be",          # act_bits not 0/8, weight_bits not 16/8/4
    "bits_dtype": "does not fit the weight's dtype",  # DenseMatMul only; TernaryMatMul: ORT's type check
    "x_dtype": "Type Error",         # ORT refuses the graph when the session is built
    "attr_missing": "No attribute",
    "attr_type": "Attribute name and type don't match",
    "code3": "invalid 2-bit code 3",  # TernaryMatMul only (DenseMatMul: any byte is a valid weight)
    "scale_layout": "scale_layout must be",  # TernaryMatMul only (DenseMatMul has no such attribute)
}
BAD_K = [0, -1, -(2**63), 2**24 + 1, 2**40, INT64_MAX]


def ort_cases(mutation: str):
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        op = draw(st.sampled_from(["TernaryMatMul", "DenseMatMul"]))
        k = draw(st.integers(1, 300))
        n = draw(st.integers(1, 40))
        lead = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
        bits = draw(st.sampled_from([16, 8, 4])) if op == "DenseMatMul" else draw(st.sampled_from([0, 8]))
        other = draw(st.integers(1, 64))  # a wrong size, added to the right one
        bad_k = draw(st.sampled_from(BAD_K))
        return dict(op=op, mutation=mutation, k=k, n=n, lead=lead, bits=bits, other=other, bad_k=bad_k)

    return case()


def weight_shape(op: str, bits: int, n: int, k: int) -> tuple[list[int], list[int]]:
    """(weight or packed shape, scales shape) of a valid problem."""
    if op == "TernaryMatMul":
        return [n, row_bytes(k)], [n]
    groups = -(-k // DENSE_GROUP)
    return {16: ([n, k], [n]), 8: ([n, k], [n, groups]), 4: ([n, groups * DENSE_GROUP // 2], [n, groups, 2])}[bits]


def build_ort_case(c: dict):
    """-> (onnx model, feeds, expected fragment or None, expected output shape or None)."""
    op, mutation, k, n, bits = c["op"], c["mutation"], c["k"], c["n"], c["bits"]
    x_shape = [*c["lead"], k]
    w_shape, s_shape = weight_shape(op, bits, n, k)
    attrs = {"in_features": k, ("act_bits" if op == "TernaryMatMul" else "weight_bits"): bits}
    bits_name = "act_bits" if op == "TernaryMatMul" else "weight_bits"
    w_dtype = {"TernaryMatMul": np.uint8, 16: np.float32, 8: np.int8, 4: np.uint8}[op if op == "TernaryMatMul" else bits]
    # numpy has no bfloat16: bf16 weights and the group formats' bf16 scales are fed as float32, Cast in the graph
    cast_bf16 = {"w": op == "DenseMatMul" and bits == 16, "s": op == "DenseMatMul" and bits != 16}
    x_dtype, x_from_shape, expect = np.float32, False, ORT_MUTATIONS[mutation]
    if mutation == "empty_m":
        x_shape = [0, *x_shape]
    elif mutation == "huge_empty_x":
        x_shape, x_from_shape = [0, 2**40, k], True
    elif mutation == "x_last_dim":
        x_shape[-1] = k + c["other"]
    elif mutation == "x_rank0":
        x_shape = []
    elif mutation == "weight_cols":
        w_shape[1] += c["other"]
    elif mutation == "weight_rank":
        w_shape = [w_shape[0] * w_shape[1]] if c["other"] % 2 else [1, *w_shape]
    elif mutation == "scales_len":
        s_shape[0] += c["other"]
    elif mutation == "scales_rank":
        s_shape = [*s_shape, 1]
    elif mutation == "empty_n":
        w_shape[0], s_shape[0] = 0, 0
    elif mutation == "in_features":
        attrs["in_features"] = c["bad_k"]
    elif mutation == "bits_attr":
        attrs[bits_name] = [1, 2, 5, 7, 32, -8, INT64_MAX][c["other"] % 7]
        expect = f"{bits_name} must be"
    elif mutation == "bits_dtype":
        if op == "TernaryMatMul":
            w_dtype, expect = np.int8, "Type Error"  # no kernel for an int8 packed: ORT refuses the graph
        else:  # another valid weight_bits over this weight's dtype
            attrs["weight_bits"] = {16: 8, 8: 4, 4: 16}[bits]
    elif mutation == "x_dtype":
        x_dtype = np.float64
    elif mutation == "attr_missing":
        del attrs["in_features" if c["other"] % 2 else bits_name]
    elif mutation == "attr_type":
        attrs["in_features"] = float(k)
    elif mutation == "code3" and op != "TernaryMatMul":
        expect = None
    elif mutation == "scale_layout":
        if op == "TernaryMatMul":
            attrs["scale_layout"] = [2, -1, 7, INT64_MAX][c["other"] % 4]
        else:
            expect = None
    model = ort_model(op, attrs, x_dtype, w_dtype, cast_bf16, x_from_shape)
    rng = np.random.default_rng(len(x_shape) + k)
    feeds = {"w": random_weight(rng, op, w_shape, w_dtype, code3=mutation == "code3"),
             "s": np.ones(s_shape, np.float32)}
    feeds["x"] = (np.array(x_shape, np.int64) if x_from_shape  # asarray: a rank-0 draw is a numpy scalar
                  else np.asarray(rng.standard_normal(x_shape), dtype=x_dtype))
    out_shape = [*x_shape[:-1], n] if expect is None else None
    return model, feeds, expect, out_shape


def valid_packed(rng, shape) -> np.ndarray:
    """Packed ternary bytes of codes 0..2 only (FORMAT.md)."""
    codes = rng.integers(0, 3, (*shape, 4), dtype=np.uint8)
    return (codes << np.array([0, 2, 4, 6], np.uint8)).sum(-1, dtype=np.uint8)


def random_weight(rng, op, shape, dtype, code3=False) -> np.ndarray:
    """A weight of the op's format; code3: one 2-bit field of a packed ternary weight set to the invalid 3."""
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    if op != "TernaryMatMul" or dtype != np.uint8:
        return rng.integers(0, 256, shape).astype(dtype)
    w = valid_packed(rng, shape)
    if code3 and w.size:
        w.reshape(-1)[rng.integers(w.size)] |= np.uint8(3 << 2 * int(rng.integers(4)))
    return w


def ort_model(op, attrs, x_dtype, w_dtype, cast_bf16, x_from_shape):
    """One bonsai node over graph inputs x, w, s with free dims (optionally x = ConstantOfShape(x), w and s
    Cast to bf16 where cast_bf16 says)."""
    from onnx import TensorProto, helper

    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.uint8: TensorProto.UINT8,
            np.int8: TensorProto.INT8}
    nodes, names = [], {"x": "x", "w": "w", "s": "s"}
    if x_from_shape:  # lets a graph input describe dims whose byte count numpy would refuse
        nodes.append(helper.make_node("ConstantOfShape", ["x"], ["x_value"],
                                      value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])))
        names["x"] = "x_value"
    for name in ("w", "s"):
        if cast_bf16[name]:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_bf16"], to=TensorProto.BFLOAT16))
            names[name] = f"{name}_bf16"
    nodes.append(helper.make_node(op, [names["x"], names["w"], names["s"]], ["y"], domain="bonsai", **attrs))
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64 if x_from_shape else elem[x_dtype], None),
              helper.make_tensor_value_info("w", elem[w_dtype], None),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "fuzz", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bonsai", 1)],
                             ir_version=8)


def ort_worker(examples: int) -> dict:
    import onnxruntime as ort
    from bonsai_export.native import native_dir

    library = str(native_dir() / "libbonsai_ort_ops.so")
    report = {"kinds": set(), "ok": 0, "errors": 0}

    def check(c):
        print("case", json.dumps(c), flush=True)  # the last line before a crash names the case
        model, feeds, expect, out_shape = build_ort_case(c)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # the error is asserted below, not logged
        opts.register_custom_ops_library(library)
        try:
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            y = session.run(None, feeds)[0]
        except Exception as exc:  # onnxruntime's own exception types
            assert expect is not None, f"valid case failed: {exc}"
            assert expect in str(exc), f"expected {expect!r} in: {exc}"
            report["errors"] += 1
        else:
            assert expect is None, f"malformed case ran: expected an error with {expect!r}"
            assert list(y.shape) == out_shape, (y.shape, out_shape)
            report["ok"] += 1
        report["kinds"].add(c["mutation"])

    for mutation in ORT_MUTATIONS:  # one bounded run per kind: every kind is covered whatever the draws
        fuzz(examples, ort_cases(mutation), check)
    return {**report, "kinds": sorted(report["kinds"])}


# ---------------------------------------------------------------- ExecuTorch worker

# op -> mutations fed at run time to a program with dynamic dims (None: must succeed)
ET_MUTATIONS = {
    "ternary": ["valid", "empty_m", "x_last_dim", "weight_cols", "scales_len", "empty_n", "code3"],
    "dense": ["valid", "empty_m", "x_last_dim", "weight_cols", "scales_len", "scales_groups", "empty_n"],
    "attention": ["valid", "pos", "pos_wrap", "heads", "head_dim", "cache_len", "v_shape", "empty_t"],
}
ET_K, ET_DENSE_K = 130, 70  # the programs' in_features: x and weights are dynamic, int arguments are not
# baked program -> expected fragment of the kernel's error
ET_BAKED = {
    "ternary_packed_float": "packed must be uint8",
    "ternary_act_bits": "act_bits must be 0 or 8",
    "ternary_in_features": "in_features must be in",
    "dense_bits_dtype": "does not fit the weight's dtype",
    "dense_bits": "weight_bits must be 16, 8 or 4",
    "attention_rank": "q must be float32 [1, T, H, D], got rank 3",
    "attention_pos_dtype": "input_pos must be int64",
}


def et_programs() -> dict:
    """name -> .pte bytes: three programs with dynamic weight dims, and the baked malformed ones."""
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge
    from torch.export import Dim, export

    import bonsai_export.ops  # noqa: F401  (defines torch.ops.bonsai)

    ops = torch.ops.bonsai

    class Call(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *args):
            return self.fn(*args)

    def dims(name, *maxima):  # dynamic dims 0.. max, by position
        return {i: Dim(f"{name}{i}", min=0, max=hi) for i, hi in maxima if hi}

    specs = {  # name: (function, example inputs, dynamic shapes or None)
        "ternary": (lambda x, p, s: ops.ternary_linear(x, p, s, ET_K, 8),
                    (torch.ones(2, ET_K), torch.full((3, row_bytes(ET_K)), 0x55, dtype=torch.uint8), torch.ones(3)),
                    (dims("x", (0, 16), (1, 300)), dims("p", (0, 48), (1, 128)), dims("s", (0, 64)))),
        "dense": (lambda x, w, s: ops.dense_linear(x, w, s, ET_DENSE_K, 4),
                  (torch.ones(2, ET_DENSE_K), torch.zeros(3, 48, dtype=torch.uint8),
                   torch.ones(3, 3, 2, dtype=torch.bfloat16)),  # int4: (scale, offset) per group
                  (dims("x", (0, 16), (1, 200)), dims("w", (0, 48), (1, 100)), dims("s", (0, 64), (1, 16)))),
        "attention": (lambda q, k, v, pos: ops.attention(q, k, v, pos),
                      (torch.ones(1, 2, 4, 8), torch.ones(1, 2, 6, 8), torch.ones(1, 2, 6, 8), torch.tensor([0])),
                      (dims("q", (1, 8), (2, 32), (3, 48)), dims("k", (1, 8), (2, 32), (3, 48)),
                       dims("v", (1, 8), (2, 32), (3, 48)), None)),
        "ternary_packed_float": (lambda x, p, s: ops.ternary_linear(x, p, s, ET_K, 0),
                                 (torch.ones(2, ET_K), torch.ones(3, 64), torch.ones(3)), None),
        "ternary_act_bits": (lambda x, p, s: ops.ternary_linear(x, p, s, ET_K, 5),
                             (torch.ones(2, ET_K), torch.zeros(3, 64, dtype=torch.uint8), torch.ones(3)), None),
        "ternary_in_features": (lambda x, p, s: ops.ternary_linear(x, p, s, 2**40, 0),
                                (torch.ones(2, ET_K), torch.zeros(3, 64, dtype=torch.uint8), torch.ones(3)), None),
        "dense_bits_dtype": (lambda x, w, s: ops.dense_linear(x, w, s, 64, 16),
                             (torch.ones(2, 64), torch.zeros(3, 64, dtype=torch.int8), torch.ones(3)), None),
        "dense_bits": (lambda x, w, s: ops.dense_linear(x, w, s, 64, 2),
                       (torch.ones(2, 64), torch.zeros(3, 64, dtype=torch.int8), torch.ones(3)), None),
        "attention_rank": (lambda q, k, v, pos: ops.attention(q, k, v, pos),
                           (torch.ones(2, 4, 8), torch.ones(1, 2, 6, 8), torch.ones(1, 2, 6, 8), torch.tensor([0])),
                           None),
        "attention_pos_dtype": (lambda q, k, v, pos: ops.attention(q, k, v, pos),
                                (torch.ones(1, 2, 4, 8), torch.ones(1, 2, 6, 8), torch.ones(1, 2, 6, 8),
                                 torch.tensor([0.0])), None),
    }
    # forward(*args): the dynamic shapes of the one variadic parameter are the per-input tuple.
    exported = {name: export(Call(fn), args, dynamic_shapes=(dyn,) if dyn else None, strict=False)
                for name, (fn, args, dyn) in specs.items()}
    # One multi-method program: lowering once is much cheaper than once per method.
    program = to_edge(exported, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    return program.buffer


def et_cases(op: str, mutation: str):
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        return dict(op=op, mutation=mutation, m=draw(st.integers(1, 16)),
                    n=draw(st.integers(1, 40)), other=draw(st.integers(1, 8)),
                    t=draw(st.integers(1, 8)), group=draw(st.integers(1, 4)), hkv=draw(st.integers(1, 4)),
                    d=draw(st.integers(1, 32)), s=draw(st.integers(8, 24)),
                    pos=draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 30),
                                       st.sampled_from([2**63 - 1, 2**63 - 2, 2**62, -(2**63)]))))

    return case()


def et_linear_inputs(c: dict):
    """-> (inputs, expected fragment or None) of the ternary or dense program."""
    import torch

    m, n, other, mutation = c["m"], c["n"], c["other"], c["mutation"]
    if c["op"] == "ternary":
        k, w_cols, s_shape = ET_K, row_bytes(ET_K), [n]
    else:
        k, w_cols, s_shape = ET_DENSE_K, 3 * DENSE_GROUP // 2, [n, 3, 2]
    x_shape, w_shape = [m, k], [n, w_cols]
    expect = {"valid": None, "empty_m": None, "x_last_dim": "must end in in_features", "weight_cols": "do not fit K=",
              "scales_len": "do not fit K=", "scales_groups": "do not fit K=", "empty_n": "rows (N)",
              "code3": "invalid 2-bit code 3"}[mutation]
    if mutation == "empty_m":
        x_shape[0] = 0
    elif mutation == "x_last_dim":
        x_shape[1] = k + other
    elif mutation == "weight_cols":
        w_shape[1] += other
    elif mutation == "scales_len":
        s_shape[0] += other
    elif mutation == "scales_groups":
        s_shape[1] += other
    elif mutation == "empty_n":
        w_shape[0] = s_shape[0] = 0
    s_dtype = torch.float32 if c["op"] == "ternary" else torch.bfloat16  # the int4 program's (scale, offset)
    # A seed per mutation: the kernel remembers checked buffers by address, size and sampled bytes, and a code3
    # buffer equal to an earlier valid one but for one byte would look like it (an artifact never does that).
    rng = np.random.default_rng([m, n, list(ET_MUTATIONS[c["op"]]).index(mutation)])
    weight = (random_weight(rng, "TernaryMatMul", w_shape, np.uint8, code3=mutation == "code3") if c["op"] == "ternary"
              else rng.integers(0, 256, w_shape).astype(np.uint8))
    # copied into torch's own strides: numpy gives an empty [0, C] array stride 0, which ExecuTorch's pybind
    # asserts on (an abort in its make_tensor_ptr, not in our kernel)
    packed = torch.empty(w_shape, dtype=torch.uint8).copy_(torch.from_numpy(weight))
    inputs = [torch.randn(x_shape), packed, torch.ones(s_shape, dtype=s_dtype)]
    return inputs, expect


def et_attention_inputs(c: dict):
    import torch

    t, hkv, d, s, mutation = c["t"], c["hkv"], c["d"], c["s"], c["mutation"]
    h, pos = hkv * c["group"], c["pos"] % (s - t + 1)  # a valid position unless mutated
    q_shape, k_shape, v_shape, expect = [1, t, h, d], [1, hkv, s, d], [1, hkv, s, d], None
    if mutation == "pos":  # any int64, extremes included: pos + T must not wrap past the range check
        pos = c["pos"]
        expect = None if 0 <= pos <= s - t else "does not fit the cache"
    elif mutation == "pos_wrap":  # pos + T passes INT64_MAX: before the fix it wrapped negative and got through
        pos, expect = INT64_MAX - t + 1 + c["other"] % t, "does not fit the cache"
    elif mutation == "heads":
        k_shape[1] = v_shape[1] = max(hkv, 2)
        q_shape[2], expect = k_shape[1] * c["group"] + 1, "not a multiple"
    elif mutation == "head_dim":
        q_shape[3] = d + c["other"]
        expect = "disagree"
    elif mutation == "cache_len":
        pos, expect = s - t + 1, "does not fit the cache"
    elif mutation == "v_shape":
        v_shape[2] = s + c["other"]
        expect = "disagree"
    elif mutation == "empty_t":
        q_shape[1], expect = 0, "need T, H, D, Hkv, S in"
    inputs = [torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape), torch.tensor([pos])]
    return inputs, expect


class StderrTail:
    """Captures fd 2 into a file: ExecuTorch reports a kernel's message only through its log on stderr."""

    def __init__(self, path: Path):
        self.file = open(path, "w+b")
        os.dup2(self.file.fileno(), 2)
        self.offset = 0

    def new_text(self) -> str:
        self.file.seek(self.offset)
        data = self.file.read()
        self.offset += len(data)
        return data.decode(errors="replace")


def et_worker(examples: int) -> dict:
    import tempfile

    from bonsai_export import runners

    pte = et_programs()
    runners.load_et_ops()
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte)
    log = StderrTail(Path(tempfile.mkdtemp()) / "stderr.log")
    report = {"kinds": set(), "baked": set()}

    def execute(method: str, inputs, expect):
        log.new_text()
        try:
            out = program.load_method(method).execute(inputs)
        except Exception as exc:  # the runtime's RuntimeError; the reason is in its log
            text = log.new_text()
            assert expect is not None, f"{method}: valid inputs failed: {exc}\n{text}"
            assert expect in text, f"{method}: expected {expect!r} in the runtime's log:\n{text}"
            return None
        assert expect is None, f"{method}: malformed inputs ran: expected an error with {expect!r}"
        return out[0]

    def check(c):
        print("case", json.dumps(c), flush=True)
        inputs, expect = et_attention_inputs(c) if c["op"] == "attention" else et_linear_inputs(c)
        y = execute(c["op"], inputs, expect)
        if y is not None and c["op"] != "attention":
            assert list(y.shape) == [inputs[0].shape[0], inputs[1].shape[0]], y.shape
        report["kinds"].add(f"{c['op']}:{c['mutation']}")

    for op, mutations in ET_MUTATIONS.items():
        for mutation in mutations:
            fuzz(examples, et_cases(op, mutation), check)
    import torch

    for name, expect in ET_BAKED.items():  # the programs' own (fixed) example shapes
        print("baked", name, flush=True)
        q = torch.ones(2, 4, 8) if name == "attention_rank" else torch.ones(1, 2, 4, 8)
        inputs = {"ternary": [torch.ones(2, ET_K), torch.zeros(3, 64, dtype=torch.uint8), torch.ones(3)],
                  "dense": [torch.ones(2, 64), torch.zeros(3, 64, dtype=torch.int8), torch.ones(3)],
                  "attention": [q, torch.ones(1, 2, 6, 8), torch.ones(1, 2, 6, 8),
                                torch.tensor([0.0] if name == "attention_pos_dtype" else [0])]}[name.split("_")[0]]
        if name == "ternary_packed_float":
            inputs[1] = torch.ones(3, 64)
        execute(name, inputs, expect)
        report["baked"].add(name)
    return {"kinds": sorted(report["kinds"]), "baked": sorted(report["baked"])}


if __name__ == "__main__":
    kind, examples = sys.argv[1], int(sys.argv[2])
    result = ort_worker(examples) if kind == "ort" else et_worker(examples)
    print(json.dumps(result), flush=True)
