"""Qwen3 with group-scaled ternary weights (prism-ml Ternary-Bonsai): our model against transformers'
Qwen3ForCausalLM on the same weights W = scale_g * T, and the refusals of what is not implemented."""

import pytest
import torch

from bonsai_export import checkpoint as C
from bonsai_export import config, hf_configs
from bonsai_export.artifact import ExportConfig
from bonsai_export.errors import BonsaiError
from bonsai_export.generate import SamplingConfig, generate
from bonsai_export.model import build_model, from_checkpoint
from bonsai_export.ternary_layers import GroupTernaryEmbedding, GroupTernaryLinear
from bonsai_export.runners import positions

ARGS = config.PRESETS["ternary-bonsai-tiny"].replace(max_seq_len=96)
# fp32 against fp32 on identical weights: only the summation order differs (1e-4 on logits of magnitude ~10,
# as tests/test_model.py allows the Llama path).
LOGIT_ATOL = 1e-4
NEW_TOKENS = 24


def group_ternary(out: int, cols: int, gen: torch.Generator) -> C.TernaryWeight:
    """Random trits and a different fp16-exact scale for every group of 128."""
    t = torch.randint(-1, 2, (out, cols), generator=gen, dtype=torch.int8)
    scales = (torch.rand(out, cols // C.GROUP_SIZE, generator=gen) + 0.5) / (0.5 * cols) ** 0.5
    return C.TernaryWeight(t, scales.half().float())


def random_checkpoint(args=ARGS, seed=0, tmp=None) -> C.Checkpoint:
    gen = torch.Generator().manual_seed(seed)
    ternary = {f"model.layers.{i}.{sub}": group_ternary(*shape, gen)
               for i in range(args.n_layers) for sub, shape in args.linear_shapes.items()}
    ternary["model.embed_tokens"] = group_ternary(args.vocab_size, args.dim, gen)
    if not args.tie_embeddings:  # Ternary-Bonsai-8B: its own group-ternary head
        ternary["lm_head"] = group_ternary(args.vocab_size, args.dim, gen)
    norm = lambda n: (1 + 0.1 * torch.randn(n, generator=gen)).to(torch.bfloat16)  # noqa: E731
    dense = {"model.norm.weight": norm(args.dim)}
    for i in range(args.n_layers):
        for name in C.NORMS:
            dense[f"model.layers.{i}.{name}.weight"] = norm(args.dim)
        for name in C.QK_NORMS:
            dense[f"model.layers.{i}.self_attn.{name}.weight"] = norm(args.head_dim)
    return C.Checkpoint(args, "random-qwen3", tmp, "unpacked-g128", dense, ternary)


def transformers_qwen3(ckpt: C.Checkpoint):
    """transformers' own Qwen3 in fp32 with every weight W = scale_g * T (the tied head is the embedding)."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(hf_configs.qwen3_config(ckpt.args, attn_implementation="eager")).float().eval()
    state = {k: v.float() for k, v in ckpt.dense.items()}
    state.update({f"{n}.weight": w.folded() for n, w in ckpt.ternary.items()})
    if ckpt.args.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [m for m in missing if "rotary" not in m] and not unexpected, (missing, unexpected)
    return model


@pytest.fixture(scope="module")
def ckpt():
    return random_checkpoint()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, ARGS.vocab_size, (20,), generator=torch.Generator().manual_seed(1)).tolist()


def test_canonical_form_is_exact_scale_times_trit(ckpt):
    w = ckpt.ternary["model.layers.0.mlp.down_proj"]
    assert w.group_size == C.GROUP_SIZE and w.scales.shape == (ARGS.dim, ARGS.hidden_dim // C.GROUP_SIZE)
    folded = w.folded()
    for row, k in ((0, 0), (3, 127), (5, 128), (ARGS.dim - 1, ARGS.hidden_dim - 1)):
        assert folded[row, k] == w.scales[row, k // 128] * w.values[row, k]
    assert ckpt.group_size == C.GROUP_SIZE
    per_channel = C.TernaryWeight(w.values, w.scales[:, 0].contiguous())
    assert per_channel.group_size is None and torch.equal(per_channel.folded()[:, 5], w.values[:, 5] * w.scales[:, 0])
    with pytest.raises(ValueError, match="do not form"):
        C.TernaryWeight(w.values, torch.ones(ARGS.dim, 5))  # 384 columns are not 5 groups


def test_model_is_qwen3_shaped_and_keeps_the_table_ternary(ckpt):
    model = from_checkpoint(ckpt)
    assert isinstance(model.embed_tokens, GroupTernaryEmbedding) and isinstance(model.lm_head, GroupTernaryLinear)
    assert model.embed_tokens.values.dtype == torch.int8
    attn = model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (128,) and attn.qkv_proj.weight.shape == (4 * 128 + 2 * 2 * 128, 256)
    assert torch.equal(model.lm_head.weight, ckpt.ternary["model.embed_tokens"].folded())


def test_logits_match_transformers_qwen3(ckpt, prompt):
    with torch.no_grad():
        got = from_checkpoint(ckpt)(torch.tensor([prompt]), positions(0, len(prompt)))
        want = transformers_qwen3(ckpt)(torch.tensor([prompt])).logits
    assert got.shape == want.shape == (1, len(prompt), ARGS.vocab_size)
    assert want.abs().max() > 1  # not a degenerate comparison
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)


def test_untied_group_ternary_head_matches_transformers(prompt):
    untied = random_checkpoint(ARGS.replace(tie_embeddings=False), seed=5)
    model = from_checkpoint(untied)
    assert torch.equal(model.lm_head.weight, untied.ternary["lm_head"].folded())
    with torch.no_grad():
        got = model(torch.tensor([prompt]), positions(0, len(prompt)))
        want = transformers_qwen3(untied)(torch.tensor([prompt])).logits
    torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)


def test_greedy_tokens_equal_transformers_generate(ckpt, prompt):
    model = from_checkpoint(ckpt)
    ours = generate(model, prompt, SamplingConfig(max_new_tokens=NEW_TOKENS), eos_ids=(),
                    max_seq_len=model.max_seq_len).tokens
    with torch.no_grad():
        theirs = transformers_qwen3(ckpt).generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                                   min_new_tokens=NEW_TOKENS, attention_mask=None)
    assert len(ours) == NEW_TOKENS and len(set(ours)) > 1
    assert ours == theirs[0, len(prompt):].tolist()


def test_eager_int8_activations_are_refused_with_one_line(ckpt):
    """The eager fp32 model takes float activations; the export-ready t2g model (tests/test_qwen3_export.py)
    takes int8 ones too."""
    with pytest.raises(BonsaiError, match="runs float activations; use --act-quant none, or export") as err:
        from_checkpoint(ckpt, act_quant="int8")
    assert "\n" not in str(err.value)
    assert build_model(ckpt, ExportConfig(max_seq_len=64)).act_quant == "int8"


QWEN3 = hf_configs.to_qwen3_config(ARGS)


def test_qwen3_config_round_trips():
    assert config.from_hf_config(QWEN3) == ARGS
    v5 = {k: v for k, v in QWEN3.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}  # transformers 5's form
    assert config.from_hf_config(v5) == ARGS
    assert config.from_hf_config(dict(QWEN3, sliding_window=4096)) == ARGS  # read only with use_sliding_window


@pytest.mark.parametrize("field,value", [
    ("use_sliding_window", True),
    ("layer_types", ["full_attention", "sliding_attention"]),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
    ("attention_bias", True),
    ("hidden_act", "gelu"),
])
def test_unsupported_qwen3_fields_are_refused_by_name(field, value):
    with pytest.raises(BonsaiError, match=f"unsupported {field}") as err:
        config.from_hf_config(dict(QWEN3, **{field: value}))
    assert "\n" not in str(err.value)
