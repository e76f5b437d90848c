"""Block-scaled ternary weights ("t2g", scale_layout 1: one fp16 scale per 128-weight block, prism-ml's
Ternary-Bonsai): the reference (formats.matmul_blocks), every kernel table this CPU supports against it (int8
activations bit for bit, float activations within float rounding), the binding's refusals, and the stock ONNX
Runtime mapping (MatMulNBits bits=2, block 128) against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bonsai_export import formats, ops
from bonsai_export import kernels as K
from bonsai_export.native import native_dir

SUPPORTED = [isa for isa in K.isa_names() if K.isa_supported(isa)] if K.available() else []
BLOCK = formats.SCALE_LAYOUTS["block"]
# act_bits=0 sums in float32 in a kernel-specific order: error bound relative to sum_k |x| * |W|.
FLOAT_REL_TOL = 1e-5
# (M, N, K): decode and prefill token counts, N off every row tile, K partial / whole / many blocks.
# (1, 37, 2176): a decode of 17 blocks, two whole groups of 8 block scales and an odd last block.
SHAPES = [(1, 1, 1), (1, 17, 127), (1, 33, 128), (1, 40, 129), (1, 37, 2176), (2, 5, 300), (3, 64, 256),
          (5, 9, 1536), (7, 31, 1000), (64, 18, 384), (66, 35, 517)]

pytestmark = pytest.mark.skipif(not K.available(), reason="native kernels not built")


@pytest.fixture(params=SUPPORTED)
def isa(request):
    K.set_isa(request.param)
    yield request.param
    K.set_isa("auto")


def random_scales(rng, n: int, k: int) -> np.ndarray:
    """fp16 block scales across the range: signs, subnormals, zeros and large values among ordinary ones."""
    signs = rng.choice([-1, 1], size=(n, 1))
    s = (rng.uniform(0.001, 2.0, size=(n, formats.num_blocks(k))) * signs).astype(np.float16)
    special = np.array([0.0, 6e-8, 3e-5, -6.1e-5, 65504.0, 1.0], np.float16)
    mask = rng.random(s.shape) < 0.1
    s[mask] = rng.choice(special, size=mask.sum())
    return s


def problem(seed: int, m: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    return t, formats.pack(t), random_scales(rng, n, k), x


def dense_weights(t: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return t.astype(np.float64) * np.repeat(scales.astype(np.float64), formats.BLOCK_K, axis=1)[:, : t.shape[1]]


def test_case_table():
    assert len(SHAPES) == 11 and len(SUPPORTED) >= 1


def test_reference_int8_is_the_stated_order():
    """formats.matmul_blocks(act_bits=8) = per-block exact sums, scaled and summed in block order, times d."""
    t, packed, scales, x = problem(1, 3, 7, 300)
    q, d = formats.quantize_activations(x)
    want = np.zeros((3, 7), np.float32)
    for m in range(3):
        for n in range(7):
            z = np.float32(0)
            for b in range(formats.num_blocks(300)):
                cols = slice(128 * b, 128 * b + 128)
                blk = int(q[m, cols].astype(np.int64) @ t[n, cols].astype(np.int64))
                z = np.float32(z + np.float32(np.float32(blk) * np.float32(scales[n, b])))
            want[m, n] = np.float32(z * d[m])
    np.testing.assert_array_equal(formats.matmul_blocks(x, packed, scales, 300, 8).view(np.uint32), want.view(np.uint32))


def test_reference_float_matches_the_dense_matrix():
    t, packed, scales, x = problem(2, 4, 9, 517)
    want = x.astype(np.float64) @ dense_weights(t, scales).T
    got = formats.matmul_blocks(x, packed, scales, 517, 0)
    bound = FLOAT_REL_TOL * (np.abs(x).astype(np.float64) @ np.abs(dense_weights(t, scales)).T) + 1e-30
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_bit_exact(isa, m, n, k):
    _, packed, scales, x = problem(m * 1000 + n * 10 + k, m, n, k)
    want = formats.matmul_blocks(x, packed, scales, k, 8)
    for threads in (1, 2):
        got = K.ternary_linear(x, packed, scales, k, 8, threads=threads, scale_layout=BLOCK)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{isa} threads={threads}")


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_float_within_rounding(isa, m, n, k):
    t, packed, scales, x = problem(m * 7 + n * 3 + k, m, n, k)
    w = dense_weights(t, scales)
    want = x.astype(np.float64) @ w.T
    got = K.ternary_linear(x, packed, scales, k, 0, scale_layout=BLOCK)
    bound = FLOAT_REL_TOL * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 1e-30
    assert np.all(np.abs(got - want) <= bound), f"{isa}: max error {np.abs(got - want).max()}"


def test_every_finite_fp16_scale_widens_exactly(isa):
    """One row per finite fp16 value (subnormals included), its only weight +1 under a one-hot token: y = 127 * s
    * d on every table, as numpy widens the scales."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(np.float16)
    values = values[np.isfinite(values)]
    n = values.size
    t = np.zeros((n, 128), np.int8)
    t[:, 0] = 1
    x = np.zeros((1, 128), np.float32)
    x[0, 0] = 127.0
    scales = values.reshape(n, 1)
    packed = formats.pack(t)
    want = formats.matmul_blocks(x, packed, scales, 128, 8)
    got = K.ternary_linear(x, packed, scales, 128, 8, scale_layout=BLOCK)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(want[0], values.astype(np.float32) * np.float32(127))


@pytest.mark.parametrize("change,message", [
    (lambda a: {**a, "scales": a["scales"].astype(np.float32)}, "block scales float16"),
    (lambda a: {**a, "scales": a["scales"][:, :1]}, "block scales float16"),
    (lambda a: {**a, "scale_layout": 2}, "scale_layout"),
])
def test_binding_refuses_bad_block_scales(change, message):
    _, packed, scales, x = problem(3, 2, 4, 300)
    args = change({"x": x, "packed": packed, "scales": scales, "k": 300, "act_bits": 8, "scale_layout": BLOCK})
    with pytest.raises(ValueError, match=message):
        K.ternary_linear(**args)


def test_c_side_refuses_a_bad_layout():
    """The C entry point checks the layout itself (a binding that passes anything gets BONSAI_ERR_LAYOUT)."""
    _, packed, scales, x = problem(4, 1, 2, 128)
    y = np.empty((1, 2), np.float32)
    lib = K._load()
    status = lib.bonsai_ternary_linear_ex(x.ctypes.data, 1, 128, packed.ctypes.data, 32, scales.ctypes.data, 5, 2, 8,
                                          y.ctypes.data, None)
    assert status == 7 and b"scale_layout" in lib.bonsai_last_error()


def test_matmul_nbits_weights_dequantize_exactly():
    t, packed, scales, _ = problem(5, 6, 11, 300)
    b, s, zp = formats.matmul_nbits_weights(packed, scales, 300)
    nb = formats.num_blocks(300)
    assert b.shape == (11, nb, 32) and s.shape == (11 * nb,) and zp.shape == (11, 1)
    shifts = np.array([0, 2, 4, 6], np.uint8)
    codes = ((b[..., None] >> shifts) & 3).reshape(11, nb * 128).astype(np.float32)
    zeros = ((zp[:, :, None] >> shifts) & 3).reshape(11, -1)[:, :nb].astype(np.float32)
    w = (codes.reshape(11, nb, 128) - zeros[:, :, None]) * s.reshape(11, nb, 1)
    np.testing.assert_array_equal(w.reshape(11, -1)[:, :300], dense_weights(t, scales).astype(np.float32))


def test_matmul_nbits_node_matches_the_reference():
    """One com.microsoft MatMulNBits node (bits 2, block 128, accuracy_level 0: float activations) built from
    formats.matmul_nbits_weights computes the block-scaled reference within float rounding."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    m, n, k = 5, 37, 300
    t, packed, scales, x = problem(6, m, n, k)
    b, s, zp = formats.matmul_nbits_weights(packed, scales, k)
    node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zero_points"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=formats.NBITS_BITS, block_size=formats.BLOCK_K, accuracy_level=0)
    graph = helper.make_graph(
        [node], "t2g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "scales"),
         numpy_helper.from_array(zp, "zero_points")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    w = dense_weights(t, scales)
    want = formats.matmul_blocks(x, packed, scales, k, 0)
    bound = FLOAT_REL_TOL * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 1e-30
    assert np.all(np.abs(got - want) <= bound), f"max error {np.abs(got - want).max()}"


@pytest.mark.parametrize("act_bits", [0, 8])
def test_torch_op_native_equals_its_reference(act_bits):
    """torch.ops.bonsai.ternary_linear(..., scale_layout=1), the op the exporters trace, on the native kernels and
    on its pure-PyTorch reference: bit for bit with int8 activations, within rounding with float ones."""
    t, packed, scales, x = problem(7, 6, 21, 300)
    xt = torch.from_numpy(x).reshape(2, 3, 300)
    y = torch.ops.bonsai.ternary_linear(xt, torch.from_numpy(packed), torch.from_numpy(scales), 300, act_bits, 1)
    want = formats.matmul_blocks(x, packed, scales, 300, act_bits)
    ref = ops.reference(torch.from_numpy(x), torch.from_numpy(packed), torch.from_numpy(scales), 300, act_bits, 1)
    assert y.shape == (2, 3, 21)
    if act_bits == 8:
        np.testing.assert_array_equal(y.reshape(6, 21).numpy().view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(ref.numpy().view(np.uint32), want.view(np.uint32))
    else:
        np.testing.assert_allclose(y.reshape(6, 21).numpy(), want, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ref.numpy(), want, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="scale_layout=1"):
        torch.ops.bonsai.ternary_linear(xt, torch.from_numpy(packed), torch.from_numpy(scales[:, :1]), 300, 8, 1)


def ternary_node_session(k: int, n: int, act_bits: int, scales: np.ndarray, packed: np.ndarray, layout: int | None):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    library = native_dir() / "libbonsai_ort_ops.so"
    if not library.is_file():
        pytest.skip(f"ONNX Runtime op library not built ({library})")
    attrs = {"in_features": k, "act_bits": act_bits, **({} if layout is None else {"scale_layout": layout})}
    node = helper.make_node("TernaryMatMul", ["x", "packed", "scales"], ["y"], domain="bonsai", **attrs)
    graph = helper.make_graph(
        [node], "t2g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(packed, "packed"), numpy_helper.from_array(scales, "scales")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("bonsai", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_onnx_custom_op_takes_block_scales():
    """bonsai::TernaryMatMul with scale_layout=1 and fp16 scales: bit for bit with the reference (int8); without
    the attribute it keeps its channel meaning, and fp16 scales under scale_layout 0 are refused by name."""
    import onnxruntime as ort

    m, n, k = 9, 37, 300
    _, packed, scales, x = problem(8, m, n, k)
    session = ternary_node_session(k, n, 8, scales, packed, BLOCK)
    got = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got.view(np.uint32), formats.matmul_blocks(x, packed, scales, k, 8).view(np.uint32))
    channel = np.linspace(0.5, 1.5, n).astype(np.float32)
    legacy = ternary_node_session(k, n, 8, channel, packed, None).run(None, {"x": x})[0]
    np.testing.assert_array_equal(legacy.view(np.uint32), formats.matmul(x, packed, channel, k, 8).view(np.uint32))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="scales must be float32"):
        ternary_node_session(k, n, 8, scales, packed, 0).run(None, {"x": x})


class _BlockLinear(torch.nn.Module):
    def __init__(self, packed: np.ndarray, scales: np.ndarray, k: int, act_bits: int):
        super().__init__()
        self.register_buffer("packed", torch.from_numpy(packed))
        self.register_buffer("scales", torch.from_numpy(scales))
        self.k, self.act_bits = k, act_bits

    def forward(self, x):
        return torch.ops.bonsai.ternary_linear(x, self.packed, self.scales, self.k, self.act_bits, BLOCK)


@pytest.mark.parametrize("act_bits", [0, 8])
def test_executorch_op_takes_block_scales(tmp_path, act_bits):
    """A .pte of one bonsai::ternary_linear with scale_layout=1 and fp16 scales runs our ExecuTorch kernel: bit for
    bit with the reference (int8), within rounding (float)."""
    pytest.importorskip("executorch")
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from bonsai_export.runners import load_et_ops

    if not (native_dir() / "libbonsai_et_ops.so").is_file():
        pytest.skip("ExecuTorch op library not built")
    m, n, k = 3, 19, 300
    _, packed, scales, x = problem(9, m, n, k)
    program = torch.export.export(_BlockLinear(packed, scales, k, act_bits), (torch.from_numpy(x),), strict=False)
    path = tmp_path / "block.pte"
    path.write_bytes(to_edge_transform_and_lower(program).to_executorch().buffer)
    load_et_ops()
    got = Runtime.get().load_program(str(path)).load_method("forward").execute([torch.from_numpy(x)])[0].numpy()
    want = formats.matmul_blocks(x, packed, scales, k, act_bits)
    if act_bits == 8:
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("k", [1, 127, 128, 300, 2048])
def test_gather_rows_exact(layout, k):
    """The ternary embedding lookup: rows of scale * T, bit for bit with the reference, repeated and any order."""
    t, packed, block_scales, _ = problem(10 + k, 1, 23, k)
    scales = block_scales if layout == BLOCK else np.linspace(-1.5, 2.0, 23).astype(np.float32)
    ids = np.array([22, 0, 5, 5, 13])
    got = K.ternary_gather(packed, scales, k, ids, scale_layout=layout)
    want = formats.gather_rows(packed, scales, k, ids, layout)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    weights = dense_weights(t, block_scales) if layout == BLOCK else t * scales.astype(np.float64)[:, None]
    np.testing.assert_array_equal(want, weights[ids].astype(np.float32))


def test_gather_refuses_ids_outside_the_table():
    _, packed, scales, _ = problem(11, 1, 4, 200)
    for bad in ([4], [-1], [0, 7]):
        with pytest.raises(ValueError, match="outside the table's 4 rows"):
            K.ternary_gather(packed, scales, 200, bad, scale_layout=BLOCK)
