"""Deterministic synthetic checkpoints in Bonsai's own format, for tests, demos and benchmarks.

The weights are random, but everything else is what deepgrove/Bonsai publishes: config.json (QLlamaForCausalLM
with auto_map), generation_config.json, one model.safetensors of bf16 tensors with HF names, and the Mistral v1
SentencePiece tokenizer as tokenizer.model plus tokenizer.json. Linear weights are LATENT values spread beyond
+-1 with some exact +-0.5 (which must round to 0), so readers must ternarize as QLinear does.

The Qwen3 presets (ternary-bonsai-*) are prism-ml's unpacked Ternary-Bonsai folders instead: Qwen3 config.json,
bf16 weights whose every group of 128 along a row is one magnitude times {-1, 0, +1} (all linears, the tied
embedding), and a Qwen2-style byte-level BPE tokenizer.json with Qwen's added tokens at Qwen's ids.

The BitNet presets are transformers' packed BitNet folders: bitnet-2b4t* as microsoft/bitnet-b1.58-2B-4T
(BitNetForCausalLM, autobitlinear: y = (x @ T^T) * weight_scale), falcon3-1.58bit* as tiiuae's Falcon3-1.58bit
(LlamaForCausalLM, bitlinear: y = (x @ T^T) / weight_scale): every linear a uint8 [ceil(out / 4), in] of 2-bit
codes (bitnet.py) plus a bf16 weight_scale [1], the rest bf16, and a Llama-3-style byte-level BPE tokenizer.json.
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

from . import bitnet
from .byte_level import SPLIT_PATTERNS
from .checkpoint import GROUP_SIZE, NORMS, QK_NORMS, SUB_NORMS
from .config import PRESETS, ModelArgs
from .errors import BonsaiError
from .hf_configs import hf_config, to_falcon3_bitnet_config, to_hf_config
from .sentencepiece_json import spm_to_tokenizer_json
from .tokenizer import mistral_v1_spm

HALF_SHARE = 0.02  # share of latent weights set to exactly +-0.5
EMBED_STD = 0.1  # the BitNet presets' embedding scale (see _bitnet_tensor)
TRAIN_RECIPE = 1  # bump with any change to bonsai_export/train.py that changes the trained-tiny weights


# Presets stored in transformers' packed BitNet format, and their scale convention (bitnet.LINEAR_CLASSES).
BITNET_PRESETS = {"bitnet-2b4t": "autobitlinear", "bitnet-2b4t-tiny": "autobitlinear",
                  "falcon3-1.58bit": "bitlinear", "falcon3-1.58bit-tiny": "bitlinear"}


def inventory(args: ModelArgs, packed: bool = False) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of the checkpoint, in file order: name -> (shape, dtype). `packed`: transformers' BitNet
    format (uint8 [ceil(out / 4), in] weights and a weight_scale [1] each; BitNet's sub-layer norms if the model
    has them)."""
    if packed:
        return _bitnet_inventory(args)
    bf16, d = torch.bfloat16, args.dim
    inv = {"model.embed_tokens.weight": ((args.vocab_size, d), bf16)}
    for i in range(args.n_layers):
        for sub, (out, cols) in args.linear_shapes.items():
            inv[f"model.layers.{i}.{sub}.weight"] = ((out, cols), bf16)
            if not args.qk_norm:  # Qwen3 (unpacked Ternary-Bonsai): the scales are inside the weights
                inv[f"model.layers.{i}.{sub}.scales"] = ((out,), bf16)
        for norm in NORMS:
            inv[f"model.layers.{i}.{norm}.weight"] = ((d,), bf16)
        for norm in QK_NORMS if args.qk_norm else ():
            inv[f"model.layers.{i}.self_attn.{norm}.weight"] = ((args.head_dim,), bf16)
    inv["model.norm.weight"] = ((d,), bf16)
    if not args.tie_embeddings:
        inv["lm_head.weight"] = ((args.vocab_size, d), bf16)
    return inv


def _bitnet_inventory(args: ModelArgs) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    bf16, d = torch.bfloat16, args.dim
    inv = {"model.embed_tokens.weight": ((args.vocab_size, d), bf16)}
    for i in range(args.n_layers):
        for sub, (out, cols) in args.linear_shapes.items():
            inv[f"model.layers.{i}.{sub}.weight"] = ((-(-out // 4), cols), torch.uint8)
            inv[f"model.layers.{i}.{sub}.weight_scale"] = ((1,), bf16)
        for norm in NORMS:
            inv[f"model.layers.{i}.{norm}.weight"] = ((d,), bf16)
        for norm, size in zip(SUB_NORMS, (d, args.hidden_dim)) if args.sub_norms else ():
            inv[f"model.layers.{i}.{norm}.weight"] = ((size,), bf16)
    inv["model.norm.weight"] = ((d,), bf16)
    if not args.tie_embeddings:
        inv["lm_head.weight"] = ((args.vocab_size, d), bf16)
    return inv


def _bitnet_tensor(name: str, shape, args: ModelArgs, linear_class: str, gen) -> torch.Tensor:
    """Uniform trits packed, a weight_scale keeping outputs near unit variance in the file's convention, norms
    near 1, a unit-variance embedding and a 1/sqrt(dim) head."""
    if name.endswith("proj.weight"):
        out = args.linear_shapes[name.split(".", 3)[3].removesuffix(".weight")][0]
        return bitnet.pack(torch.randint(-1, 2, (out, shape[1]), generator=gen, dtype=torch.int8))
    if name.endswith("weight_scale"):
        module = name.split(".", 3)[3].removesuffix(".weight_scale")
        s = (torch.rand(1, generator=gen) + 0.5) / math.sqrt(2 / 3 * args.linear_shapes[module][1])
        return (s if linear_class == "autobitlinear" else 1 / s).to(torch.bfloat16)
    if name.endswith("norm.weight"):
        return (1 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    if name == "lm_head.weight":
        return (torch.randn(shape, generator=gen) / math.sqrt(shape[1])).to(torch.bfloat16)
    # small next to the layers' unit-variance outputs: a tied head on a unit-variance embedding predicts the
    # input token again and again (greedy text of one token)
    return (torch.randn(shape, generator=gen) * EMBED_STD).to(torch.bfloat16)


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


def _group_ternary(shape, gen) -> torch.Tensor:
    """bf16 W = s_g * T: T uniform over {-1, 0, +1}, one bf16 magnitude per group of 128 (so W is exact in bf16)."""
    out, cols = shape
    t = torch.randint(-1, 2, shape, generator=gen, dtype=torch.int8)
    s = (torch.rand(out, cols // GROUP_SIZE, generator=gen) + 0.5) / math.sqrt(2 / 3 * cols)  # unit variance out
    return (t.to(torch.bfloat16) * s.to(torch.bfloat16).repeat_interleave(GROUP_SIZE, dim=1))


def _qwen3_tensor(name: str, shape, gen) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return (1 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    return _group_ternary(shape, gen)  # every linear and the (tied) embedding


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
    if preset in BITNET_PRESETS:
        args = PRESETS[preset]
        return {name: _bitnet_tensor(name, shape, args, BITNET_PRESETS[preset], gen)
                for name, (shape, _) in tqdm(inventory(args, packed=True).items(), desc="weights", unit="tensor",
                                             disable=not progress, leave=False)}
    inv = inventory(PRESETS[preset])
    make = (lambda name, shape: _qwen3_tensor(name, shape, gen)) if PRESETS[preset].qk_norm else (
        lambda name, shape: _tensor(name, shape, inv, gen))
    return {name: make(name, shape)
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
        write = (_write_bitnet_side_files if preset in BITNET_PRESETS
                 else _write_qwen3_side_files if args.qk_norm else _write_side_files)
        write(args, tmp)
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


# Qwen2/Qwen3's pre-tokenizer split, then byte-level; the added tokens of Qwen3, from <|endoftext|> on, in id
# order (special: whether transformers treats them as special tokens).
QWEN3_ADDED = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [("<tool_call>", False), ("</tool_call>", False)] + [(t, True) for t in (
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")] + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]
# ChatML with Qwen3's thinking switch: enable_thinking=false pre-fills an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}"
    "{%- endif %}{%- endif %}")


def _bpe_corpus() -> list[str]:
    """Fixed text to learn merges from: the Zen of Python (the same in every Python 3) and a few lines that
    exercise the byte-level alphabet (accents, CJK, emoji, digits, code)."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return [codecs.decode(this.s, "rot13"), "naïve café déjà vu — “quotes” 東京 北京 你好 世界 😀 👍",
            "def f(x):\n    return x ** 2 + 3.14159 * x - 42\n\tif a != b: print('ok')\n", "0123456789 " * 8]


def _learned_spec(tok, first_added: int, filler: str) -> dict:
    """tok's BPE learned on _bpe_corpus() as tokenizer.json's dict, its vocabulary filled up to `first_added` with
    unreachable `filler`-named pieces (as real byte-level vocabularies hold rows past their merges)."""
    from tokenizers import pre_tokenizers, trainers

    tok.train_from_iterator(_bpe_corpus(), trainers.BpeTrainer(
        vocab_size=first_added, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > first_added:
        raise BonsaiError(f"tokenizer: {len(vocab)} learned tokens do not fit below id {first_added}")
    vocab.update({filler.format(i): i for i in range(len(vocab), first_added)})
    return spec


def byte_level_bpe(first_added: int) -> str:
    """A Qwen2-style tokenizer.json: NFC, the Qwen2 split and byte-level pre-tokenizer, BPE learned offline on
    _bpe_corpus() (unreachable <|reserved_i|> entries fill the vocabulary up to `first_added`, as Qwen's rows
    past its merges), then QWEN3_ADDED at first_added.."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS["qwen2"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    spec = _learned_spec(tok, first_added, "<|reserved_{}|>")
    spec["added_tokens"] = [{"id": first_added + i, "content": content, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": special}
                            for i, (content, special) in enumerate(QWEN3_ADDED)]
    return Tokenizer.from_str(json.dumps(spec)).to_str(pretty=True)


def _write_qwen3_side_files(args: ModelArgs, folder: Path) -> None:
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json as a Qwen3 folder has them."""
    (folder / "config.json").write_text(json.dumps(hf_config(args), indent=2) + "\n")
    generation = {"bos_token_id": args.bos_id, "do_sample": True, "eos_token_id": [args.eos_ids[0], args.bos_id],
                  "pad_token_id": args.pad_id, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                  "transformers_version": "4.51.0"}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (folder / "tokenizer.json").write_text(byte_level_bpe(args.bos_id))
    added = {str(args.bos_id + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": special}
             for i, (content, special) in enumerate(QWEN3_ADDED)}
    tok_config = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
                  "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
                  "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": args.max_seq_len,
                  "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
                  "unk_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


# Llama-3's added tokens in id order from <|begin_of_text|>; a model's remaining added rows are reserved specials.
LLAMA3_ADDED = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")
# BitNet b1.58 2B4T's chat format: "Role: content<|eot_id|>" turns after <|begin_of_text|>.
BITNET_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")


def llama3_bpe(first_added: int, vocab_size: int) -> str:
    """A Llama-3-style tokenizer.json: no normalizer, Llama-3's split (digits three at a time) then byte-level,
    ignore_merges, BPE learned offline on _bpe_corpus() (unreachable <|filler_i|> pieces up to `first_added`),
    LLAMA3_ADDED then <|reserved_special_token_i|> from first_added to vocab_size, and <|begin_of_text|> added by
    the post-processor, as Meta's file has it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS["llama3"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    spec = _learned_spec(tok, first_added, "<|filler_{}|>")
    names = list(LLAMA3_ADDED[:vocab_size - first_added])
    names += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + vocab_size - first_added - len(names))]
    spec["added_tokens"] = [{"id": first_added + i, "content": name, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True} for i, name in enumerate(names)]
    bos = names[0]
    spec["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {bos: {"id": bos, "ids": [first_added], "tokens": [bos]}}}]}
    return Tokenizer.from_str(json.dumps(spec)).to_str(pretty=True)


def _write_bitnet_side_files(args: ModelArgs, folder: Path) -> None:
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json as the hub folders of
    microsoft/bitnet-b1.58-2B-4T (sub-layer norms) or a tiiuae Falcon3-1.58bit (plain Llama) have them."""
    config = hf_config(args) if args.sub_norms else to_falcon3_bitnet_config(args)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": args.bos_id, "do_sample": False, "eos_token_id": args.eos_ids[0],
                  "transformers_version": "4.52.0"}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (folder / "tokenizer.json").write_text(llama3_bpe(args.bos_id, args.vocab_size))
    tok_config = {"add_bos_token": True, "bos_token": LLAMA3_ADDED[0], "clean_up_tokenization_spaces": True,
                  "eos_token": LLAMA3_ADDED[1], "model_max_length": args.max_seq_len,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
    if args.sub_norms:
        tok_config["chat_template"] = BITNET_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


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
