"""The export-ready model against an independent reference (stock transformers Llama) and against itself."""

import numpy as np
import pytest
import torch

from bonsai_export.runners import positions
from bonsai_export import checkpoint, formats, ops
from bonsai_export.generate import SamplingConfig, generate
from bonsai_export.model import from_checkpoint, ternary_values
from bonsai_export.reference import folded_llama
from bonsai_export.tokenizer import Tokenizer

PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return checkpoint.load(tiny_ckpt, progress=False)


@pytest.fixture(scope="module")
def prompt_ids(ckpt):
    ids = Tokenizer(ckpt.folder).encode(PROMPT)
    assert len(ids) >= 16
    return ids


def test_logits_match_stock_transformers_llama(ckpt, prompt_ids):
    ours = from_checkpoint(ckpt, act_quant="none")
    with torch.no_grad():
        got = ours(torch.tensor([prompt_ids]), positions(0, len(prompt_ids)))
        want = folded_llama(ckpt, attn_implementation="eager")(torch.tensor([prompt_ids])).logits
    assert got.shape == want.shape == (1, len(prompt_ids), ckpt.args.vocab_size)
    assert want.abs().max() > 1  # not a degenerate comparison
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_model_holds_exactly_the_checkpoint_ternary_values(ckpt):
    values = ternary_values(from_checkpoint(ckpt))
    assert len(values) == len(ckpt.ternary)
    for name, t in values.items():
        np.testing.assert_array_equal(t, ckpt.ternary[f"model.{name}"].values.numpy())


# int8 activations: a last-bit difference between the two paths' attention sums can move one activation across
# a rounding boundary of the per-token quantizer, a step of amax/127, so that mode gets a looser tolerance.
@pytest.mark.parametrize("act_quant,atol", [("none", 1e-5), ("int8", 0.05)])
def test_incremental_decoding_matches_full_recompute(ckpt, prompt_ids, act_quant, atol):
    model = from_checkpoint(ckpt, act_quant=act_quant, max_seq_len=96)
    steps = []
    res = generate(lambda t, p: steps.append(model(t, p)) or steps[-1], prompt_ids, SamplingConfig(max_new_tokens=32),
                   eos_ids=(), max_seq_len=model.max_seq_len)
    assert len(res.tokens) == 32
    seq = list(prompt_ids)
    with torch.no_grad():
        for i, token in enumerate(res.tokens):
            model.reset_cache()
            full = model(torch.tensor([seq]), torch.tensor([0]))[0, -1]
            torch.testing.assert_close(steps[i][0, -1], full, rtol=0, atol=atol)
            assert int(full.argmax()) == token
            seq.append(token)


def test_int8_activations_stay_close_to_float(ckpt, prompt_ids):
    with torch.no_grad():
        exact = from_checkpoint(ckpt, "none")(torch.tensor([prompt_ids]), positions(0, len(prompt_ids)))
        int8 = from_checkpoint(ckpt, "int8")(torch.tensor([prompt_ids]), positions(0, len(prompt_ids)))
    rel = (int8 - exact).norm() / exact.norm()
    assert 0 < rel < 0.05
    agree = (int8.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agree >= 0.8


@pytest.mark.parametrize("act_bits", [0, 8])
@pytest.mark.parametrize("m,n,k", [(1, 5, 3), (7, 33, 130), (3, 64, 256)])
def test_torch_reference_op_equals_numpy_format_reference(m, n, k, act_bits):
    rng = np.random.default_rng(m * 1000 + n + k)
    t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, : k // 2] = 0 if m > 1 else x[0, : k // 2]
    scales = rng.uniform(0.01, 0.1, n).astype(np.float32)
    packed = formats.pack(t)
    want = formats.matmul(x, packed, scales, k, act_bits)
    got = ops.reference(torch.from_numpy(x), torch.from_numpy(packed), torch.from_numpy(scales), k, act_bits)
    if act_bits == 8:
        np.testing.assert_array_equal(got.numpy(), want)  # every step is exactly specified
    else:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_op_rejects_mismatched_shapes():
    x, packed, scales = torch.zeros(2, 100), torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4)
    with pytest.raises(ValueError, match="do not fit in_features=128"):
        torch.ops.bonsai.ternary_linear(x, packed, scales, 128, 0)


def test_sampling_is_reproducible_and_respects_top_k(ckpt, prompt_ids):
    model = from_checkpoint(ckpt, max_seq_len=64)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    runs = [generate(model, prompt_ids[:8], cfg, (), 64).tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 12
    with torch.no_grad():
        model.reset_cache()
        top5 = model(torch.tensor([prompt_ids[:8]]), torch.tensor([0]))[0, -1].topk(5).indices.tolist()
    assert runs[0][0] in top5


@pytest.mark.parametrize("t,pos", [(1, 0), (1, 9), (5, 0), (4, 7)])
def test_attention_op_is_causal_gqa_over_the_cache_prefix(t, pos):
    torch.manual_seed(t * 10 + pos)
    h, hkv, d, s = 4, 2, 8, 16
    q = torch.randn(1, t, h, d)
    k_cache, v_cache = torch.randn(1, hkv, s, d), torch.randn(1, hkv, s, d)
    k_cache[:, :, pos + t:] = float("nan")  # never read
    v_cache[:, :, pos + t:] = float("nan")
    got = torch.ops.bonsai.attention(q, k_cache, v_cache, torch.tensor([pos]))
    for i in range(t):
        n = pos + i + 1
        k = k_cache[0, :, :n].repeat_interleave(2, 0)
        v = v_cache[0, :, :n].repeat_interleave(2, 0)
        want = torch.nn.functional.scaled_dot_product_attention(q[0, i][:, None], k, v)[:, 0]
        torch.testing.assert_close(got[0, i], want, rtol=1e-5, atol=1e-6)
