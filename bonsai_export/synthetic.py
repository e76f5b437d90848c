"""Deterministic synthetic checkpoints in Bonsai's own format, for tests, demos and benchmarks.

The weights are random, but everything else is what deepgrove/Bonsai publishes: config.json (QLlamaForCausalLM
with auto_map), generation_config.json, one model.safetensors of bf16 tensors with HF names, and the Mistral v1
SentencePiece tokenizer as tokenizer.model plus tokenizer.json. Linear weights are LATENT values spread beyond
+-1 with some exact +-0.5 (which must round to 0), so readers must ternarize as QLinear does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from .checkpoint import NORMS
from .config import PRESETS, ModelArgs, to_hf_config
from .errors import BonsaiError
from .tokenizer import mistral_v1_spm, spm_to_tokenizer_json

HALF_SHARE = 0.02  # share of latent weights set to exactly +-0.5
TRAIN_RECIPE = 1  # bump with any change to bonsai_export/train.py that changes the trained-tiny weights


def inventory(args: ModelArgs) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of the checkpoint, in file order: name -> (shape, dtype)."""
    bf16, d = torch.bfloat16, args.dim
    inv = {"model.embed_tokens.weight": ((args.vocab_size, d), bf16)}
    for i in range(args.n_layers):
        for sub, (out, cols) in args.linear_shapes.items():
            inv[f"model.layers.{i}.{sub}.weight"] = ((out, cols), bf16)
            inv[f"model.layers.{i}.{sub}.scales"] = ((out,), bf16)
        for norm in NORMS:
            inv[f"model.layers.{i}.{norm}.weight"] = ((d,), bf16)
    inv["model.norm.weight"] = ((d,), bf16)
    if not args.tie_embeddings:
        inv["lm_head.weight"] = ((args.vocab_size, d), bf16)
    return inv


def _latent_weight(shape, gen) -> torch.Tensor:
    w = torch.randn(shape, generator=gen) * 0.8  # about half the weights round to +-1, the rest to 0
    halves = torch.rand(shape, generator=gen) < HALF_SHARE
    return torch.where(halves, torch.sign(w) * 0.5, w).to(torch.bfloat16)


def _tensor(name: str, shape, inv: dict, gen) -> torch.Tensor:
    if name.endswith(".scales"):
        fan_in = inv[name.removesuffix(".scales") + ".weight"][0][1]
        # Keep activations near unit variance: about half of T's entries are nonzero.
        return (torch.rand(shape, generator=gen) + 0.5).mul(1 / math.sqrt(0.5 * fan_in)).to(torch.bfloat16)
    if name.endswith("proj.weight"):
        return _latent_weight(shape, gen)
    if name.endswith("norm.weight"):
        return (1 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    if name == "lm_head.weight":
        return (torch.randn(shape, generator=gen) / math.sqrt(shape[1])).to(torch.bfloat16)
    return torch.randn(shape, generator=gen).to(torch.bfloat16)  # embeddings


def _tensors(preset: str, seed: int, progress: bool, retrain: bool = False) -> dict[str, torch.Tensor]:
    if preset == "trained-tiny":
        from .train import train_tensors

        return train_tensors(seed)
    if preset == "trained-small":
        from .train import small_tensors

        return small_tensors(seed, retrain)
    if retrain:
        raise BonsaiError(f"--retrain: only for the trained-small preset ({preset} has random weights)")
    gen = torch.Generator().manual_seed(seed)
    inv = inventory(PRESETS[preset])
    return {name: _tensor(name, shape, inv, gen)
            for name, (shape, _) in tqdm(inv.items(), desc="weights", unit="tensor", disable=not progress,
                                         leave=False)}


def make_checkpoint(preset: str, out: str | Path, seed: int = 0, progress: bool = True, retrain: bool = False) -> Path:
    """Write a synthetic checkpoint folder; atomically (built in a temporary folder, then renamed). trained-small
    comes from the committed weights unless `retrain`."""
    if preset not in PRESETS:
        raise BonsaiError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BonsaiError(f"{out}: exists and is not empty; choose a new --out folder")
    args = PRESETS[preset]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(_tensors(preset, seed, progress, retrain), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        _write_side_files(args, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_side_files(args: ModelArgs, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(to_hf_config(args), indent=2) + "\n")
    generation = {"bos_token_id": args.bos_id, "eos_token_id": args.eos_ids[0], "do_sample": False,
                  "transformers_version": "4.48.0"}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copyfile(mistral_v1_spm(), folder / "tokenizer.model")
    spm_to_tokenizer_json(folder / "tokenizer.model", folder / "tokenizer.json")
    tok_config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                  "model_max_length": args.max_seq_len}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def cache_dir() -> Path:
    """The project's cache: $BONSAI_EXPORT_CACHE or ~/.cache/bonsai-export (checkpoints, fetched packages)."""
    return Path(os.environ.get("BONSAI_EXPORT_CACHE", Path.home() / ".cache" / "bonsai-export"))


def cached_preset(preset: str, seed: int = 0) -> Path:
    """A preset checkpoint made once in the user's cache (cache_dir())."""
    cache = cache_dir()
    version = f"-r{TRAIN_RECIPE}" if preset == "trained-tiny" else ""  # a new recipe must not reuse old weights
    if preset == "trained-small":  # new committed weights must not reuse the old ones
        from .train import SMALL_FILE

        version = "-" + hashlib.sha256(SMALL_FILE.read_bytes()).hexdigest()[:12]
    folder = cache / f"{preset}{version}-seed{seed}"
    if not (folder / "config.json").is_file():
        logging.info("making the %s checkpoint in %s", preset, folder)
        make_checkpoint(preset, folder, seed=seed, progress=False)
    return folder


def default_model() -> Path:
    """The embedded default: the tiny synthetic checkpoint, made on first use in the user's cache."""
    return cached_preset("tiny")
