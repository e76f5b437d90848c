"""The ONNX artifact: parity with the eager model (custom and stock ternary ops), onnxruntime-genai, I/O contract,
external data, bad inputs, and the message for a custom-op model opened without our library."""

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bonsai_export import artifact as A
from bonsai_export import checkpoint, formats
from bonsai_export import metadata as M
from bonsai_export.errors import BonsaiError
from bonsai_export.export import export
from bonsai_export.export import onnx as O
from bonsai_export.export import onnx_nodes as N
from bonsai_export.generate import greedy
from bonsai_export.model import build_model
from bonsai_export.native import native_dir
from bonsai_export.runners import OnnxRunner, onnx_session, open_runner, positions

MAX_SEQ = 96
PROMPTS = {"short": [1, 415, 2936, 9060, 285, 1142, 754], "long": [1] + list(range(3000, 3022))}
DECODE_STEPS = 48
# The head: weight-only bonsai::dense_linear formats all match (measured max|delta| <= 3e-6 x std for bf16, int8
# and int4 in act-quant none); bf16 is the one whose stock mapping (a float MatMul) is exact too.
HEAD = "bf16"
# max|delta| / std(logits) allowed per call. custom: the bound. stock: MatMulNBits (accuracy_level 4)
# quantizes activations to int8 per block of 64 along K; measured on the tiny model over both prompts and 48 decode
# steps: 0.079-0.089 (act-quant none, vs float eager) and 0.143-0.155 (int8, vs per-token int8 eager); for scale,
# eager int8 vs eager none differ by 0.144. The bounds leave ~1.7x headroom.
TOL = {"custom": 1e-3, "stock": {"none": 0.15, "int8": 0.25}}
# Per-token int8 activations are a step function. ONNX Runtime's float ops (RMSNormalization, Sigmoid, attention)
# round differently from PyTorch's in the last bit (measured: 7e-7 at layer 0's q_proj input); when an activation
# sits on a .5 boundary of the quantizer, that moves it one code. Of 4 prompts x 49 steps measured, only the "long"
# prompt's prefill hits one (one code of layer 0's o_proj input; the KV cache then carries it): max|delta| 0.073 x
# std, every other step of every prompt bit-equal to eager. A custom int8 step may therefore exceed TOL["custom"]
# only up to INT8_FLIP_TOL, and only after such a flip; a greedy difference is then allowed only at a near-tie.
INT8_FLIP_TOL = 0.1
VARIANTS = [("custom", "none"), ("custom", "int8"), ("stock", "none"), ("stock", "int8")]


def _tol(op: str, act: str) -> float:
    return TOL["custom"] if op == "custom" else TOL["stock"][act]


@pytest.fixture(scope="module")
def eager(tiny_ckpt):
    ckpt = checkpoint.load(tiny_ckpt, progress=False)
    return {act: build_model(ckpt, A.ExportConfig(act_quant=act, head=HEAD, max_seq_len=MAX_SEQ))
            for act in formats.ACT_MODES}


@pytest.fixture(scope="module", params=VARIANTS, ids=["-".join(v) for v in VARIANTS])
def exported(request, tiny_ckpt, tmp_path_factory):
    op, act = request.param
    out = tmp_path_factory.mktemp(f"onnx-{op}-{act}") / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="onnx", act_quant=act, head=HEAD, ternary_op=op, max_seq_len=MAX_SEQ))
    return out, op, act


@pytest.mark.parametrize("prompt", PROMPTS)
def test_onnx_matches_eager_over_prefill_and_48_decode_steps(exported, eager, prompt):
    out, op, act = exported
    model, runner = eager[act], open_runner(out)
    assert isinstance(runner, OnnxRunner) and runner.name == f"onnx-{op}"
    model.reset_cache()
    tokens, pos, worst, flipped = torch.tensor([PROMPTS[prompt]]), 0, 0.0, False
    for step in range(DECODE_STEPS + 1):
        with torch.no_grad():
            want = model(tokens, positions(pos, tokens.shape[1]))
        got = runner(tokens, positions(pos, tokens.shape[1]))
        assert got.shape == want.shape and got.dtype == torch.float32
        err, std = float((got - want).abs().max()), float(want.std())
        worst = max(worst, err / std)
        if op == "custom" and act == "int8" and err > TOL["custom"] * std:
            flipped = True  # an int8 rounding flip (see INT8_FLIP_TOL)
        tol = INT8_FLIP_TOL if flipped else _tol(op, act)
        assert err <= tol * std, f"step {step}: max|delta| {err} > {tol} x std {std}"
        nxt = int(want[0, -1].argmax())
        if int(got[0, -1].argmax()) != nxt:
            # Only where activations are quantized differently (stock, or a custom int8 flip) and only at a
            # near-tie: the eager top-2 margin is within the measured deviation, never a real disagreement.
            assert op == "stock" or flipped, f"greedy token differs at step {step}"
            top = want[0, -1].topk(2).values
            margin, err_last = float(top[0] - top[1]), float((got - want)[0, -1].abs().max())
            assert margin <= 2 * err_last, f"greedy token differs at step {step} (margin {margin} > 2 x {err_last})"
        pos += tokens.shape[1]
        tokens = torch.tensor([[nxt]])
    print(f"{op}/{act}/{prompt}: max|delta|/std = {worst:.3g}")


def test_onnxruntime_genai_generates_the_same_greedy_tokens(exported):
    _genai_matches_our_runner(exported[0])


def test_onnxruntime_genai_runs_the_f16_cache(tiny_ckpt, tmp_path):
    """genai takes the caches' type from the graph: an `--kv-cache f16` folder runs as is."""
    out = tmp_path / "f16"
    export(tiny_ckpt, out, A.ExportConfig(format="onnx", head=HEAD, kv_cache="f16", max_seq_len=MAX_SEQ))
    _genai_matches_our_runner(out)


def _genai_matches_our_runner(out):
    if importlib.util.find_spec("onnxruntime_genai") is None:
        pytest.skip("onnxruntime-genai is not installed (pip install 'bonsai-export[genai]')")
    import onnxruntime_genai as og

    ids, n = PROMPTS["short"], 24
    model = og.Model(str(out))  # genai_config.json names our library relative to the folder
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens([ids])
    tokens = []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    assert tokens == greedy(open_runner(out), ids, n)


def test_graph_passes_the_checker_with_genai_io_names(exported, tiny_ckpt):
    out, op, _ = exported
    onnx.checker.check_model(str(out / A.ONNX_FILE), full_check=True)
    proto = onnx.load(str(out / A.ONNX_FILE))
    args = checkpoint.load(tiny_ckpt, progress=False).args
    kv = [f".{i}.{t}" for i in range(args.n_layers) for t in ("key", "value")]
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    assert inputs == ["input_ids", "attention_mask", "position_ids"] + ["past_key_values" + k for k in kv]
    assert outputs == ["logits"] + ["present" + k for k in kv]
    cache = [d.dim_param or d.dim_value for d in proto.graph.input[3].type.tensor_type.shape.dim]
    assert cache == ["batch", args.n_kv_heads, "past_seq", args.head_dim]
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    n_ternary = 4 * args.n_layers  # q/k/v and gate/up run fused
    if op == "custom":
        assert ops.count(("bonsai", "TernaryMatMul")) == n_ternary and ("bonsai", "DenseMatMul") in ops
        assert ops.count(("bonsai", "Attention")) == args.n_layers and "GroupQueryAttention" not in dict(ops).values()
    else:
        nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == n_ternary and not any(d == "bonsai" for d, _ in ops)
        assert ops.count((N.MS_DOMAIN, "GroupQueryAttention")) == args.n_layers
        attrs = {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (2, N.NBITS_BLOCK, 4)
    assert len({n.name for n in proto.graph.node}) == len(proto.graph.node)  # deterministic, unique names


def test_manifest_genai_config_and_library_in_the_folder(exported):
    import json

    out, op, _ = exported
    manifest = A.read_manifest(out)
    entry = manifest.artifacts[0]
    assert (entry.type, entry.ternary_op, manifest.options.ternary_op) == ("onnx", op, op)
    # the options are inside the .onnx too, and the runner checks them against the manifest's
    props = {p.key: p.value for p in onnx.load(str(out / A.ONNX_FILE), load_external_data=False).metadata_props}
    assert M.onnx_options(props, A.ONNX_FILE) == manifest.options
    assert props[M.ONNX_META_FORMAT_VERSION] == str(A.FORMAT_VERSION)
    cfg = json.loads((out / A.GENAI_CONFIG).read_text())
    library = cfg["model"]["decoder"]["session_options"].get("custom_ops_library")
    assert library == (A.ORT_OPS_LIB if op == "custom" else None)
    assert (library is None) or (out / library).is_file()
    assert set(manifest.files) == {p.name for p in out.iterdir()} - {A.MANIFEST}


def test_runner_rewinds_and_resets(exported):
    out, _, _ = exported
    runner = open_runner(out)
    first = runner(torch.tensor([PROMPTS["short"]]), positions(0, len(PROMPTS["short"])))
    runner(torch.tensor([[5]]), torch.tensor([len(PROMPTS["short"])]))
    again = runner(torch.tensor([PROMPTS["short"]]), positions(0, len(PROMPTS["short"])))  # pos 0 again: the cache rewinds
    assert torch.equal(first, again)
    with pytest.raises(BonsaiError, match="cache holds only"):
        runner(torch.tensor([[5]]), torch.tensor([40]))
    with pytest.raises(BonsaiError, match=f"exceed the artifact's max_seq_len {MAX_SEQ}"):
        runner(torch.ones(1, 4, dtype=torch.long), torch.tensor([MAX_SEQ - 2]))


def test_custom_model_without_our_library_is_a_clear_error(tmp_path, tiny_ckpt):
    out = tmp_path / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="onnx", head=HEAD, max_seq_len=16))
    with pytest.raises(BonsaiError, match="custom ops of libbonsai_ort_ops.so; register it"):
        onnx_session(out / A.ONNX_FILE, None)
    (out / A.ORT_OPS_LIB).unlink()
    with pytest.raises(BonsaiError, match="libbonsai_ort_ops.so: missing"):
        open_runner(out)


def _single_node(op: str, inputs: dict, attrs: dict):
    """A one-node model over bonsai::{op}: x is the graph input, the others initializers."""
    node = helper.make_node(op, list(inputs), ["y"], domain="bonsai", **attrs)
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inputs.items() if k != "x"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("bonsai", 1)],
                              ir_version=10)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(native_dir() / A.ORT_OPS_LIB))
    return ort.InferenceSession(model.SerializeToString(), opts)


BAD_TERNARY = [  # (K attribute, x shape, packed shape, scales length, act_bits, message)
    dict(k=130, x=(2, 130), packed=(4, 32), n=4, act_bits=0, match="do not fit K=130"),
    dict(k=64, x=(2, 65), packed=(4, 32), n=4, act_bits=0, match="must end in in_features=64"),
    dict(k=64, x=(2, 64), packed=(4, 32), n=3, act_bits=0, match="do not fit K=64"),
    dict(k=64, x=(2, 64), packed=(4, 32), n=4, act_bits=4, match="act_bits must be 0 or 8"),
]
assert len(BAD_TERNARY) == 4


@pytest.mark.parametrize("case", BAD_TERNARY, ids=lambda c: c["match"])
def test_ternary_matmul_rejects_bad_inputs_with_an_ort_error(case):
    inputs = {"x": None, "packed": np.full(case["packed"], 0x55, np.uint8), "scales": np.ones(case["n"], np.float32)}
    sess = _single_node("TernaryMatMul", inputs, {"in_features": case["k"], "act_bits": case["act_bits"]})
    with pytest.raises(Exception, match=case["match"]):
        sess.run(None, {"x": np.ones(case["x"], np.float32)})


def test_wrong_dtypes_and_bits_are_refused():
    inputs = {"x": None, "packed": np.full((4, 32), 0x55, np.uint8), "scales": np.ones(4, np.float64)}
    with pytest.raises(Exception, match="TernaryMatMul"):  # ONNX Runtime checks types when the session is built
        _single_node("TernaryMatMul", inputs, {"in_features": 64, "act_bits": 0})
    with pytest.raises(Exception, match="DenseMatMul"):  # int8 codes take bf16 group scales, not float32
        _single_node("DenseMatMul", {"x": None, "weight": np.ones((4, 64), np.int8),
                                     "scales": np.ones((4, 2), np.float32)}, {"in_features": 64, "weight_bits": 8})
    bf16_ones = np.ones((4, 2), np.float32).astype(N.to_bf16_array(torch.ones(1)).dtype)
    sess = _single_node("DenseMatMul", {"x": None, "weight": np.ones((4, 64), np.int8), "scales": bf16_ones},
                        {"in_features": 64, "weight_bits": 4})
    with pytest.raises(Exception, match="weight_bits 4 does not fit the weight's dtype"):
        sess.run(None, {"x": np.ones((1, 64), np.float32)})


def test_ternary_and_dense_matmul_nodes_match_the_reference():
    rng = np.random.default_rng(0)
    k, n = 200, 37
    t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    scales = rng.random(n).astype(np.float32)
    x = rng.standard_normal((3, 5, k)).astype(np.float32)
    for act_bits in (0, 8):
        sess = _single_node("TernaryMatMul", {"x": None, "packed": formats.pack(t), "scales": scales},
                            {"in_features": k, "act_bits": act_bits})
        got = sess.run(None, {"x": x})[0]
        want = formats.matmul(x.reshape(-1, k), formats.pack(t), scales, k, act_bits).reshape(3, 5, n)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(x).sum(-1).max() * scales.max()))
        if act_bits == 8:
            np.testing.assert_array_equal(got, want)  # bit-exact by the format's definition
    from bonsai_export import ops
    from bonsai_export.dense import FORMATS, quantize_weight

    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32))
    for fmt, spec in FORMATS.items():
        bits = spec.bits
        q, s = quantize_weight(w, fmt)
        weight = N.to_bf16_array(q) if bits == 16 else q.numpy()
        scales = s.numpy() if bits == 16 else N.to_bf16_array(s)
        sess = _single_node("DenseMatMul", {"x": None, "weight": weight, "scales": scales},
                            {"in_features": k, "weight_bits": bits})
        want = ops.dense_weight(q, s, k, bits).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ want.T, rtol=1e-5, atol=1e-4)


def test_stock_mapping_is_exact_without_activation_quantization():
    """MatMulNBits bits=2 with code = t + 2 and block scale = channel scale is the ternary matrix exactly."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    k, n = 200, 24
    t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    scales = rng.random(n).astype(np.float32)
    b, s = N.nbits_pack(t, 2, N.NBITS_BLOCK, scales)
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=2,
                            block_size=N.NBITS_BLOCK, accuracy_level=0)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(b, "b"), numpy_helper.from_array(s, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    x = rng.standard_normal((4, k)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, (x @ t.T.astype(np.float32)) * scales, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_stock_head_mapping_is_exact(fmt, monkeypatch):
    """GraphBuilder.make_head on stock ops is the custom op's head matrix: int8 (MatMulNBits bits=8, blocks of
    DENSE_GROUP) exactly, int4 (MatMulNBits bits=4 plus the offsets through the group sums) within a float rounding
    per weight; a group of scale 0 decodes to its offset. Identity rows as x give y = W^T; accuracy_level 0, so
    MatMulNBits does not quantize them."""
    monkeypatch.setattr(N, "NBITS_ACCURACY_LEVEL", 0)
    import onnxruntime as ort

    from bonsai_export import ops
    from bonsai_export.dense import DenseLinear

    rng = np.random.default_rng(2)
    k, n = 100, 24
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[0, :32] = 0.25  # a constant group: int4 scale 0, offset 0.25
    head = DenseLinear(torch.from_numpy(w), fmt)
    g = N.GraphBuilder("stock")
    y = g.make_head(head, "x")
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.eye(k, dtype=np.float32)})[0]
    want = ops.dense_weight(head.weight, head.scales, k, head.bits).numpy().T
    if fmt == "int8":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.spacing(np.abs(want).max()))
        assert float(want[0, 0]) == 0.25


def test_external_data_past_the_limit(tmp_path, tiny_ckpt, monkeypatch, eager):
    monkeypatch.setattr(O, "EXTERNAL_DATA_LIMIT", 0)
    out = tmp_path / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="onnx", act_quant="none", head=HEAD, ternary_op="stock",
                                          max_seq_len=MAX_SEQ))
    assert (out / "model.onnx.data").stat().st_size > 10 * (out / "model.onnx").stat().st_size
    assert A.read_manifest(out).artifacts[0].files == (A.ONNX_FILE, A.ONNX_DATA_FILE)
    onnx.checker.check_model(str(out / "model.onnx"))
    eager["none"].reset_cache()
    tokens = torch.tensor([PROMPTS["short"]])
    with torch.no_grad():
        want = eager["none"](tokens, positions(0, tokens.shape[1]))
    got = open_runner(out)(tokens, positions(0, tokens.shape[1]))
    assert float((got - want).abs().max()) <= TOL["stock"]["none"] * float(want.std())


DENSE_CASES = [dict(embedding="int8", head="int8"), dict(embedding="bf16", head="int4"),
               dict(embedding="bf16", head="int8", head_act_quant="int8"),
               dict(embedding="bf16", head="int4", head_act_quant="int8")]
assert len(DENSE_CASES) == 4


@pytest.mark.parametrize("dense", DENSE_CASES, ids=lambda d: f"{d['embedding']}-{d['head']}-{d.get('head_act_quant', 'none')}")
def test_group_wise_embedding_and_heads_match_eager(tmp_path, tiny_ckpt, dense):
    """bonsai::DenseMatMul's int8 and int4 heads (float or int8 activations: act_bits) and the int8 embedding's
    Gather / Mul graph: float rounding only (TOL["custom"]), as the bf16 head."""
    cfg = A.ExportConfig(format="onnx", act_quant="none", max_seq_len=MAX_SEQ, **dense)
    export(tiny_ckpt, tmp_path / "art", cfg)
    model, runner = build_model(checkpoint.load(tiny_ckpt, progress=False), cfg), open_runner(tmp_path / "art")
    tokens = torch.tensor([PROMPTS["long"]])
    with torch.no_grad():
        want = model(tokens, positions(0, tokens.shape[1]))
    got = runner(tokens, positions(0, tokens.shape[1]))
    assert float((got - want).abs().max()) <= TOL["custom"] * float(want.std())


def test_attention_in_the_shared_cache_matches_eager_over_calls(tmp_path, tiny_ckpt, eager):
    """GroupQueryAttention writing into the runner's preallocated cache: a prompt, one token, two tokens."""
    out = tmp_path / "art"
    export(tiny_ckpt, out, A.ExportConfig(format="onnx", act_quant="none", head=HEAD, max_seq_len=MAX_SEQ))
    runner, model = open_runner(out), eager["none"]
    model.reset_cache()
    for tokens, pos in ((PROMPTS["long"], 0), ([7], len(PROMPTS["long"])), ([9, 11], len(PROMPTS["long"]) + 1)):
        with torch.no_grad():
            want = model(torch.tensor([tokens]), positions(pos, len(tokens)))
        got = runner(torch.tensor([tokens]), positions(pos, len(tokens)))
        assert float((got - want).abs().max()) <= TOL["custom"] * float(want.std())


def _attention_session(folder, op: str, heads: int, kv_heads: int, cache=TensorProto.FLOAT):
    """One attention node of `op` (our bonsai::Attention or ORT's GroupQueryAttention) as a whole graph; `cache`:
    the type of key, value and the caches."""
    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_seq"]
    types = [f] + [cache] * 4 + [i32] * 2
    shapes = [["b", "t", "hq"], ["b", "t", "hk"], ["b", "t", "hk"], ["b", kv_heads, "p", "d"],
              ["b", kv_heads, "p", "d"], ["b"], []]
    domain, extra = ("bonsai", {}) if op == "Attention" else (N.MS_DOMAIN, {"do_rotary": 0})
    node = helper.make_node(op, names, ["out", "present_key", "present_value"], domain=domain, num_heads=heads,
                            kv_num_heads=kv_heads, **extra)
    outputs = [helper.make_tensor_value_info(n, t, None)
               for n, t in (("out", f), ("present_key", cache), ("present_value", cache))]
    graph = helper.make_graph([node], "attn", [helper.make_tensor_value_info(n, t, s)
                                                for n, t, s in zip(names, types, shapes)], outputs)
    opsets = [helper.make_opsetid("", O.OPSET), helper.make_opsetid(N.MS_DOMAIN, 1), helper.make_opsetid("bonsai", 1)]
    path = folder / f"{op}-{cache}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=O.IR_VERSION), str(path))
    return onnx_session(path, native_dir() / A.ORT_OPS_LIB)


@pytest.mark.parametrize("shared", [False, True], ids=["copied-past", "shared-buffer"])
def test_our_attention_node_matches_group_query_attention(tmp_path, shared):
    """bonsai::Attention against ORT's own GroupQueryAttention on the same inputs, in both cache modes: a prompt,
    then one token, then three, each call's present fed back as the next past."""
    heads, kv_heads, d, max_len = 8, 2, 16, 24
    ours = _attention_session(tmp_path, "Attention", heads, kv_heads)
    theirs = _attention_session(tmp_path, "GroupQueryAttention", heads, kv_heads)
    rng = np.random.default_rng(0)
    empty = np.zeros((1, kv_heads, max_len if shared else 0, d), np.float32)
    caches = {s: (empty.copy(), empty.copy()) for s in ("ours", "theirs")}
    pos = 0
    for t in (5, 1, 3):
        feed = {"query": rng.standard_normal((1, t, heads * d), np.float32),
                "key": rng.standard_normal((1, t, kv_heads * d), np.float32),
                "value": rng.standard_normal((1, t, kv_heads * d), np.float32),
                "seqlens_k": np.array([pos + t - 1], np.int32), "total_seq": np.array(pos + t, np.int32)}
        got = {}
        for side, sess in (("ours", ours), ("theirs", theirs)):
            k, v = caches[side]
            out, pk, pv = sess.run(None, {**feed, "past_key": k, "past_value": v})
            got[side] = out
            caches[side] = (pk, pv)
        assert caches["ours"][0].shape == (1, kv_heads, max_len if shared else pos + t, d)
        np.testing.assert_allclose(got["ours"], got["theirs"], rtol=1e-5, atol=1e-5)
        for a, b in zip(caches["ours"], caches["theirs"]):
            np.testing.assert_array_equal(a[:, :, :pos + t], b[:, :, :pos + t])
        pos += t


@pytest.mark.parametrize("shared", [False, True], ids=["copied-past", "shared-buffer"])
def test_our_attention_node_with_f16_caches_equals_f32_on_their_values(tmp_path, shared):
    """bonsai::Attention over fp16 key, value and caches (--kv-cache f16): presents hold the fp16 rows as given,
    and the output equals the float32 node's on the same values, bit for bit, over a prompt and two more calls."""
    heads, kv_heads, d, max_len = 8, 2, 16, 24
    sessions = {np.float16: _attention_session(tmp_path, "Attention", heads, kv_heads, TensorProto.FLOAT16),
                np.float32: _attention_session(tmp_path, "Attention", heads, kv_heads)}
    rng = np.random.default_rng(1)
    empty = np.zeros((1, kv_heads, max_len if shared else 0, d), np.float16)
    caches = {np.float16: (empty, empty.copy()), np.float32: (empty.astype(np.float32), empty.astype(np.float32))}
    pos = 0
    for t in (5, 1, 3):
        query = rng.standard_normal((1, t, heads * d), np.float32)
        key, value = (rng.standard_normal((1, t, kv_heads * d)).astype(np.float16) for _ in range(2))
        got = {}
        for dtype, sess in sessions.items():
            k, v = caches[dtype]
            got[dtype], pk, pv = sess.run(None, {"query": query, "key": key.astype(dtype), "value": value.astype(dtype),
                                                 "past_key": k, "past_value": v,
                                                 "seqlens_k": np.array([pos + t - 1], np.int32),
                                                 "total_seq": np.array(pos + t, np.int32)})
            caches[dtype] = (pk, pv)
        assert caches[np.float16][0].dtype == np.float16
        np.testing.assert_array_equal(got[np.float16], got[np.float32])
        for half, wide in zip(caches[np.float16], caches[np.float32]):
            np.testing.assert_array_equal(half[:, :, :pos + t].astype(np.float32), wide[:, :, :pos + t])
        np.testing.assert_array_equal(caches[np.float16][0][0, :, pos:pos + t].transpose(1, 0, 2).reshape(key.shape),
                                      key)
        pos += t


def test_our_attention_node_refuses_positions_outside_the_cache(tmp_path):
    heads, kv_heads, d = 4, 2, 8
    sess = _attention_session(tmp_path, "Attention", heads, kv_heads)
    feed = {"query": np.zeros((1, 2, heads * d), np.float32), "key": np.zeros((1, 2, kv_heads * d), np.float32),
            "value": np.zeros((1, 2, kv_heads * d), np.float32),
            "past_key": np.zeros((1, kv_heads, 4, d), np.float32),
            "past_value": np.zeros((1, kv_heads, 4, d), np.float32), "total_seq": np.array(4, np.int32)}
    for seqlens, match in ((2**31 - 1, "does not fit"), (0, "does not fit"), (-7, "does not fit")):
        with pytest.raises(Exception, match=match):
            sess.run(None, {**feed, "seqlens_k": np.array([seqlens], np.int32)})
    with pytest.raises(Exception, match="does not fit"):  # a present longer than past + new: refused, not allocated
        sess.run(None, {**feed, "seqlens_k": np.array([3], np.int32), "total_seq": np.array(2**31 - 1, np.int32)})
    with pytest.raises(Exception, match="disagree with num_heads"):
        sess.run(None, {**feed, "seqlens_k": np.array([3], np.int32), "query": np.zeros((1, 2, 5), np.float32)})


def test_cli_exports_all_formats_and_runs_the_onnx_folder(tmp_path, tiny_ckpt, capsys):
    from bonsai_export.cli import main

    out = tmp_path / "art"
    assert main(["--quiet", "export", str(tiny_ckpt), "-o", str(out), "--format", "all", "--head", HEAD,
                 "--ternary-op", "stock", "--max-seq-len", "64"]) == 0
    assert set(A.read_manifest(out).kinds) == {"pte", "onnx"}
    assert (out / A.PTE_FILE).is_file() and (out / A.ONNX_FILE).is_file()
    onnx_only = tmp_path / "onnx"
    assert main(["--quiet", "export", str(tiny_ckpt), "-o", str(onnx_only), "--format", "onnx", "--head", HEAD,
                 "--max-seq-len", "64"]) == 0
    capsys.readouterr()
    assert main(["run", str(onnx_only), "--prompt", "Once upon a time", "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert "[onnx-custom:" in err and "prefill" in err and "decode" in err
    with pytest.raises(BonsaiError, match="--ternary-op: expected one of custom, stock"):
        A.ExportConfig(ternary_op="fast")
