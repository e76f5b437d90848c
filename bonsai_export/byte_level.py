"""Byte-level BPE's fixed parts (Qwen2/Qwen3, Llama-3 tokenizers): the pre-tokenizer regexes every runner
implements by name and GPT-2's byte alphabet; docs/TOKENIZER.md describes the rest."""

from __future__ import annotations

# The pre-tokenizer regexes the runners implement as plain code (custom_ops/runner/pretokenize.cpp, Tokenizer.kt),
# by name; a Split with any other pattern is refused. Qwen2's is transformers' Qwen2Tokenizer PRETOKENIZE_REGEX
# (Qwen3 ships the same tokenizer); Llama-3's differs only in taking digits three at a time.
SPLIT_PATTERNS = {
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68 bytes take the
    code points from U+0100 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in out:
            out[b], extra = chr(0x100 + extra), extra + 1
    return out
