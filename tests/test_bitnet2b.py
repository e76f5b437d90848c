"""BitNet b1.58 2B4T (transformers' BitNetForCausalLM: packed uint8 linears with an autobitlinear scale, RMSNorms
before o_proj and down_proj, a ReLU^2 MLP, tied embeddings) against transformers loading the same folder: eager,
.pte and .onnx logits and greedy tokens, in the mode transformers computes (int8 per-token absmax activations on
every linear, the head in float); and one clear error per malformed folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_parity import decode_errors, hf_greedy
from safetensors.torch import load_file, save_file

from bonsai_export import artifact as A
from bonsai_export import checkpoint
from bonsai_export.errors import BonsaiError
from bonsai_export.export import export
from bonsai_export.generate import greedy
from bonsai_export.model import from_checkpoint
from bonsai_export.runners import EagerRunner, open_runner, positions
from bonsai_export.synthetic import make_checkpoint

MAX_SEQ = 64
NEW_TOKENS = 16
PROMPT = [1024, 5, 77, 300, 12, 999, 401, 8, 1040, 64, 3, 250]
# fp32 against fp32 on the same trits and scales, int8 activations quantized the same way: only the summation
# order and where the scales multiply differ (measured 2.3e-5 on logits of magnitude ~80).
LOGIT_ATOL = 1e-3


def hf_reference(folder: Path):
    """transformers' own model of the folder, as it loads it (its BitNet quantizer unpacks the uint8 weights),
    then in float32: the trits and the bf16 scales are exact there."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return torch.nn.Module.float(model).eval()  # PreTrainedModel.float refuses quantized models


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_checkpoint("bitnet-2b4t-tiny", tmp_path_factory.mktemp("b2") / "ckpt", seed=0, progress=False)


@pytest.fixture(scope="module")
def reference(folder):
    return hf_reference(folder)


def test_reader_keeps_the_packed_trits_and_the_multiplying_scale(folder):
    ckpt = checkpoint.load(folder, progress=False)
    assert ckpt.format == "bitnet-autobitlinear" and ckpt.act_quant == "int8"
    args = ckpt.args
    assert args.sub_norms and args.mlp_act == "relu2" and args.tie_embeddings
    tensors = load_file(folder / "model.safetensors")
    from bonsai_export import bitnet

    w = ckpt.ternary["model.layers.1.mlp.down_proj"]
    assert torch.equal(w.values, bitnet.unpack(tensors["model.layers.1.mlp.down_proj.weight"], args.dim))
    scale = tensors["model.layers.1.mlp.down_proj.weight_scale"].float()
    assert torch.equal(w.scales, scale.expand(args.dim))  # autobitlinear: y = (x @ T^T) * weight_scale
    assert set(ckpt.dense) >= {"model.layers.0.self_attn.attn_sub_norm.weight", "model.layers.0.mlp.ffn_sub_norm.weight"}


def test_eager_logits_and_greedy_tokens_equal_transformers_bitnet(folder, reference):
    ckpt = checkpoint.load(folder, progress=False)
    model = from_checkpoint(ckpt, max_seq_len=MAX_SEQ)  # the family's default: int8 activations
    assert model.act_quant == "int8"
    runner = EagerRunner(model, folder)
    errors = decode_errors(runner, reference, PROMPT, NEW_TOKENS)
    assert max(errors) <= LOGIT_ATOL, errors
    tokens = greedy(runner, PROMPT, NEW_TOKENS)
    assert tokens == hf_greedy(reference, PROMPT, NEW_TOKENS) and len(set(tokens)) > 1


def test_float_activations_are_not_what_transformers_computes(folder, reference):
    """The int8 default matters: float activations move these logits by far more than rounding."""
    model = from_checkpoint(checkpoint.load(folder, progress=False), act_quant="none", max_seq_len=MAX_SEQ)
    with torch.no_grad():
        delta = (model(torch.tensor([PROMPT]), positions(0, len(PROMPT)))
                 - reference(torch.tensor([PROMPT])).logits).abs().max()
    assert float(delta) > 100 * LOGIT_ATOL


def test_validate_reference_is_transformers_bitnet_with_float_activations(folder):
    """validate's fp32 reference of a 2B4T checkpoint: BitNetForCausalLM (sub-norms, ReLU^2) on the folded weights,
    equal to our eager model with float activations."""
    from bonsai_export.reference import folded_llama

    ckpt = checkpoint.load(folder, progress=False)
    ref = folded_llama(ckpt)
    assert type(ref).__name__ == "BitNetForCausalLM"
    model = from_checkpoint(ckpt, act_quant="none", max_seq_len=MAX_SEQ)
    with torch.no_grad():
        delta = (model(torch.tensor([PROMPT]), positions(0, len(PROMPT))) - ref(torch.tensor([PROMPT])).logits)
    assert float(delta.abs().max()) <= LOGIT_ATOL


@pytest.fixture(scope="module")
def artifact(folder, tmp_path_factory):
    """.pte and .onnx of the folder with the export's defaults (int8 activations, bf16 embedding and head)."""
    out = tmp_path_factory.mktemp("b2-art") / "all"
    export(folder, out, A.ExportConfig(format="all", max_seq_len=MAX_SEQ))
    return out


@pytest.mark.parametrize("backend", ["pte", "onnx"])
def test_artifact_logits_and_greedy_tokens_equal_transformers_bitnet(artifact, reference, backend):
    assert A.read_manifest(artifact).options.act_quant == "int8"
    runner = open_runner(artifact, backend=backend)
    errors = decode_errors(runner, reference, PROMPT, NEW_TOKENS)
    assert max(errors) <= LOGIT_ATOL, errors
    tokens = greedy(runner, PROMPT, NEW_TOKENS)
    assert tokens == hf_greedy(reference, PROMPT, NEW_TOKENS) and len(set(tokens)) > 1


def master_weights(folder: Path, out: Path) -> Path:
    """The folder as microsoft/bitnet-b1.58-2B-4T-bf16 stores it: latent bf16 linears, no weight_scale,
    quantization_mode "online" (AutoBitLinear ternarizes each tensor on every forward)."""
    gen = torch.Generator().manual_seed(11)

    def latent(t):
        for name in [n for n in t if n.endswith("weight_scale")]:
            del t[name]
            shape = checkpoint.load(folder, progress=False).ternary[name.removesuffix(".weight_scale")].values.shape
            t[name.replace("weight_scale", "weight")] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    return _edit(folder, out, latent, lambda c: c["quantization_config"].update(quantization_mode="online"))


def test_master_weights_are_ternarized_as_transformers_does(folder, tmp_path):
    online = master_weights(folder, tmp_path / "bf16")
    ckpt = checkpoint.load(online, progress=False)
    assert ckpt.format == "bitnet-online" and ckpt.act_quant == "int8"
    w = ckpt.ternary["model.layers.0.mlp.up_proj"]
    assert set(w.values.unique().tolist()) == {-1, 0, 1} and len(set(w.scales.tolist())) == 1  # one per tensor
    reference = hf_reference(online)
    assert type(reference.model.layers[0].mlp.up_proj).__name__ == "AutoBitLinear"
    assert reference.model.layers[0].mlp.up_proj.online_quant
    errors = decode_errors(EagerRunner(from_checkpoint(ckpt, max_seq_len=MAX_SEQ), online), reference, PROMPT, 4)
    assert max(errors) <= LOGIT_ATOL, errors


# ---- malformed folders: one clear line each, exit 2 through the CLI ----

def _edit(folder: Path, out: Path, tensors=None, config=None) -> Path:
    shutil.copytree(folder, out)
    if tensors:
        t = load_file(out / "model.safetensors")
        tensors(t)
        save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    if config:
        cfg = json.loads((out / "config.json").read_text())
        config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    return out


Q = "model.layers.0.self_attn.q_proj"
MALFORMED = {
    "packed shape": (lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"][:-1]}), None,
                     rf"{Q}.weight: expected packed BitNet shape \[32, 128\] \(4 rows of \[128, 128\] a byte\), "
                     rf"got \[31, 128\]"),
    "unpacked weight": (lambda t: t.update({f"{Q}.weight": torch.zeros(128, 128, dtype=torch.bfloat16)}), None,
                        rf"{Q}.weight: expected packed BitNet shape \[32, 128\]"),
    "weight_scale": (lambda t: t.pop(f"{Q}.weight_scale"), None, rf"{Q}.weight_scale: missing from the checkpoint"),
    "attn_sub_norm": (lambda t: t.pop("model.layers.1.self_attn.attn_sub_norm.weight"), None,
                      r"model.layers.1.self_attn.attn_sub_norm.weight: missing from the checkpoint"),
    "ffn_sub_norm": (lambda t: t.pop("model.layers.0.mlp.ffn_sub_norm.weight"), None,
                     r"model.layers.0.mlp.ffn_sub_norm.weight: missing from the checkpoint"),
    "code 3": (lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"] | 3}), None,
               rf"{Q}.weight: invalid 2-bit code 3"),
    "master weights": (None, lambda c: c.pop("quantization_config"),
                       r"model_type 'bitnet' without a quantization_config holds BitNet's bf16 master weights"),
    "online bitlinear": (None, lambda c: c["quantization_config"].update(quantization_mode="online",
                                                                          linear_class="bitlinear"),
                         r"unsupported quantization_config.quantization_mode 'online' with linear_class 'bitlinear'"),
    "online with packed weights": (None, lambda c: c["quantization_config"].update(quantization_mode="online"),
                                   rf"{Q}.weight_scale: present in an online \(master-weights\) BitNet folder"),
    "activation": (None, lambda c: c.update(hidden_act="silu"), r"hidden_act 'silu' for model_type 'bitnet'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_folder_is_refused_on_one_line(folder, tmp_path, case):
    tensors, config, message = MALFORMED[case]
    bad = _edit(folder, tmp_path / "bad", tensors, config)
    with pytest.raises(BonsaiError, match=message):
        checkpoint.load(bad, progress=False)


def test_cli_refuses_a_missing_sub_norm_with_exit_2(folder, tmp_path):
    tensors, config, message = MALFORMED["attn_sub_norm"]
    bad = _edit(folder, tmp_path / "bad", tensors, config)
    proc = subprocess.run([sys.executable, "-P", "-m", "bonsai_export", "--quiet", "info", str(bad)], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "attn_sub_norm.weight: missing from the checkpoint" in lines[0], proc.stderr


def test_run_on_a_bitnet_checkpoint_defaults_to_int8_activations(folder):
    """`run` / `open_runner` on the checkpoint folder compute what transformers computes unless asked otherwise."""
    assert open_runner(folder).model.act_quant == "int8"
    assert open_runner(folder, act_quant="none").model.act_quant == "none"
