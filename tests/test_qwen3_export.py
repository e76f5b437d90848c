"""Ternary-Bonsai (Qwen3, one fp16 scale per 128 weights) exported ternary: every linear, the embedding and the
head as t2g in the .pte and the .onnx (custom op and stock MatMulNBits), against transformers' Qwen3ForCausalLM
on the dequantized weights (logits and greedy tokens), through the CLI, and the artifacts' sizes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from hf_parity import decode_errors, hf_greedy
from safetensors.torch import load_file, save_file

from bonsai_export import artifact as A
from bonsai_export import checkpoint
from bonsai_export.errors import BonsaiError
from bonsai_export.export import export
from bonsai_export.export import onnx_nodes as N
from bonsai_export.export.executorch import PTE_TENSOR_ALIGNMENT
from bonsai_export.generate import greedy
from bonsai_export.model import build_model
from bonsai_export.ternary_layers import BlockTernaryEmbedding, BlockTernaryLinear
from bonsai_export.reference import folded_llama
from bonsai_export.runners import open_runner, positions
from bonsai_export.synthetic import make_checkpoint

MAX_SEQ = 64
NEW_TOKENS = 16
# fp32 against fp32 on identical weights: only the summation order differs (as tests/test_qwen3.py allows).
LOGIT_ATOL = 1e-4
# Stock MatMulNBits at accuracy_level 4 quantizes activations to int8 per block of 128 (the only fast level:
# one 2048 x 2048 matmul of one token measured 70 ms at level 0, 0.26 ms at level 4). On these models that moves
# the logits by at most 0.095 / 0.113 of their std (tied / untied), 0.015 on average; the same graph at level 0 is
# float rounding (test below). int8 activations in our own kernels: the same order.
STOCK_MAX_REL = 0.25
STOCK_MEAN_REL = 0.03
PROMPT = [1024, 5, 77, 300, 12, 999, 401, 8, 1100, 64, 3, 250]
# An fp16 KV cache rounds every cached K and V value (relative 2**-11): measured 1.6e-3 on the logits here.
F16_CACHE_ATOL = 1e-2


def _group_ternary(shape, gen) -> torch.Tensor:
    """bf16 W = s_g * t with one fp16-exact magnitude per group of 128 (Ternary-Bonsai's unpacked form)."""
    t = torch.randint(-1, 2, shape, generator=gen).float()
    s = (0.5 + torch.rand(shape[0], shape[1] // 128, generator=gen)) * 0.03
    return (t * s.to(torch.bfloat16).float().repeat_interleave(128, dim=1)).to(torch.bfloat16)


def untie(folder: Path, out: Path) -> Path:
    """The tiny folder with its own group-ternary lm_head (Ternary-Bonsai-8B's layout)."""
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    tensors = load_file(out / "model.safetensors")
    tensors["lm_head.weight"] = _group_ternary(tuple(tensors["model.embed_tokens.weight"].shape),
                                               torch.Generator().manual_seed(7))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    tied = make_checkpoint("ternary-bonsai-tiny", root / "tied", seed=0, progress=False)
    return {"tied": tied, "untied": untie(tied, root / "untied")}


@pytest.fixture(scope="module")
def artifacts(folders, tmp_path_factory):
    """Per checkpoint: a --format all folder (.pte + custom .onnx) and a stock .onnx, float activations."""
    out = {}
    for name, folder in folders.items():
        root = tmp_path_factory.mktemp(f"art-{name}")
        export(folder, root / "all", A.ExportConfig(format="all", act_quant="none", max_seq_len=MAX_SEQ))
        export(folder, root / "stock", A.ExportConfig(format="onnx", act_quant="none", ternary_op="stock",
                                                      max_seq_len=MAX_SEQ))
        out[name] = root
    return out


@pytest.fixture(scope="module")
def references(folders):
    return {name: folded_llama(checkpoint.load(f, progress=False)) for name, f in folders.items()}


@pytest.mark.parametrize("backend", ["pte", "onnx"])
@pytest.mark.parametrize("name", ["tied", "untied"])
def test_artifact_logits_and_greedy_tokens_equal_transformers_qwen3(artifacts, references, name, backend):
    runner = open_runner(artifacts[name] / "all", backend=backend)
    errors = decode_errors(runner, references[name], PROMPT, NEW_TOKENS)
    assert max(errors) <= LOGIT_ATOL, errors
    tokens = greedy(runner, PROMPT, NEW_TOKENS)
    assert tokens == hf_greedy(references[name], PROMPT, NEW_TOKENS) and len(set(tokens)) > 1


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_export_ready_model_is_t2g_and_equals_transformers(folders, references, name):
    model = build_model(checkpoint.load(folders[name], progress=False), A.ExportConfig(act_quant="none",
                                                                                       max_seq_len=MAX_SEQ))
    linears = [m for m in model.layers.modules() if hasattr(m, "scale_layout")]
    assert len(linears) == 4 * model.args.n_layers and all(isinstance(m, BlockTernaryLinear) for m in linears)
    assert isinstance(model.embed_tokens, BlockTernaryEmbedding) and isinstance(model.lm_head, BlockTernaryLinear)
    assert (model.lm_head.packed is model.embed_tokens.packed) == (name == "tied")
    assert model.lm_head.scales.dtype == torch.float16 and model.lm_head.act_bits == 0
    with torch.no_grad():
        got = model(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
        want = references[name](torch.tensor([PROMPT])).logits
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)
    assert greedy_eager(model) == hf_greedy(references[name], PROMPT, NEW_TOKENS)


def greedy_eager(model) -> list[int]:
    from bonsai_export.runners import EagerRunner

    return greedy(EagerRunner(model, Path(".")), PROMPT, NEW_TOKENS)


def test_embedding_rows_are_exactly_scale_times_trit(folders):
    ckpt = checkpoint.load(folders["tied"], progress=False)
    model = build_model(ckpt, A.ExportConfig(act_quant="none", max_seq_len=MAX_SEQ))
    ids = torch.tensor([[0, 5, 1151, 5]])
    want = ckpt.ternary["model.embed_tokens"].folded()[ids[0]]
    assert torch.equal(model.embed_tokens(ids)[0], want)


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_stock_onnx_is_the_same_model_up_to_its_activation_quantization(artifacts, references, name):
    runner = open_runner(artifacts[name] / "stock")
    with torch.no_grad():
        want = references[name](torch.tensor([PROMPT])).logits
    got = runner(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
    assert_quantization_close(got, want)


def assert_quantization_close(got: torch.Tensor, want: torch.Tensor) -> None:
    delta, std = (got - want).abs(), float(want.std())
    assert float(delta.max()) <= STOCK_MAX_REL * std and float(delta.mean()) <= STOCK_MEAN_REL * std, (
        float(delta.max()) / std, float(delta.mean()) / std)


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_stock_graph_without_activation_quantization_equals_transformers(folders, references, name, tmp_path,
                                                                          monkeypatch):
    """The stock graph's weights (MatMulNBits bits 2, block 128, explicit zero points; the embedding gathered from
    the head's B) are exact: at accuracy_level 0 (float activations, too slow to ship) it is float rounding."""
    monkeypatch.setattr(N, "NBITS_ACCURACY_LEVEL", 0)
    export(folders[name], tmp_path / "art", A.ExportConfig(format="onnx", act_quant="none", ternary_op="stock",
                                                          max_seq_len=MAX_SEQ))
    runner = open_runner(tmp_path / "art")
    errors = decode_errors(runner, references[name], PROMPT, 4)
    assert max(errors) <= LOGIT_ATOL, errors


def _nodes(folder: Path, op: str) -> list:
    return [n for n in onnx.load(str(folder / A.ONNX_FILE)).graph.node if n.op_type == op]


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_graphs_hold_only_t2g_matmuls(artifacts, name):
    layers = A.read_manifest(artifacts[name] / "all").model.n_layers
    custom = _nodes(artifacts[name] / "all", "TernaryMatMul")
    attrs = [{a.name: a.i for a in n.attribute} for n in custom]
    assert len(custom) == 4 * layers + 1 and all(a["scale_layout"] == 1 and a["act_bits"] == 0 for a in attrs)
    stock = _nodes(artifacts[name] / "stock", "MatMulNBits")
    attrs = [{a.name: a.i for a in n.attribute} for n in stock]
    assert len(stock) == 4 * layers + 1 and all(len(n.input) == 4 for n in stock)  # explicit zero points
    assert all((a["bits"], a["block_size"]) == (2, 128) for a in attrs)
    for folder in (artifacts[name] / "all", artifacts[name] / "stock"):
        assert not _nodes(folder, "MatMul") and not _nodes(folder, "Gemm")  # no dense weight anywhere
        assert len(_nodes(folder, "RMSNormalization")) == 4 * layers + 1  # q/k norms beside the 2 per layer + 1


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_artifacts_are_the_packed_size(artifacts, folders, name):
    """Each file holds the t2g weights once (a tied table once for embedding and head) plus the RoPE tables and
    the program: no dense copy of any weight (the dense fp32 table alone would be 1.2 MB, bf16 0.6 MB)."""
    manifest = A.read_manifest(artifacts[name] / "all")
    shape = manifest.model
    assert (shape.ternary_format, shape.embedding_format, shape.head_format) == ("t2g", "t2g", "t2g")
    assert shape.bits_per_ternary_weight == 2.125
    table = shape.vocab_size * shape.dim * 17 // 64  # 2 bits per weight + an fp16 per 128
    packed = shape.ternary_bytes + table * (2 if name == "untied" else 1)
    assert shape.head_bytes == table
    rope = MAX_SEQ * shape.head_dim * 4 * 2
    sizes = {"pte": (artifacts[name] / "all" / A.PTE_FILE).stat().st_size,
             "onnx": (artifacts[name] / "all" / A.ONNX_FILE).stat().st_size,
             "stock": (artifacts[name] / "stock" / A.ONNX_FILE).stat().st_size}
    model = build_model(checkpoint.load(folders[name], progress=False), A.ExportConfig(max_seq_len=MAX_SEQ))
    # the .pte starts every constant on a page: at most one page of padding each
    constants = [n for n, _ in [*model.named_buffers(), *model.named_parameters()] if "cache" not in n]
    padding = len(constants) * PTE_TENSOR_ALIGNMENT
    # stock: its scales are float32 (MatMulNBits' type), 2.25 bits a weight
    limits = {"pte": packed + rope + padding + 160_000, "onnx": packed + rope + 64_000,
              "stock": packed * 18 // 17 + rope + 64_000}
    assert all(sizes[k] <= limits[k] for k in sizes), (sizes, limits)
    data = (artifacts[name] / "all" / A.PTE_FILE).read_bytes()
    embed = checkpoint.load(folders[name], progress=False).ternary["model.embed_tokens"]
    assert data.count(model.embed_tokens.packed.numpy().tobytes()[:4096]) == 1
    assert data.count(embed.folded().to(torch.bfloat16).view(torch.int16).numpy().tobytes()[:256]) == 0


def test_int8_activations_run_the_t2g_int8_kernels(folders, tmp_path, references):
    """act_quant int8: every matmul, the head's included, takes int8 activations (block sums in int32); the
    custom .onnx equals the eager export-ready model."""
    cfg = A.ExportConfig(format="onnx", act_quant="int8", max_seq_len=MAX_SEQ)
    model = build_model(checkpoint.load(folders["tied"], progress=False), cfg)
    assert {m.act_bits for m in model.modules() if hasattr(m, "act_bits")} == {8}
    export(folders["tied"], tmp_path / "art", cfg)
    got = open_runner(tmp_path / "art")(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
    with torch.no_grad():
        want = model(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
        ref = references["tied"](torch.tensor([PROMPT])).logits
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)
    assert_quantization_close(want, ref)


def _planned_bytes(pte: Path) -> int:
    from executorch.exir._serialize._program import deserialize_pte_binary
    program = deserialize_pte_binary(pte.read_bytes())
    return sum(getattr(program, "program", program).execution_plan[0].non_const_buffer_sizes)


@pytest.fixture(scope="module")
def f16_cache_folder(folders, tmp_path_factory):
    """--kv-cache f16, .pte and custom .onnx, float activations."""
    out = tmp_path_factory.mktemp("f16") / "all"
    export(folders["tied"], out, A.ExportConfig(format="all", act_quant="none", max_seq_len=MAX_SEQ, kv_cache="f16"))
    return out


@pytest.mark.parametrize("backend", ["pte", "onnx"])
def test_f16_kv_cache_keeps_transformers_tokens(f16_cache_folder, folders, references, backend):
    """--kv-cache f16: against transformers only the fp16 rounding of the cached K and V shows (logits within
    F16_CACHE_ATOL, the same greedy tokens), and the export-ready model computes what the artifact computes."""
    runner = open_runner(f16_cache_folder, backend=backend)
    errors = decode_errors(runner, references["tied"], PROMPT, NEW_TOKENS)
    assert LOGIT_ATOL < max(errors) <= F16_CACHE_ATOL, errors
    assert greedy(runner, PROMPT, NEW_TOKENS) == hf_greedy(references["tied"], PROMPT, NEW_TOKENS)
    cfg = A.read_manifest(f16_cache_folder).options
    assert cfg.kv_cache == "f16" and not cfg.exact
    model = build_model(checkpoint.load(folders["tied"], progress=False), cfg)
    assert {b.dtype for n, b in model.named_buffers() if ".cache." in n} == {torch.float16}
    with torch.no_grad():
        want = model(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
    runner.reset()
    # float rounding before the fp16 one can land a cached value one fp16 step away (2.4e-4 measured)
    torch.testing.assert_close(runner(torch.tensor([PROMPT]), positions(0, len(PROMPT))), want, rtol=0,
                               atol=F16_CACHE_ATOL / 10)


def _planned_bytes(pte: Path) -> int:
    from executorch.exir._serialize._program import deserialize_pte_binary
    program = deserialize_pte_binary(pte.read_bytes())
    return sum(getattr(program, "program", program).execution_plan[0].non_const_buffer_sizes)


def test_f16_kv_cache_halves_the_caches(f16_cache_folder, artifacts):
    """The .pte plans half the caches' memory (K and V of every layer at 2 bytes instead of 4); the .onnx takes
    and gives fp16 caches and casts the new K and V rows to fp16 before its attention node."""
    shape = A.read_manifest(f16_cache_folder).model
    halved = shape.n_layers * 2 * shape.n_kv_heads * MAX_SEQ * shape.head_dim * 2
    f32_pte, f16_pte = artifacts["tied"] / "all" / A.PTE_FILE, f16_cache_folder / A.PTE_FILE
    assert _planned_bytes(f32_pte) - _planned_bytes(f16_pte) == halved
    graph = onnx.load(f16_cache_folder / A.ONNX_FILE, load_external_data=False).graph
    caches = [v for v in [*graph.input, *graph.output] if v.name.startswith(("past_key_values.", "present."))]
    assert len(caches) == 4 * shape.n_layers
    assert {v.type.tensor_type.elem_type for v in caches} == {onnx.TensorProto.FLOAT16}
    casts = [n for n in _nodes(f16_cache_folder, "Cast") if "/attn/" in n.name]
    assert len(casts) == 2 * shape.n_layers


def test_f16_kv_cache_is_refused_where_the_runtime_owns_the_cache():
    for options in ({"format": "gguf"}, {"format": "onnx", "ternary_op": "stock"}, {"format": "all",
                                                                                   "ternary_op": "stock"}):
        with pytest.raises(BonsaiError, match="--kv-cache f16: the .pte and the custom-op .onnx have it") as err:
            A.ExportConfig(kv_cache="f16", **options)
        assert "\n" not in str(err.value)


def test_lossy_table_formats_and_inexact_scales_are_refused(folders, tmp_path):
    ckpt = checkpoint.load(folders["tied"], progress=False)
    for option in ("head", "embedding"):
        with pytest.raises(BonsaiError, match=f"--{option} int8: .* group-ternary .* t2g") as err:
            build_model(ckpt, A.ExportConfig(max_seq_len=MAX_SEQ, **{option: "int8"}))
        assert "\n" not in str(err.value)
    w = ckpt.ternary["model.layers.1.mlp.down_proj"]
    w.scales[3, 1] = 1e-9  # below fp16's subnormals: t2g could not store it
    with pytest.raises(BonsaiError, match=r"model.layers.1.mlp.down_proj: scale \[3, 1\] .* not an fp16 value"):
        build_model(ckpt, A.ExportConfig(max_seq_len=MAX_SEQ))


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "bonsai_export", "--quiet", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def test_cli_exports_runs_and_validates_ternary_bonsai(folders, tmp_path):
    out = tmp_path / "art"
    proc = cli("export", folders["tied"], "-o", out, "--format", "onnx", "--act-quant", "none",
               "--max-seq-len", MAX_SEQ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("--json", "run", out, "--prompt", "Hello world", "--max-new-tokens", 8)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)["tokens"]) == 8
    proc = cli("validate", out, "--report", tmp_path / "v", "--max-text-tokens", 128, "--window", 32,
               "--steps", 8, "--max-new-tokens", 8, "--no-gates")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["decode"]["greedy_identical"] and report["generation"]["tokens_equal"]
    proc = cli("export", folders["tied"], "-o", tmp_path / "bad", "--head", "int4")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "t2g" in proc.stderr
