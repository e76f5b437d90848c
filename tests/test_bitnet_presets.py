"""The BitNet presets: microsoft/bitnet-b1.58-2B-4T's and tiiuae Falcon3-1B-Instruct-1.58bit's inventories
(names, shapes, dtypes, packed layouts, config.json fields) without materializing them, and the tiny folders as
written (every tensor the inventory names, nothing else), through the CLI too."""

import json
import subprocess
import sys
from math import prod
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bonsai_export import checkpoint
from bonsai_export.config import PRESETS, from_hf_config
from bonsai_export.hf_configs import bitnet_config, to_bitnet_config, to_falcon3_bitnet_config
from bonsai_export.synthetic import BITNET_PRESETS, inventory, make_checkpoint

# microsoft/bitnet-b1.58-2B-4T's config.json (the packed folder; the -bf16 one differs only in quantization_mode
# "online" and an auto_map).
BITNET_2B4T_CONFIG = {
    "architectures": ["BitNetForCausalLM"], "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "relu2",
    "hidden_size": 2560, "intermediate_size": 6912, "max_position_embeddings": 4096, "model_type": "bitnet",
    "rms_norm_eps": 1e-05, "num_attention_heads": 20, "num_hidden_layers": 30, "num_key_value_heads": 5,
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 128256,
    "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
}
BITNET_2B4T_PARAMS = 2_412_820_480  # the -bf16 folder's tensors, every weight one element
FALCON3_1B_PARAMS = 1_669_408_768  # "1.67B": untied 131,072 x 2048 embedding and head, 18 layers


def logical_params(args, inv) -> int:
    """Elements with each packed uint8 linear counted as its [out, in] trits, weight scales left out."""
    total = 0
    for name, (shape, dtype) in inv.items():
        if name.endswith("weight_scale"):
            continue
        total += prod(args.linear_shapes[name.split(".", 3)[3].removesuffix(".weight")]) if dtype == torch.uint8 \
            else prod(shape)
    return total


def test_bitnet_2b4t_inventory_and_config():
    args = PRESETS["bitnet-2b4t"]
    inv = inventory(args, packed=True)
    assert len(inv) == 1 + 30 * 18 + 1  # embedding, per layer 7 packed linears + 7 scales + 4 norms, final norm
    assert logical_params(args, inv) == BITNET_2B4T_PARAMS
    assert inv["model.layers.0.self_attn.k_proj.weight"] == ((160, 2560), torch.uint8)  # 640 rows, 4 a byte
    assert inv["model.layers.29.mlp.down_proj.weight"] == ((640, 6912), torch.uint8)
    assert inv["model.layers.0.mlp.gate_proj.weight_scale"] == ((1,), torch.bfloat16)
    assert inv["model.layers.3.self_attn.attn_sub_norm.weight"] == ((2560,), torch.bfloat16)
    assert inv["model.layers.3.mlp.ffn_sub_norm.weight"] == ((6912,), torch.bfloat16)
    assert "lm_head.weight" not in inv  # tied
    written = to_bitnet_config(args)
    assert {k: written[k] for k in BITNET_2B4T_CONFIG} == BITNET_2B4T_CONFIG
    assert from_hf_config(written) == args
    hf = bitnet_config(args)
    assert (hf.hidden_size // hf.num_attention_heads, hf.hidden_act, hf.rope_parameters["rope_theta"]) == (
        128, "relu2", 500000.0)  # BitNetAttention's head_dim


def test_falcon3_inventory_and_config():
    args = PRESETS["falcon3-1.58bit"]
    inv = inventory(args, packed=True)
    assert len(inv) == 1 + 18 * 16 + 2  # embedding, per layer 7 linears + 7 scales + 2 norms, norm, lm_head
    assert logical_params(args, inv) == FALCON3_1B_PARAMS
    assert inv["model.layers.0.self_attn.q_proj.weight"] == ((512, 2048), torch.uint8)
    assert inv["model.layers.0.self_attn.v_proj.weight"] == ((256, 2048), torch.uint8)  # 4 KV heads of 256
    assert inv["lm_head.weight"] == ((131072, 2048), torch.bfloat16)
    cfg = to_falcon3_bitnet_config(args)
    assert (cfg["model_type"], cfg["architectures"], cfg["head_dim"], cfg["rope_theta"]) == (
        "llama", ["LlamaForCausalLM"], 256, 1000042.0)
    assert cfg["quantization_config"]["quant_method"] == "bitnet"
    assert cfg["quantization_config"]["linear_class"] == "bitlinear"
    assert from_hf_config(cfg) == args


@pytest.mark.parametrize("preset", ["bitnet-2b4t-tiny", "falcon3-1.58bit-tiny"])
def test_tiny_folder_holds_exactly_its_inventory(preset, tmp_path):
    folder = make_checkpoint(preset, tmp_path / preset, seed=3, progress=False)
    want = inventory(PRESETS[preset], packed=True)
    with safe_open(folder / "model.safetensors", "pt") as f:
        got = {name: (tuple(f.get_tensor(name).shape), f.get_tensor(name).dtype) for name in f.keys()}
    assert got == want
    ckpt = checkpoint.load(folder, progress=False)
    assert ckpt.format == f"bitnet-{BITNET_PRESETS[preset]}" and ckpt.args == PRESETS[preset]
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == ckpt.args.eos_ids[0]


def test_make_checkpoint_cli_writes_the_bitnet_folder(tmp_path):
    out = tmp_path / "b2"
    proc = subprocess.run([sys.executable, "-P", "-m", "bonsai_export", "--quiet", "make-checkpoint", "--preset",
                           "bitnet-2b4t-tiny", "--out", str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "bitnet"
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
