"""Byte-level BPE tokenizer folders in the layouts Qwen2/Qwen3 and Llama-3 ship, trained offline with `tokenizers`
on text of the standard library (no hub access), and the awkward corpus. The reference ids of a layout are what
transformers.AutoTokenizer makes of its folder, as for the SentencePiece layouts (tokenizer_layouts.py).

    python tests/byte_level_layouts.py OUT   writes one folder per layout (tokenizer files only) under OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bonsai_export.byte_level import SPLIT_PATTERNS
from bonsai_export.tokenizer import PROBE_TEXTS

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
THINK = ["<think>", "</think>"]  # Qwen3's added tokens that are not special: decoded, never skipped
VOCAB_SIZE = 1200  # small: a load is quick, yet multi-byte characters and words get merges

# Strings typed where the specials are at home, on top of the export's probe texts.
CORPUS = (*PROBE_TEXTS, "<think>\nok</think>", "<|begin_of_text|>hi<|end_of_text|>", "a\u00a0\u00a0b\u3000c",
          "\r\r\n\n\r", "'s 'S 'ſ x'", "9999 1234567 ٣٤٥٦", "tab\t\tend\t")


def training_text() -> list[str]:
    """Docstrings of a few standard modules and the corpus itself: words, code, digits, CJK, emoji and marks."""
    import collections
    import json as json_module
    import pathlib
    import textwrap

    docs = []
    for module in (collections, json_module, pathlib, textwrap):
        docs += [obj.__doc__ for obj in vars(module).values() if isinstance(getattr(obj, "__doc__", None), str)]
    return docs + list(CORPUS) * 20


def train(pattern: str, nfc: bool, ignore_merges: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    return tok


def qwen2(folder: Path) -> Path:
    """Qwen2/Qwen3: NFC, the Qwen2 regex, specials past the vocabulary, no BOS, the ByteLevel post-processor."""
    from tokenizers import AddedToken, processors

    tok = train(SPLIT_PATTERNS["qwen2"], nfc=True, ignore_merges=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in THINK])
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False}
    return _write(folder, tok, cfg)


def llama3(folder: Path) -> Path:
    """Llama-3: no normalizer, its regex (digits three at a time), ignore_merges, BOS by the post-processor."""
    from tokenizers import AddedToken, processors

    tok = train(SPLIT_PATTERNS["llama3"], nfc=False, ignore_merges=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA3_SPECIALS])
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": LLAMA3_SPECIALS[1]}
    return _write(folder, tok, cfg)


def _write(folder: Path, tok, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


LAYOUTS = {"qwen2": qwen2, "llama3": llama3}


def write_layout(name: str, folder: Path) -> Path:
    return LAYOUTS[name](folder)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in LAYOUTS:
        write_layout(name, out / name)
    (out / "corpus.json").write_text(json.dumps(CORPUS, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
