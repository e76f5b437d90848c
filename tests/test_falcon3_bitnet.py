"""Falcon3-1.58bit (a plain Llama whose linears are transformers' packed BitNet with the bitlinear scale: y =
(x @ T^T) / weight_scale) against transformers' LlamaForCausalLM loading the same folder through its BitNet
quantizer: eager, .pte and .onnx logits and greedy tokens in the mode transformers computes (BitLinear quantizes
every linear's input to int8 per token), and its Llama-3-style byte-level tokenizer against AutoTokenizer."""

import pytest
import torch
from safetensors.torch import load_file
from hf_parity import decode_errors, hf_greedy
from test_bitnet2b import LOGIT_ATOL, NEW_TOKENS, PROMPT, hf_reference

from bonsai_export import artifact as A
from bonsai_export import bitnet, checkpoint
from bonsai_export.export import export
from bonsai_export.generate import greedy
from bonsai_export.model import from_checkpoint
from bonsai_export.runners import EagerRunner, open_runner
from bonsai_export.synthetic import make_checkpoint
from bonsai_export.tokenizer import Tokenizer

MAX_SEQ = 64


@pytest.fixture(scope="module", autouse=True)
def no_compile():
    """transformers' BitLinear wraps its activation quantization in torch.compile: run it eagerly (the same
    arithmetic, without minutes of compiling on 2 cores)."""
    import torch._dynamo

    saved, torch._dynamo.config.disable = torch._dynamo.config.disable, True
    yield
    torch._dynamo.config.disable = saved


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_checkpoint("falcon3-1.58bit-tiny", tmp_path_factory.mktemp("f3") / "ckpt", seed=0, progress=False)


@pytest.fixture(scope="module")
def reference(folder):
    model = hf_reference(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "BitLinear"  # transformers' packed bitlinear
    return model


@pytest.fixture(scope="module")
def artifact(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("f3-art") / "all"
    export(folder, out, A.ExportConfig(format="all", max_seq_len=MAX_SEQ))
    return out


def test_reader_divides_by_the_bitlinear_scale(folder):
    ckpt = checkpoint.load(folder, progress=False)
    assert ckpt.format == "bitnet-bitlinear" and ckpt.act_quant == "int8"
    assert not ckpt.args.sub_norms and ckpt.args.mlp_act == "silu" and not ckpt.args.tie_embeddings
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj"
    out = ckpt.args.linear_shapes["self_attn.k_proj"][0]
    w = ckpt.ternary[name]
    assert torch.equal(w.values, bitnet.unpack(tensors[f"{name}.weight"], out))
    assert torch.equal(w.scales, (1 / tensors[f"{name}.weight_scale"].float()).expand(out))


def test_eager_logits_and_greedy_tokens_equal_transformers_llama(folder, reference):
    runner = EagerRunner(from_checkpoint(checkpoint.load(folder, progress=False), max_seq_len=MAX_SEQ), folder)
    errors = decode_errors(runner, reference, PROMPT, NEW_TOKENS)
    assert max(errors) <= LOGIT_ATOL, errors
    tokens = greedy(runner, PROMPT, NEW_TOKENS)
    assert tokens == hf_greedy(reference, PROMPT, NEW_TOKENS) and len(set(tokens)) > 1


@pytest.mark.parametrize("backend", ["pte", "onnx"])
def test_artifact_logits_and_greedy_tokens_equal_transformers_llama(artifact, reference, backend):
    assert A.read_manifest(artifact).options.act_quant == "int8"
    runner = open_runner(artifact, backend=backend)
    errors = decode_errors(runner, reference, PROMPT, NEW_TOKENS)
    assert max(errors) <= LOGIT_ATOL, errors
    tokens = greedy(runner, PROMPT, NEW_TOKENS)
    assert tokens == hf_greedy(reference, PROMPT, NEW_TOKENS) and len(set(tokens)) > 1


TEXTS = ["The capital of France is", "  two leading spaces", "digits 1234567 and\ttabs\n\nnewlines",
         "naïve café 東京 😀", "<|begin_of_text|>typed as text<|end_of_text|>"]


def test_tokenizer_ids_equal_transformers(folder, artifact):
    from transformers import AutoTokenizer

    want = AutoTokenizer.from_pretrained(folder)
    for tok in (Tokenizer(folder), Tokenizer(artifact)):
        for text in TEXTS:
            assert tok.encode(text) == want(text)["input_ids"], text
    assert want("hi")["input_ids"][0] == 1024  # <|begin_of_text|>, added by the post-processor
