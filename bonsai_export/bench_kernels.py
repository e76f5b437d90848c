"""`bonsai-export bench-kernels`: speed of the native packed-ternary kernels next to the peers, in one run.

For each workload (single Bonsai matrices and the whole 16-layer ternary weight set, streamed so it cannot sit in
cache), each token count M and thread count, it times:
  - ours: bonsai_export.kernels (libbonsai_kernels), act_bits 8 unless --act-bits says otherwise;
  - ort: onnxruntime com.microsoft MatMulNBits bits=2 (block 128, accuracy_level 4) on the same ternary weights,
    mapped exactly (code = t + 2, zero point 2, per-block scale = channel scale);
  - torch: fp32 torch.matmul on the dequantized weights;
and the machine's memory read bandwidth (a streaming read over a buffer larger than the last-level cache).
Reports medians, effective GB/s of weight traffic (packed bytes + scales per pass), ratios, and writes JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from bonsai_export import formats
from bonsai_export import kernels as K

log = logging.getLogger(__name__)

# Bonsai's ternary matmuls per decoder layer as the model runs them (q/k/v and gate/up fused): (name, N, K).
LAYER = (("qkv", 3072, 1536), ("o", 1536, 1536), ("gate_up", 8192, 1536), ("down", 1536, 4096))
N_LAYERS = 16
SINGLE_SHAPES = ((3072, 1536), (1536, 1536), (8192, 1536), (1536, 4096))
ORT_BITS = 2
ORT_ZERO_POINT = 2  # MatMulNBits' default zero point for bits=2: code = t + 2 decodes back to t exactly
ORT_IR_VERSION = 10
ORT_ACCURACY_LEVEL = 4  # int8 activations; levels 0/1 dequantize to fp32 and are ~20x slower
BANDWIDTH_BUFFER_MB = 1024


@dataclass
class Workload:
    name: str
    shapes: list[tuple[int, int]]  # (N, K) per matrix, in execution order
    copies: int = 1  # distinct copies of the weights (the whole model: one per layer)


@dataclass
class Result:
    workload: str
    m: int
    threads: int
    weight_bytes: int
    ours_ms: float
    ours_p90_ms: float
    ours_gbps: float
    ort_ms: float | None = None
    torch_ms: float | None = None
    read_gbps: float | None = None
    extra: dict = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller bandwidth buffer")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--tokens", default="1,64", help="comma-separated token counts M (default: 1,64)")
    parser.add_argument("--act-bits", type=int, choices=sorted(formats.ACT_MODES.values()), default=8,
                        help="activation mode of our kernels (default: 8)")
    parser.add_argument("--scale-layout", choices=sorted(formats.SCALE_LAYOUTS), default="channel",
                        help="channel: one float32 scale per row (Bonsai); block: one fp16 scale per 128 weights "
                             "(Ternary-Bonsai), MatMulNBits with the same block scales (default: channel)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per measurement (default 15, quick 5)")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model workload")
    parser.add_argument("--no-ort", action="store_true", help="skip onnxruntime MatMulNBits")
    parser.add_argument("--no-torch", action="store_true", help="skip fp32 torch.matmul")
    parser.add_argument("--json-out", default=None, help="write the results as JSON to this file")


def workloads(include_model: bool) -> list[Workload]:
    out = [Workload(f"{n}x{k}", [(n, k)]) for n, k in SINGLE_SHAPES]
    if include_model:
        out.append(Workload(f"model {N_LAYERS}x{len(LAYER)}", [(n, k) for _, n, k in LAYER], copies=N_LAYERS))
    return out


def time_passes(fn, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call of fn, after warm-up, on a monotonic clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) * 1e-9)
    return times


def p90(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


# ----------------------------------------------------------------------------------------------- weights


@dataclass
class Matrix:
    t: np.ndarray  # int8 [N, K] ternary
    packed: np.ndarray  # uint8 [N, row_bytes(K)]
    scales: np.ndarray  # float32 [N] (layout channel) or float16 [N, num_blocks(K)] (block)

    @property
    def layout(self) -> int:
        return formats.SCALE_LAYOUTS["block" if self.scales.ndim == 2 else "channel"]

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The float-activation reference output of x."""
        k = self.t.shape[1]
        if self.layout == formats.SCALE_LAYOUTS["block"]:
            return formats.matmul_blocks(x, self.packed, self.scales, k, act_bits=0)
        return formats.matmul(x, self.packed, self.scales, k, act_bits=0)

    def dense(self) -> np.ndarray:
        """The float32 [N, K] matrix the weights stand for."""
        s = self.scales.astype(np.float32)
        if self.layout == formats.SCALE_LAYOUTS["block"]:
            return self.t * np.repeat(s, formats.BLOCK_K, axis=1)[:, : self.t.shape[1]]
        return self.t.astype(np.float32) * s[:, None]


def make_matrices(workload: Workload, rng: np.random.Generator, layout: str = "channel") -> list[Matrix]:
    """Random ternary weights; each copy is a distinct buffer so a pass streams all of them from memory."""
    base = []
    for n, k in workload.shapes:
        t = (rng.integers(0, 3, size=(n, k), dtype=np.int8) - 1).astype(np.int8)
        shape = (n, formats.num_blocks(k)) if layout == "block" else (n,)
        scales = rng.uniform(0.01, 0.1, size=shape).astype(np.float16 if layout == "block" else np.float32)
        base.append(Matrix(t, formats.pack(t), scales))
    return [Matrix(b.t, b.packed.copy(), b.scales.copy()) for _ in range(workload.copies) for b in base]


def weight_bytes(mats: list[Matrix]) -> int:
    return sum(m.packed.nbytes + m.scales.nbytes for m in mats)


# ------------------------------------------------------------------------------------------------- ours


def ours_pass(mats: list[Matrix], xs: dict[int, np.ndarray], act_bits: int, threads: int):
    """One pass over all matrices through the C ABI directly: the binding's per-call checks (done once here)
    would otherwise add microseconds of Python per matrix."""
    lib = K._load()
    parallel, lock = K._pool(threads)
    par = ctypes.byref(parallel) if parallel is not None else None
    calls = []
    for mat in mats:
        n, k = mat.t.shape
        x = xs[k]
        y = np.empty((x.shape[0], n), dtype=np.float32)
        calls.append((x.ctypes.data, x.shape[0], k, mat.packed.ctypes.data, mat.packed.shape[1],
                      mat.scales.ctypes.data, mat.layout, n, act_bits, y.ctypes.data, par, y))
    fn = lib.bonsai_ternary_linear_ex

    def run():
        with lock or _NO_LOCK:
            for c in calls:
                if fn(*c[:11]) != 0:
                    raise RuntimeError(lib.bonsai_last_error().decode())

    return run


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


# ------------------------------------------------------------------------------------------------- onnxruntime


def ort_weights(t: np.ndarray) -> np.ndarray:
    """MatMulNBits bits=2 layout: uint8 [N, K/128, 32], weight j of a block at byte j//4, bits 2*(j%4)."""
    n, k = t.shape
    codes = (t.astype(np.int16) + ORT_ZERO_POINT).astype(np.uint8).reshape(n, k // formats.BLOCK_K, -1, 4)
    return (codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)).astype(np.uint8)


def ort_model(mats: list[Matrix]):
    """One graph with every matrix as a MatMulNBits node on input x{K}; one output per node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs, nodes, outputs, inits = {}, [], [], []
    for i, mat in enumerate(mats):
        n, k = mat.t.shape
        if k % formats.BLOCK_K:
            raise ValueError(f"MatMulNBits comparison needs K % {formats.BLOCK_K} == 0, got K={k}")
        inputs.setdefault(k, helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["M", k]))
        names = [f"x{k}", f"w{i}", f"s{i}"]
        if mat.layout == formats.SCALE_LAYOUTS["block"]:  # the same block scales, exactly
            b, s, zero_points = formats.matmul_nbits_weights(mat.packed, mat.scales, k)
            inits += [numpy_helper.from_array(b, f"w{i}"), numpy_helper.from_array(s, f"s{i}"),
                      numpy_helper.from_array(zero_points, f"z{i}")]
            names.append(f"z{i}")
        else:
            inits += [numpy_helper.from_array(ort_weights(mat.t), f"w{i}"),
                      numpy_helper.from_array(np.repeat(mat.scales, k // formats.BLOCK_K), f"s{i}")]
        nodes.append(helper.make_node("MatMulNBits", names, [f"y{i}"], domain="com.microsoft",
                                      K=k, N=n, bits=ORT_BITS, block_size=formats.BLOCK_K,
                                      accuracy_level=ORT_ACCURACY_LEVEL))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(nodes, "ternary", list(inputs.values()), outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    # IR 10 (ONNX 1.16) loads on every onnxruntime from 1.18 on, not only on the newest.
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=ORT_IR_VERSION)


def ort_pass(mats: list[Matrix], xs: dict[int, np.ndarray], threads: int):
    """A session over all matrices, with inputs and outputs bound to preallocated buffers (no allocation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(ort_model(mats).SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for k, x in xs.items():
        binding.bind_cpu_input(f"x{k}", x)
    ys = []
    for i, mat in enumerate(mats):
        y = np.empty((next(iter(xs.values())).shape[0], mat.t.shape[0]), dtype=np.float32)
        binding.bind_output(f"y{i}", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
        ys.append(y)

    def run():
        session.run_with_iobinding(binding)

    return run, ys


# ------------------------------------------------------------------------------------------------- torch


def torch_pass(mats: list[Matrix], xs: dict[int, np.ndarray], threads: int):
    import torch

    torch.set_num_threads(threads)
    weights = [torch.from_numpy(m.dense()).t() for m in mats]  # [K, N] views
    xt = {k: torch.from_numpy(x) for k, x in xs.items()}
    outs = [torch.empty((next(iter(xs.values())).shape[0], w.shape[1])) for w in weights]

    def run():
        with torch.inference_mode():
            for w, out in zip(weights, outs):
                torch.matmul(xt[w.shape[0]], w, out=out)

    return run


# ------------------------------------------------------------------------------------------------- bandwidth


def read_bandwidth(threads: int, megabytes: int, repeats: int) -> float:
    """GB/s of a streaming read (a sum over uint64) split over `threads` Python threads; numpy's reductions
    release the GIL, so the threads read concurrently."""
    buf = np.ones(megabytes * (1 << 20) // 8, dtype=np.uint64)
    chunks = np.array_split(buf, threads)

    def run():
        workers = [threading.Thread(target=np.add.reduce, args=(c,)) for c in chunks[1:]]
        for w in workers:
            w.start()
        np.add.reduce(chunks[0])
        for w in workers:
            w.join()

    return buf.nbytes / statistics.median(time_passes(run, repeats, warmup=1)) / 1e9


# ------------------------------------------------------------------------------------------------- driver

# MatMulNBits quantizes activations per block, ours per token: outputs agree only to int8 precision.
ORT_PARITY_REL_TOL = 0.05


def check_ort_parity(mats: list[Matrix], xs: dict[int, np.ndarray], ys: list[np.ndarray]) -> None:
    """Fail loudly if MatMulNBits did not compute the same ternary linear (a wrong layout would go unnoticed)."""
    for mat, y in zip(mats[:len(LAYER)], ys):
        x = xs[mat.t.shape[1]]
        want = mat.reference(x)
        err = np.linalg.norm(y - want) / max(np.linalg.norm(want), 1e-30)
        if not err < ORT_PARITY_REL_TOL:
            raise RuntimeError(f"MatMulNBits output differs from the reference by {err:.3g} (relative)")


def measure(workload: Workload, mats: list[Matrix], m: int, threads: int, args, repeats: int) -> Result:
    rng = np.random.default_rng(m)
    xs = {k: rng.standard_normal((m, k)).astype(np.float32) for k in sorted({k for _, k in workload.shapes})}
    wbytes = weight_bytes(mats)
    ours = time_passes(ours_pass(mats, xs, args.act_bits, threads), repeats)
    result = Result(workload.name, m, threads, wbytes, statistics.median(ours) * 1e3, p90(ours) * 1e3,
                    wbytes / statistics.median(ours) / 1e9)
    if not args.no_ort:
        run, ys = ort_pass(mats, xs, threads)
        result.ort_ms = statistics.median(time_passes(run, repeats)) * 1e3
        check_ort_parity(mats, xs, ys)
    if not args.no_torch:
        result.torch_ms = statistics.median(time_passes(torch_pass(mats, xs, threads), repeats)) * 1e3
    return result


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def ms(value: float | None) -> str:
    """A time in ms, or "-" for a peer that was not measured (--no-ort, --no-torch)."""
    return f"{value:.3f}" if value else "-"


def render(results: list[Result], bandwidth: dict[int, float]) -> str:
    head = (f"{'workload':<16}{'M':>4}{'thr':>4}{'MB':>8}{'ours ms':>10}{'p90':>9}{'GB/s':>7}{'%bw':>6}"
            f"{'ort ms':>10}{'vs ort':>8}{'fp32 ms':>10}{'vs fp32':>9}{'ours ms/tok':>13}")
    lines = [head, "-" * len(head)]
    for r in results:
        bw = bandwidth.get(r.threads)
        lines.append(
            f"{r.workload:<16}{r.m:>4}{r.threads:>4}{r.weight_bytes / 1e6:>8.1f}{r.ours_ms:>10.3f}{r.ours_p90_ms:>9.3f}"
            f"{r.ours_gbps:>7.1f}{f'{100 * r.ours_gbps / bw:.0f}%' if bw else '-':>6}"
            f"{ms(r.ort_ms):>10}{ratio(r.ort_ms, r.ours_ms):>8}{ms(r.torch_ms):>10}"
            f"{ratio(r.torch_ms, r.ours_ms):>9}{r.ours_ms / r.m:>13.4f}"
        )
    lines.append("memory read bandwidth: " + ", ".join(f"{t} thr {g:.1f} GB/s" for t, g in bandwidth.items()))
    lines.append("vs ort / vs fp32: their time over ours (> 1 = ours faster); %bw: ours GB/s over read bandwidth")
    return "\n".join(lines)


def environment() -> dict:
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"isa": K.isa(), "cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"expected comma-separated integers for {what}, got {text!r}") from exc
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers for {what}, got {text!r}")
    return values


def run(args) -> int:
    threads, tokens = parse_ints(args.threads, "--threads"), parse_ints(args.tokens, "--tokens")
    repeats = args.repeats or (5 if args.quick else 15)
    bw_mb = BANDWIDTH_BUFFER_MB // 4 if args.quick else BANDWIDTH_BUFFER_MB
    bandwidth = {t: read_bandwidth(t, bw_mb, repeats) for t in threads}
    rng = np.random.default_rng(0)
    results = []
    for workload in workloads(not args.no_model):
        mats = make_matrices(workload, rng, args.scale_layout)
        for m in tokens:
            for t in threads:
                log.info("bench %s M=%d threads=%d", workload.name, m, t)
                results.append(measure(workload, mats, m, t, args, repeats))
                results[-1].read_gbps = bandwidth[t]
        del mats
    sys.stdout.write(render(results, bandwidth) + "\n")
    if args.json_out:
        report = {"environment": environment(), "act_bits": args.act_bits, "scale_layout": args.scale_layout,
                  "repeats": repeats, "read_bandwidth_gbps": bandwidth, "results": [asdict(r) for r in results]}
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_kernels", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
