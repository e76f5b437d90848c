"""The Ternary-Bonsai presets (prism-ml's unpacked Qwen3 folders) and their round trip through the readers:
the real 1.7B inventory, the tiny folder read back exactly, transformers' own Qwen3 on the same folder as the
reference, the GGUF Q2_0 form of the same weights, and the refusals through the CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bonsai_export import checkpoint as C
from bonsai_export import config, hf_configs
from bonsai_export.model import from_checkpoint
from bonsai_export.runners import positions
from bonsai_export.synthetic import QWEN3_ADDED, inventory, make_checkpoint

import gguf_q2_0

BIG = config.PRESETS["ternary-bonsai-1.7b"]
# fp32 on identical weights (transformers reads the bf16 folder itself), as tests/test_model.py allows Llama.
LOGIT_ATOL = 1e-4


def test_1_7b_preset_has_the_published_inventory():
    """Qwen3-1.7B's shape, tied: 310 tensors, 1.72B parameters (3.44 GB in 16 bits, the model card's FP16
    size) and 436 MiB as Q2_0 (the card's packed size: every weight but the norms in 34-byte blocks of 128)."""
    inv = inventory(BIG)
    assert len(inv) == 2 + 28 * 11 and "lm_head.weight" not in inv
    assert {dtype for _, dtype in inv.values()} == {torch.bfloat16}
    assert inv["model.embed_tokens.weight"][0] == (151936, 2048)
    assert inv["model.layers.27.self_attn.q_proj.weight"][0] == (2048, 2048)
    assert inv["model.layers.0.self_attn.k_proj.weight"][0] == (1024, 2048)
    assert inv["model.layers.0.self_attn.o_proj.weight"][0] == (2048, 2048)
    assert inv["model.layers.0.mlp.down_proj.weight"][0] == (2048, 6144)
    assert inv["model.layers.0.self_attn.q_norm.weight"][0] == (128,)
    params = sum(torch.Size(shape).numel() for shape, _ in inv.values())
    assert params == 1_720_574_976 and params * 2 / 1e9 == pytest.approx(3.44, abs=0.005)
    ternary = sum(torch.Size(s).numel() for n, (s, _) in inv.items() if not n.endswith("norm.weight"))
    assert ternary // 128 * 34 / 2**20 == pytest.approx(436, abs=0.5)


def test_1_7b_config_json_fields():
    assert hf_configs.to_qwen3_config(BIG) == {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 32768,
        "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1e6,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
    assert config.from_hf_config(hf_configs.to_qwen3_config(BIG)) == BIG


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint("ternary-bonsai-tiny", tmp_path_factory.mktemp("tb") / "tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny):
    return C.load(tiny, progress=False)


def test_tiny_folder_is_an_unpacked_qwen3_read_back_exactly(tiny, tiny_ckpt):
    args = config.PRESETS["ternary-bonsai-tiny"]
    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert {n: (tuple(t.shape), t.dtype) for n, t in stored.items()} == inventory(args)
    assert tiny_ckpt.format == "unpacked-g128" and tiny_ckpt.group_size == 128 and tiny_ckpt.args == args
    assert set(tiny_ckpt.ternary) == {"model.embed_tokens"} | {
        f"model.layers.{i}.{sub}" for i in range(args.n_layers) for sub in args.linear_shapes}
    for name, w in tiny_ckpt.ternary.items():
        assert torch.equal(w.folded().to(torch.bfloat16), stored[name + ".weight"]), name
    for name, t in tiny_ckpt.dense.items():
        assert torch.equal(t, stored[name]), name


def test_tiny_tokenizer_is_byte_level_bpe_with_qwen_added_tokens(tiny):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw, auto = Tokenizer.from_file(str(tiny / "tokenizer.json")), AutoTokenizer.from_pretrained(tiny)
    first = config.PRESETS["ternary-bonsai-tiny"].bos_id
    assert [raw.token_to_id(t) for t, _ in QWEN3_ADDED] == list(range(first, first + 26))
    for text in ("Hello world", "  two  spaces\tand\ttabs\n\nnewlines", "naïve café 東京 😀", "x=1+2*3;",
                 "<|im_start|>user\nhi<|im_end|>", "it's 100% 'quoted'"):
        ids = raw.encode(text).ids
        assert auto.encode(text) == ids and raw.decode(ids, skip_special_tokens=False) == text, text
    chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_logits_match_transformers_reading_the_folder_itself(tiny, tiny_ckpt):
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32, attn_implementation="eager").eval()
    prompt = list(range(3, 40, 2))
    with torch.no_grad():
        want = theirs(torch.tensor([prompt])).logits
        got = from_checkpoint(tiny_ckpt)(torch.tensor([prompt]), positions(0, len(prompt)))
    assert type(theirs).__name__ == "Qwen3ForCausalLM" and want.abs().max() > 1
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)


@pytest.fixture
def gguf_folder(tiny, tiny_ckpt, tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny / name, folder / name)
    gguf_q2_0.write(folder / "Ternary-Bonsai-tiny-Q2_0.gguf", tiny_ckpt.args, tiny_ckpt.ternary, tiny_ckpt.dense)
    return folder


def test_gguf_folder_loads_to_the_same_canonical_form(gguf_folder, tiny_ckpt):
    ckpt = C.load(gguf_folder, progress=False)
    assert ckpt.format == "gguf-q2_0" and ckpt.group_size == 128
    assert ckpt.args == tiny_ckpt.args.replace(pad_id=tiny_ckpt.args.bos_id)
    assert set(ckpt.ternary) == set(tiny_ckpt.ternary) and set(ckpt.dense) == set(tiny_ckpt.dense)
    for name, w in tiny_ckpt.ternary.items():
        assert torch.equal(ckpt.ternary[name].values, w.values) and torch.equal(ckpt.ternary[name].scales, w.scales)
    for name, t in tiny_ckpt.dense.items():
        assert torch.equal(ckpt.dense[name], t.float()), name


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "bonsai_export", "--quiet", *map(str, args)], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent, timeout=300)


def test_cli_refuses_a_bad_group_and_a_truncated_gguf(tiny, gguf_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    from safetensors.torch import load_file, save_file

    tensors = load_file(bad / "model.safetensors")
    w = tensors["model.layers.1.mlp.down_proj.weight"]
    w[7, 300] = w[7, 256:].abs().max() * 3  # row 7, group 2 gets a second magnitude
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    res = cli("info", bad)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: model.layers.1.mlp.down_proj.weight: not group-ternary at row 7, group 2 (columns 256..383): it "
        + res.stderr.split(": it ", 1)[1].strip()]
    gguf = next(gguf_folder.glob("*.gguf"))
    gguf.write_bytes(gguf.read_bytes()[:-1000])
    res = cli("info", gguf_folder)
    assert res.returncode == 2 and "truncated" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_dense_embedding_stays_dense_and_still_matches_transformers(tiny, tmp_path):
    """Linears must be group-ternary; a table that is not is read as the dense tensor it is."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "dense-embed"
    shutil.copytree(tiny, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.embed_tokens.weight"] = torch.randn(tensors["model.embed_tokens.weight"].shape).to(torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    ckpt = C.load(folder, progress=False)
    assert "model.embed_tokens" not in ckpt.ternary and "model.embed_tokens.weight" in ckpt.dense
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    prompt = [5, 17, 900, 3, 1030, 64]
    with torch.no_grad():
        want = theirs(torch.tensor([prompt])).logits
        got = from_checkpoint(ckpt)(torch.tensor([prompt]), positions(0, len(prompt)))
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)


def test_make_checkpoint_cli_writes_the_preset(tmp_path):
    res = cli("make-checkpoint", "--preset", "ternary-bonsai-tiny", "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_config_json_of_the_folder(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg == hf_configs.to_qwen3_config(config.PRESETS["ternary-bonsai-tiny"])
