"""Synthetic checkpoints reproduce Bonsai's published inventory and tokenizer."""

import json

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open

from bonsai_export.errors import BonsaiError
from bonsai_export.synthetic import make_checkpoint
from bonsai_export.tokenizer import StreamDecoder, Tokenizer


def bonsai_inventory():
    """deepgrove/Bonsai's tensors, written out independently of the package's config code."""
    inv = {"model.embed_tokens.weight": [32000, 1536], "model.norm.weight": [1536], "lm_head.weight": [32000, 1536]}
    shapes = {"self_attn.q_proj": [1536, 1536], "self_attn.k_proj": [768, 1536], "self_attn.v_proj": [768, 1536],
              "self_attn.o_proj": [1536, 1536], "mlp.gate_proj": [4096, 1536], "mlp.up_proj": [4096, 1536],
              "mlp.down_proj": [1536, 4096]}
    for i in range(16):
        for sub, shape in shapes.items():
            inv[f"model.layers.{i}.{sub}.weight"] = shape
            inv[f"model.layers.{i}.{sub}.scales"] = shape[:1]
        inv[f"model.layers.{i}.input_layernorm.weight"] = [1536]
        inv[f"model.layers.{i}.post_attention_layernorm.weight"] = [1536]
    return inv


def test_bonsai_500m_preset_matches_the_real_inventory(tmp_path):
    folder = make_checkpoint("bonsai-500m", tmp_path / "b", progress=False)
    want = bonsai_inventory()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        got = {k: f.get_slice(k).get_shape() for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert len(got) == 259 == len(want)
    assert got == want
    assert dtypes == {"BF16"}
    assert sum(torch.Size(s).numel() for s in got.values()) == 513_820_160
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["QLlamaForCausalLM"] and "auto_map" in cfg
    assert (cfg["hidden_size"], cfg["head_dim"], cfg["num_key_value_heads"], cfg["rope_theta"]) == (1536, 96, 8, 100000.0)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_checkpoint("tiny", tmp_path / "a", seed=1, progress=False)
    b = make_checkpoint("tiny", tmp_path / "b", seed=1, progress=False)
    c = make_checkpoint("tiny", tmp_path / "c", seed=2, progress=False)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer.model"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_refuses_non_empty_output_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(BonsaiError, match="exists and is not empty"):
        make_checkpoint("tiny", tmp_path / "x", progress=False)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["keep.txt"]


def test_written_tokenizer_json_equals_sentencepiece(tiny_ckpt):
    """make-checkpoint's tokenizer.json (legacy normalizer) encodes text without leading spaces or special-token
    strings as SentencePiece does; transformers' reading of the folder adds BOS."""
    import pydoc_data.topics
    from tokenizers import Tokenizer as Pipeline

    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    raw = Pipeline.from_file(str(tiny_ckpt / "tokenizer.json"))
    assert raw.get_vocab_size() == sp.get_piece_size() == 32000
    texts = ["Hello\nworld", "Hello world, ünïcode 🙂", "a  b   c\n\n d", "tabs\t\t  ", "日本語のテキスト"]
    texts.append("\n".join(list(pydoc_data.topics.topics.values())[:40]))
    for text in texts:
        assert raw.encode(text, add_special_tokens=False).ids == sp.encode(text)
        assert raw.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    tok = Tokenizer(tiny_ckpt)
    assert tok.encode("hi")[0] == 1 and tok.encode("hi", specials=False) == sp.encode("hi")


def test_stream_decoder_holds_partial_utf8(tiny_ckpt):
    tok = Tokenizer(tiny_ckpt)
    ids = tok.encode("Tea 🙂 for two", specials=False)
    stream = StreamDecoder(tok)
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == "Tea 🙂 for two"
    assert all("\ufffd" not in d for d in deltas)
    # Continuing a prompt: the first generated word keeps its leading space.
    prompt, more = tok.encode("Once upon"), tok.encode("Once upon a time")[len(tok.encode("Once upon")):]
    stream = StreamDecoder(tok, context=prompt[-1:])
    assert "".join(stream.push(i) for i in more) == " a time"
