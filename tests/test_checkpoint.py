"""Checkpoint ingestion: ternarization, BitNet packing, and one clear error per malformed input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bonsai_export import bitnet, checkpoint
from bonsai_export.errors import BonsaiError


def all_bf16_in(lo: float, hi: float) -> torch.Tensor:
    w = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return w[torch.isfinite(w) & (w >= lo) & (w <= hi)]


def test_ternarize_matches_qlinear_on_every_bf16_in_range():
    w = all_bf16_in(-4, 4)
    assert w.numel() > 30000
    ours = checkpoint.ternarize(w)
    # QLinear: round(clamp(w, -1, 1)) in bf16, and its straight-through forward value w + (q - w).
    q = torch.round(torch.clamp(w, -1, 1))
    ste = w + (q - w)
    assert torch.equal(ours.to(torch.bfloat16), q)
    assert torch.equal(ours.to(torch.bfloat16), ste)
    assert ours[w == 0.5].tolist() == [0] and ours[w == -0.5].tolist() == [0]
    assert ours.dtype == torch.int8


def test_reader_gives_the_ternarized_latent_weights(tiny_ckpt):
    raw = load_file(tiny_ckpt / "model.safetensors")
    ckpt = checkpoint.load(tiny_ckpt, progress=False)
    assert ckpt.format == "qlinear" and len(ckpt.ternary) == 14
    name = "model.layers.1.mlp.down_proj"
    latent = raw[f"{name}.weight"]
    assert (latent.abs() > 1).any() and (latent.abs() == 0.5).any()  # really latent
    assert torch.equal(ckpt.ternary[name].values.to(torch.bfloat16), torch.round(torch.clamp(latent, -1, 1)))
    assert torch.equal(ckpt.ternary[name].scales, raw[f"{name}.scales"].float())


def test_bitnet_pack_layout_by_hand():
    t = torch.tensor([[1, -1], [0, 1], [-1, 0], [1, 1], [0, -1]], dtype=torch.int8)  # out=5 -> rows=2
    packed = bitnet.pack(t)
    assert packed.shape == (2, 2)
    for r in range(2):
        for c in range(2):
            for i in range(4):
                row = i * 2 + r
                expect = t[row, c] + 1 if row < 5 else 1
                assert (int(packed[r, c]) >> (2 * i)) & 3 == expect
    assert torch.equal(bitnet.unpack(packed, 5), t)


def _to_bitnet(src, dst, linear_class):
    """Rewrite a QLinear checkpoint as transformers' packed BitNet format, with per-tensor scales."""
    ckpt = checkpoint.load(src, progress=False)
    tensors = {k: v for k, v in load_file(src / "model.safetensors").items()
               if not k.endswith((".scales", "proj.weight"))}
    scales = {}
    for i, (name, w) in enumerate(ckpt.ternary.items()):
        s = 0.25 + 0.125 * i  # exact in bf16
        tensors[f"{name}.weight"] = bitnet.pack(w.values)
        tensors[f"{name}.weight_scale"] = torch.tensor([s], dtype=torch.bfloat16)
        scales[name] = 1 / s if linear_class == "bitlinear" else s
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class}
    (dst / "config.json").write_text(json.dumps(cfg))
    return ckpt, scales


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
def test_bitnet_round_trip(tiny_ckpt, tiny_copy, linear_class):
    original, scales = _to_bitnet(tiny_ckpt, tiny_copy, linear_class)
    ckpt = checkpoint.load(tiny_copy, progress=False)
    assert ckpt.format == f"bitnet-{linear_class}"
    for name, w in ckpt.ternary.items():
        assert torch.equal(w.values, original.ternary[name].values)
        assert torch.allclose(w.scales, torch.full_like(w.scales, scales[name]), rtol=0, atol=1e-7)


# --- malformed inputs: each names the tensor or field ---

def _edit_tensors(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


Q = "model.layers.0.self_attn.q_proj"
TENSOR_CASES = {
    "missing scales": (lambda t: t.pop(f"{Q}.scales"), rf"{Q}.scales: missing; Bonsai's QLinear format"),
    "missing weight": (lambda t: t.pop(f"{Q}.weight"), rf"{Q}.weight: missing from the checkpoint"),
    "shape": (lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"][:, :100]}),
              rf"{Q}.weight: expected shape \[192, 192\], got \[192, 100\]"),
    "dtype": (lambda t: t.update({f"{Q}.scales": torch.ones(192, dtype=torch.int32)}),
              rf"{Q}.scales: expected a floating-point dtype, got torch.int32"),
    "nan": (lambda t: t[f"{Q}.weight"].__setitem__((3, 4), float("nan")), rf"{Q}.weight: contains NaN or Inf"),
    "inf scale": (lambda t: t[f"{Q}.scales"].__setitem__(7, float("inf")), rf"{Q}.scales: contains NaN or Inf"),
    "bias": (lambda t: t.update({f"{Q}.bias": torch.zeros(192, dtype=torch.bfloat16)}),
             rf"{Q}.bias: biases are not supported"),
    "extra": (lambda t: t.update({"model.layers.0.self_attn.attn_sub_norm.weight": torch.ones(192)}),
              r"model.layers.0.self_attn.attn_sub_norm.weight: unexpected tensor"),
    "embedding": (lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"][:100]}),
                  r"model.embed_tokens.weight: expected shape \[32000, 192\], got \[100, 192\]"),
}


@pytest.mark.parametrize("case", TENSOR_CASES)
def test_malformed_tensors(tiny_copy, case):
    edit, message = TENSOR_CASES[case]
    _edit_tensors(tiny_copy, edit)
    with pytest.raises(BonsaiError, match=message):
        checkpoint.load(tiny_copy, progress=False)


CONFIG_CASES = {
    "rope_scaling": ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"unsupported rope_scaling="),
    "sliding_window": ({"sliding_window": 512}, r"unsupported sliding_window=512"),
    "attention_bias": ({"attention_bias": True}, r"unsupported attention_bias=True"),
    "mlp_bias": ({"mlp_bias": True}, r"unsupported mlp_bias=True"),
    "hidden_act": ({"hidden_act": "gelu"}, r"unsupported hidden_act='gelu'"),
    "missing field": ({"hidden_size": None}, r"field 'hidden_size' has unexpected value None"),
    "gqa": ({"num_key_value_heads": 3}, r"num_attention_heads \(2\) must be a multiple of num_key_value_heads"),
    # a Llama (SiLU MLP) relabelled as BitNet b1.58, whose MLP is ReLU^2: the activation is named
    "bitnet arch": ({"model_type": "bitnet"}, r"hidden_act 'silu' for model_type 'bitnet'"),
    "quant method": ({"quantization_config": {"quant_method": "gptq"}}, r"unsupported quantization_config"),
    "linear class": ({"quantization_config": {"quant_method": "bitnet", "linear_class": "x"}},
                     r"unsupported quantization_config.linear_class 'x'"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_malformed_config(tiny_copy, case):
    changes, message = CONFIG_CASES[case]
    _edit_config(tiny_copy, **changes)
    with pytest.raises(BonsaiError, match=message):
        checkpoint.load(tiny_copy, progress=False)


def test_missing_and_broken_files(tiny_copy, tmp_path):
    (tiny_copy / "tokenizer.json").unlink()
    (tiny_copy / "tokenizer.model").unlink()
    with pytest.raises(BonsaiError, match="no tokenizer.json or tokenizer.model"):
        checkpoint.load(tiny_copy, progress=False)
    (tiny_copy / "config.json").write_text("{not json")
    with pytest.raises(BonsaiError, match="config.json: not valid JSON"):
        checkpoint.load(tiny_copy, progress=False)
    (tiny_copy / "config.json").unlink()
    with pytest.raises(BonsaiError, match="config.json: missing from"):
        checkpoint.load(tiny_copy, progress=False)
    with pytest.raises(BonsaiError, match="no such folder, and not a hub id"):
        checkpoint.load(tmp_path / "nowhere" / "x" / "y", progress=False)


def test_missing_weights_and_shards(tiny_copy):
    (tiny_copy / "model.safetensors").rename(tiny_copy / "shard-1.safetensors")
    with pytest.raises(BonsaiError, match="no model.safetensors or model.safetensors.index.json"):
        checkpoint.load(tiny_copy, progress=False)
    index = {"weight_map": {"model.embed_tokens.weight": "shard-1.safetensors", "lm_head.weight": "shard-2.safetensors"}}
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BonsaiError, match="shard-2.safetensors: shard listed in the index is missing"):
        checkpoint.load(tiny_copy, progress=False)
    (tiny_copy / "shard-2.safetensors").write_bytes(b"garbage")
    with pytest.raises(BonsaiError, match="shard-2.safetensors: not a readable safetensors file"):
        checkpoint.load(tiny_copy, progress=False)


def test_sharded_checkpoint_loads(tiny_ckpt, tiny_copy):
    tensors = load_file(tiny_copy / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, str(tiny_copy / file))
    (tiny_copy / "model.safetensors").unlink()
    index = {"weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = checkpoint.load(tiny_ckpt, progress=False), checkpoint.load(tiny_copy, progress=False)
    assert all(torch.equal(a.ternary[n].values, b.ternary[n].values) for n in a.ternary)
    assert all(torch.equal(a.dense[n], b.dense[n]) for n in a.dense)


def test_hub_id_failure_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BonsaiError, match="could not download from the Hugging Face hub"):
        checkpoint.resolve("nobody-here/no-such-model")
