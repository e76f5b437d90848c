"""Readers of group-ternary weights: dense "unpacked" tensors (one magnitude per group of 128) and prism's GGUF
Q2_0 files, each exact, and one clear error per malformed input."""

import numpy as np
import pytest
import torch

from bonsai_export import checkpoint as C
from bonsai_export import gguf_reader, ternary_groups
from bonsai_export.errors import BonsaiError

import gguf_q2_0
from test_qwen3 import ARGS, random_checkpoint


def dense_of(w: C.TernaryWeight, dtype) -> torch.Tensor:
    return w.folded().to(dtype)


@pytest.fixture(scope="module")
def ckpt():
    return random_checkpoint(seed=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_unpacked_split_recovers_trits_and_scales_exactly(ckpt, dtype):
    w = ckpt.ternary["model.layers.1.mlp.down_proj"]
    stored = dense_of(w, dtype)
    values, scales = ternary_groups.split(stored, "w", 128)
    assert values.dtype == torch.int8 and scales.shape == (ARGS.dim, ARGS.hidden_dim // 128)
    assert torch.equal(values, w.values)
    assert torch.equal(scales, w.scales.to(dtype).float())  # the stored magnitude itself
    assert torch.equal(C.TernaryWeight(values, scales).folded().to(dtype), stored)


def test_an_all_zero_group_has_scale_zero(ckpt):
    w = ckpt.ternary["model.layers.0.self_attn.o_proj"]
    stored = dense_of(w, torch.bfloat16)
    stored[2, 128:256] = 0
    values, scales = ternary_groups.split(stored, "w", 128)
    assert scales[2, 1] == 0 and not values[2, 128:256].any()


def test_unpacked_split_names_the_first_offending_group(ckpt):
    stored = dense_of(ckpt.ternary["model.layers.0.mlp.gate_proj"], torch.bfloat16)
    stored[5, 200] = stored[5, 129:256].abs().max() * 1.5 + 0.01  # a second magnitude in row 5, group 1
    stored[9, 0] = 3.0  # a later row
    with pytest.raises(BonsaiError, match=r"^x\.weight: not group-ternary at row 5, group 1 \(columns 128\.\.255\)"):
        ternary_groups.split(stored, "x.weight", 128)
    assert ternary_groups.split(stored, "x.weight", 128, strict=False) is None


def test_unpacked_split_refuses_a_width_not_a_multiple_of_128():
    with pytest.raises(BonsaiError, match="x.weight: 200 columns are not a multiple of the 128-weight group"):
        ternary_groups.split(torch.ones(4, 200), "x.weight", 128)


def test_q2_0_code_order_by_hand():
    """Weight j of a block sits in bits 2*(j % 4) of byte 2 + j // 4, as code t + 1; the fp16 scale leads."""
    t = torch.zeros(1, 128, dtype=torch.int8)
    t[0, 0], t[0, 1], t[0, 2], t[0, 3], t[0, 5], t[0, 127] = 1, -1, 1, 0, -1, 1
    block = bytearray(np.float16(0.25).tobytes()) + bytearray([0x55] * 32)  # code 1 everywhere: zeros
    block[2] = 2 | (0 << 2) | (2 << 4) | (1 << 6)  # weights 0..3: +1, -1, +1, 0
    block[3] = 1 | (0 << 2) | (1 << 4) | (1 << 6)  # weights 4..7: 0, -1, 0, 0
    block[33] = 0x55 & 0x3F | (2 << 6)  # weight 127: +1
    values, scales = gguf_reader.decode_q2_0(np.frombuffer(bytes(block), np.uint8), "w", 1, 128)
    assert torch.equal(values, t) and scales.tolist() == [[0.25]]
    assert bytes(block) == gguf_q2_0.encode_q2_0(t, torch.tensor([[0.25]])).tobytes()


def write_gguf(path, ckpt, **kw):
    ternary = dict(ckpt.ternary)
    return gguf_q2_0.write(path, ckpt.args, ternary, ckpt.dense, **kw)


@pytest.mark.parametrize("qtype", [42, 142])
def test_gguf_reader_gives_the_canonical_form(tmp_path, ckpt, qtype):
    cfg, tensors = gguf_reader.read(write_gguf(tmp_path / "m.gguf", ckpt, qtype=qtype))
    assert cfg == {"model_type": "qwen3", "vocab_size": ARGS.vocab_size, "hidden_size": ARGS.dim,
                   "num_hidden_layers": ARGS.n_layers, "intermediate_size": ARGS.hidden_dim,
                   "num_attention_heads": ARGS.n_heads, "num_key_value_heads": ARGS.n_kv_heads,
                   "head_dim": ARGS.head_dim, "max_position_embeddings": ARGS.max_seq_len,
                   "rms_norm_eps": ARGS.norm_eps, "rope_theta": ARGS.rope_theta,
                   "tie_word_embeddings": True, "bos_token_id": ARGS.bos_id, "eos_token_id": ARGS.eos_ids[0]}
    assert set(tensors) == set(ckpt.ternary) | set(ckpt.dense)
    for name, w in ckpt.ternary.items():
        values, scales = tensors[name]
        assert torch.equal(values, w.values) and torch.equal(scales, w.scales), name
    for name, t in ckpt.dense.items():
        assert torch.equal(tensors[name], t.float()), name


def test_gguf_reader_refuses_a_code_3(tmp_path, ckpt):
    path = write_gguf(tmp_path / "m.gguf", ckpt)
    data = bytearray(path.read_bytes())
    reader_infos = {n: o for n, _, _, o in gguf_reader._reader_class()(str(path)).tensor_infos}
    # blk.0.attn_k.weight row 1, block 1: byte 3 of that block's codes -> weights 12..15, set code 3 in weight 13
    k_cols = ARGS.dim
    offset = reader_infos["blk.0.attn_k.weight"] + (1 * k_cols // 128 + 1) * 34 + 2 + 3
    data[offset] |= 3 << 2
    path.write_bytes(bytes(data))
    with pytest.raises(BonsaiError, match=r"blk\.0\.attn_k\.weight: code 3 .* at row 1, group 1"):
        gguf_reader.read(path)


def test_gguf_reader_refuses_upstream_64_weight_blocks(tmp_path, ckpt):
    path = write_gguf(tmp_path / "m.gguf", ckpt, group=64)  # 18-byte blocks of 64 under the same type id
    with pytest.raises(BonsaiError, match="holds .* bytes where Q2_0 blocks of 128 weights in 34 bytes need"):
        gguf_reader.read(path)


def test_gguf_reader_refuses_a_width_not_a_multiple_of_128(tmp_path):
    bad = random_checkpoint(ARGS, seed=4)
    w = bad.ternary["model.layers.0.self_attn.q_proj"]
    bad.ternary["model.layers.0.self_attn.q_proj"] = C.TernaryWeight(w.values[:, :192].contiguous(),
                                                                     w.scales[:, :1].repeat(1, 3))  # 3 x 64
    path = gguf_q2_0.write(tmp_path / "m.gguf", ARGS, bad.ternary, bad.dense, group=64)
    with pytest.raises(BonsaiError, match="blk.0.attn_q.weight: 192 columns are not a multiple of Q2_0's 128"):
        gguf_reader.read(path)


@pytest.mark.parametrize("cut", [1, 5000, 40])
def test_gguf_reader_refuses_a_truncated_file(tmp_path, ckpt, cut):
    path = write_gguf(tmp_path / "m.gguf", ckpt)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut < 100 else data[:-cut])
    with pytest.raises(BonsaiError, match=r"m\.gguf: (truncated|not a readable GGUF file)") as err:
        gguf_reader.read(path)
    assert "\n" not in str(err.value)


def test_gguf_reader_refuses_a_rotated_basis_and_other_architectures(tmp_path, ckpt):
    path = write_gguf(tmp_path / "m.gguf", ckpt, extra_kv={"prism.hadamard.block_size": 128})
    with pytest.raises(BonsaiError, match="declares prism.hadamard.block_size .*rotated basis"):
        gguf_reader.read(path)
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(BonsaiError, match="x.gguf: not a readable GGUF file"):
        gguf_reader.read(tmp_path / "x.gguf")


def test_gguf_names_map_to_hf():
    assert gguf_reader.hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert gguf_reader.hf_name("blk.0.attn_k_norm.weight") == "model.layers.0.self_attn.k_norm.weight"
    assert gguf_reader.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_reader.hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(BonsaiError, match="blk.0.attn_qkv.weight: GGUF tensor of no Qwen3 module"):
        gguf_reader.hf_name("blk.0.attn_qkv.weight")
