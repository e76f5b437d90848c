"""`make-checkpoint --preset trained-small`: the committed GPU-trained weights unpack into a Bonsai-format checkpoint
whose float reference predicts the held-out text (the standard library's pydoc topics) well."""

import json

import pytest
from safetensors import safe_open

from bonsai_export import checkpoint
from bonsai_export.cli import main
from bonsai_export.config import PRESETS
from bonsai_export.errors import BonsaiError
from bonsai_export.model import from_checkpoint
from bonsai_export.runners import EagerRunner
from bonsai_export.synthetic import inventory, make_checkpoint
from bonsai_export.tokenizer import Tokenizer
from bonsai_export.corpus import word_ngrams
from bonsai_export.train import SMALL_FILE, load_compact
from bonsai_export.validate import held_out_text, text_check

SLICE_TOKENS = 1024  # the first 1024 held-out tokens, in windows of 256 as `validate` scores them
MAX_PPL = 60.0  # issue 14's target; the committed weights: 41.84 on this slice (35.06 on validate's 4096 tokens)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "small"
    assert main(["--quiet", "make-checkpoint", "--preset", "trained-small", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def held_out_ppl(small):
    """Perplexity of the float reference (fp32, float activations) on the first SLICE_TOKENS held-out tokens,
    through validate's text_check."""
    ckpt = checkpoint.load(small, progress=False)
    assert ckpt.format == "qlinear"
    ref = EagerRunner(from_checkpoint(ckpt, act_quant="none"), ckpt.folder)
    ids = Tokenizer(ckpt.folder).encode(held_out_text(None))
    assert ids[0] == ckpt.args.bos_id
    report = text_check(ref, ref, ids, window=256, max_tokens=SLICE_TOKENS)
    assert report["tokens"] == SLICE_TOKENS
    return report["perplexity_reference"]


def test_committed_file_is_compact_and_describes_its_training():
    assert SMALL_FILE.stat().st_size < 25_000_000
    _, meta = load_compact(SMALL_FILE)
    assert meta["shape"]["dim"] == PRESETS["trained-small"].dim
    assert meta["corpus"]["dropped_overlapping_held_out"] > 0  # the decontamination ran (pdb's docstrings)
    assert meta["recipe"]["steps"] > 0 and meta["train_seconds"] > 0


def test_checkpoint_is_in_bonsais_format(small):
    args = PRESETS["trained-small"]
    cfg = json.loads((small / "config.json").read_text())
    assert cfg["architectures"] == ["QLlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (args.dim, args.n_layers, 32000)
    with safe_open(str(small / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert shapes == {k: shape for k, (shape, _) in inventory(args).items()}
    assert set(q.unique().tolist()) == {-1.0, 0.0, 1.0}
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (small / name).is_file()


def test_float_reference_held_out_perplexity(held_out_ppl):
    assert 20 < held_out_ppl < MAX_PPL  # trained-tiny: ~469


def test_same_bytes_every_time_and_seed_needs_retrain(small, tmp_path):
    again = make_checkpoint("trained-small", tmp_path / "again", progress=False)
    assert (again / "model.safetensors").read_bytes() == (small / "model.safetensors").read_bytes()
    with pytest.raises(BonsaiError, match="--retrain"):
        make_checkpoint("trained-small", tmp_path / "seeded", seed=1, progress=False)
    with pytest.raises(BonsaiError, match="only for the trained-small"):
        make_checkpoint("tiny", tmp_path / "tiny", retrain=True, progress=False)


def test_decontamination_finds_a_shared_sequence():
    held = set(word_ngrams(held_out_text(None)))
    import pdb

    assert any(gram in held for gram in word_ngrams(pdb.Pdb.do_commands.__doc__))  # in pydoc's "debugger" topic
    assert not any(gram in held for gram in word_ngrams("a sentence about ternary weights " * 5))
