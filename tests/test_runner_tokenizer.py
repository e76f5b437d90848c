"""bonsai_runner's tokenizer (custom_ops/runner/bpe_tokenizer.cpp) against the reference.

For every tokenizer layout of this lineage (tokenizer_layouts.LAYOUTS) and every corpus string, the C++ ids over the
canonical tokenizer.json of the layout (transformers' pipeline for the folder, saved: what export writes into the
artifact) equal transformers' ids of the checkpoint folder, and decoding them gives what `tokenizers` decodes (skip_special_tokens=True). So do a tokenizer.json
with the legacy Prepend + Replace normalizer as checkpoints ship it, long prompts, and ids as a model generates them
(decoded whole and through TextStream, whose deltas must add up to the same text).
A malformed or unsupported tokenizer.json gives one error line naming the part and exit 2, never a crash.

The byte-level layouts (byte_level_layouts.py: Qwen2/Qwen3 and Llama-3, trained offline) are checked the same way,
and the pre-tokenizer's words on every assigned code point against `tokenizers`' normalizer and pre-tokenizer.

The tokenizer runs alone in tokenizer_cli (custom_ops/tests/tokenizer_cli.cpp), built here from the source tree
with AddressSanitizer and UBSan, so an out-of-bounds read on a bad file fails the test instead of passing by luck.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import byte_level_layouts
import pytest
import tokenizer_layouts
from test_kernels_native_builds import (AARCH64_SYSROOT, KERNEL_TESTS_ONLY, RUN_TIMEOUT_S, TOOLCHAIN, cmake_build,
                                        require, require_aarch64, tool)
from tokenizer_layouts import CORPUS, LAYOUTS

LEGACY_AS_SHIPPED = "legacy-normalizer-as-shipped"  # the checkpoints' own tokenizer.json, read raw
CASES = [*LAYOUTS, LEGACY_AS_SHIPPED]
assert len(CASES) == 14, CASES


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> Path:
    require("c++")
    build = tmp_path_factory.mktemp("tokenizer-cli")
    # Debug: nlohmann/json under the sanitizers compiles ~5x faster at -O0 than optimized, and runs fast enough.
    cmake_build(build, *KERNEL_TESTS_ONLY, "-DBONSAI_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug", target="tokenizer_cli")
    return build / "custom_ops" / "runner" / "tokenizer_cli"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    tokenizer_layouts.main(root)
    return root


def reference(layouts: Path, case: str) -> tuple[Path, list[list[int]]]:
    """The tokenizer.json an artifact of this layout carries (transformers' own pipeline, saved) and the reference
    ids of the corpus (tokenizer_layouts.reference_ids: AutoTokenizer's input_ids), from one load of the folder."""
    if case == LEGACY_AS_SHIPPED:
        path = layouts / "_base.tokenizer.json"
        return path, [pipeline(path).encode(s).ids for s in CORPUS]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(layouts / case))
    path = layouts / case / "canonical.tokenizer.json"
    tok.backend_tokenizer.save(str(path))
    return path, [tok(s)["input_ids"] for s in CORPUS]


def canonical(layouts: Path, case: str) -> Path:
    path = layouts / case / "canonical.tokenizer.json"
    return path if path.is_file() else reference(layouts, case)[0]


def run_cli(cli: Path, tokenizer_json: Path, inputs: list, tmp_path: Path) -> subprocess.CompletedProcess:
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps(inputs, ensure_ascii=False))
    return subprocess.run([str(cli), str(tokenizer_json), str(inputs_file)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def results(cli: Path, tokenizer_json: Path, inputs: list, tmp_path: Path) -> list[dict]:
    proc = run_cli(cli, tokenizer_json, inputs, tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode} (negative = signal):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout)["results"]
    assert len(out) == len(inputs)
    return out


def pipeline(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


@pytest.mark.parametrize("case", CASES)
def test_ids_and_text_equal_the_reference(cli, layouts, case, tmp_path):
    path, want = reference(layouts, case)
    ref = pipeline(path)
    got = results(cli, path, CORPUS, tmp_path)
    for text, ids, r in zip(CORPUS, want, got):
        assert r["ids"] == ids, f"{case}: {text!r}"
        assert r["text"] == ref.decode(ids, skip_special_tokens=True), f"{case}: {text!r}"


LONG_PROMPTS = [
    "The quick brown fox, naïve café, 日本語 😀 and <s> then </s>. " * 60,  # ~3500 characters, one BPE segment
    "a" * 3000 + " " + "\u2581" * 500 + "\t\n" * 300,
]


def test_long_prompts(cli, layouts, tmp_path):
    path = canonical(layouts, "metaspace-first-legacy-false")
    ref = pipeline(path)
    for r, text in zip(results(cli, path, LONG_PROMPTS, tmp_path), LONG_PROMPTS):
        assert r["ids"] == ref.encode(text).ids
        assert r["text"] == ref.decode(r["ids"], skip_special_tokens=True)


def generated_ids(ref) -> list[list[int]]:
    """Id sequences a model can produce: a character's bytes cut short or interrupted, specials inside, an id
    past the vocabulary; the decoder turns bad byte runs into U+FFFD per byte."""
    byte = {b: ref.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    word = ref.encode("Paris", add_special_tokens=False).ids
    return [
        [byte[0xE6], byte[0x97]],                                    # the first two bytes of a 3-byte character
        [*word, byte[0xE6], byte[0x97], byte[0xA5], *word],         # a whole one between words
        [byte[0xE6], 1, byte[0x97], byte[0xA5]],                     # a special token inside the run
        [byte[0xE6], *word, byte[0x97]],                             # a word inside it
        [byte[0xC0], byte[0x80], byte[0xED], byte[0xA0], byte[0x80]],  # overlong and surrogate forms
        [2, 1, 0, *word, 32000],                                     # specials only, then an id past the vocabulary
        [ref.token_to_id("\u2581"), *word],                          # the Strip decoder's one leading space
        [],
    ]


def test_decode_of_generated_ids(cli, layouts, tmp_path):
    for case in ("metaspace-first-legacy-false", "metaspace-first-no-prefix-space"):  # with and without Strip
        path = canonical(layouts, case)
        ref = pipeline(path)
        inputs = generated_ids(ref)
        for r, ids in zip(results(cli, path, inputs, tmp_path), inputs):
            assert r["text"] == ref.decode(ids, skip_special_tokens=True), (case, ids)
            assert "".join(r["streamed"]) == r["text"], (case, ids, r["streamed"])  # TextStream's deltas


# ---- refusals: one line naming the part, exit 2 ----

def edited(doc: dict, path: str, value) -> dict:
    """`doc` with the member at dotted `path` replaced by `value` (a copy; the tables are shared, not edited)."""
    keys = path.split(".")
    out = dict(doc)
    node = out
    for key in keys[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[keys[-1]] = value
    return out


# name -> (a function of the canonical file's text and its parsed JSON giving the file's content, the part named)
MALFORMED = {
    "truncated": (lambda text, doc: text[: len(text) // 2], "not valid JSON"),
    "empty": (lambda text, doc: "", "not valid JSON"),
    "binary": (lambda text, doc: b"\x00\xff\xfe garbage", "not valid JSON"),
    "invalid UTF-8 in a string": (lambda text, doc: text.encode().replace(b'"<unk>"', b'"\xff<unk>"', 1),
                                  "not valid JSON"),
    "trailing garbage": (lambda text, doc: text + " ]", "not valid JSON"),
    "deeply nested": (lambda text, doc: "[" * 200_000, "not valid JSON"),
    "a list": (lambda text, doc: "[1, 2]", "top level"),
    "vocab as a list": (lambda text, doc: json.dumps(edited(doc, "model.vocab", ["a", "b"])), "model.vocab"),
    "vocab id a string": (lambda text, doc: json.dumps(edited(doc, "model.vocab", {"a": "0"})), "model.vocab"),
    "vocab id negative": (lambda text, doc: json.dumps(edited(doc, "model.vocab", {"a": -1})), "model.vocab"),
    "vocab id huge": (lambda text, doc: json.dumps(edited(doc, "model.vocab", {"a": 2**40})), "model.vocab"),
    "merge a number": (lambda text, doc: json.dumps(edited(doc, "model.merges", [[1, 2]])), "model.merges"),
    "merge of three": (lambda text, doc: json.dumps(edited(doc, "model.merges", [["a", "b", "c"]])), "model.merges"),
    "merge off the vocabulary": (lambda text, doc: json.dumps(edited(doc, "model.merges", [["\u2581", "not-a-piece"]])),
                                 "model.merges[0]"),
    "model a string": (lambda text, doc: json.dumps(edited(doc, "model", "BPE")), "model"),
    "added_tokens an object": (lambda text, doc: json.dumps(edited(doc, "added_tokens", {})), "added_tokens"),
    "added content a number": (lambda text, doc: json.dumps(
        edited(doc, "added_tokens", [{**doc["added_tokens"][0], "content": 5}])), "added_tokens[0].content"),
    "added id wrong": (lambda text, doc: json.dumps(
        edited(doc, "added_tokens", [{**doc["added_tokens"][0], "id": 7}])), "added_tokens[0].id"),
    "single not a list": (lambda text, doc: json.dumps(edited(doc, "post_processor.single", "$A")),
                          "post_processor.single"),
    "decoder a string": (lambda text, doc: json.dumps(edited(doc, "decoder", "Fuse")), "decoder"),
    "pre_tokenizer ByteLevel": (lambda text, doc: json.dumps(edited(doc, "pre_tokenizer", {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True})), "pre_tokenizer"),
    "Metaspace split": (lambda text, doc: json.dumps(edited(doc, "pre_tokenizer.split", True)), "pre_tokenizer"),
    "no pre_tokenizer": (lambda text, doc: json.dumps(edited(doc, "pre_tokenizer", None)), "pre_tokenizer"),
    "normalizer NFKC": (lambda text, doc: json.dumps(edited(doc, "normalizer", {"type": "NFKC"})), "normalizer"),
    "WordPiece": (lambda text, doc: json.dumps(edited(doc, "model.type", "WordPiece")), "model.type"),
    "no byte fallback": (lambda text, doc: json.dumps(edited(doc, "model.byte_fallback", False)),
                         "model.byte_fallback"),
    "dropout": (lambda text, doc: json.dumps(edited(doc, "model.dropout", 0.1)), "model.dropout"),
    "normalized added token": (lambda text, doc: json.dumps(
        edited(doc, "added_tokens", [{**doc["added_tokens"][0], "normalized": True}])),
        "added_tokens[0].normalized"),
    "RobertaProcessing": (lambda text, doc: json.dumps(edited(doc, "post_processor", {
        "type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]})), "post_processor"),
    "Strip at the end": (lambda text, doc: json.dumps(edited(doc, "decoder.decoders", [
        *doc["decoder"]["decoders"][:3], {"type": "Strip", "content": " ", "start": 0, "stop": 1}])), "decoder"),
    "truncation": (lambda text, doc: json.dumps(edited(doc, "truncation", {
        "direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0})), "truncation"),
}
assert len(MALFORMED) == 31


@pytest.fixture(scope="module")
def canonical_text(layouts) -> tuple[str, dict]:
    text = canonical(layouts, "metaspace-first-legacy-false").read_text()
    return text, json.loads(text)


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_tokenizer_json_is_refused_on_one_line(cli, canonical_text, name, tmp_path):
    make, part = MALFORMED[name]
    bad = tmp_path / "tokenizer.json"
    content = make(*canonical_text)
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = run_cli(cli, bad, ["x"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, f"exit {proc.returncode} (negative = signal):\n{proc.stderr}"
    assert f"{bad}: {part}" in lines[0], lines[0]


def test_runner_refuses_a_bad_tokenizer_json_before_the_model(canonical_text, tmp_path):
    """bonsai_runner reads tokenizer.json first: a malformed one is refused on one line, whatever the .pte."""
    from bonsai_export.native import native_dir

    runner = native_dir() / "bonsai_runner"
    if not runner.is_file():
        pytest.skip(f"{runner} not built (pip install .)")
    (tmp_path / "model.pte").write_bytes(b"not a program")
    (tmp_path / "tokenizer.json").write_text(canonical_text[0][:1000])
    proc = subprocess.run([str(runner), str(tmp_path), "--prompt", "hi"], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "tokenizer.json: not valid JSON" in lines[0]
    (tmp_path / "tokenizer.json").unlink()
    proc = subprocess.run([str(runner), str(tmp_path), "--prompt", "hi"], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2 and "--prompt needs" in proc.stderr and "re-export" in proc.stderr, proc.stderr


# ---- byte-level BPE (Qwen2/Qwen3, Llama-3) ----

@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> dict[str, tuple[Path, list[list[int]]]]:
    """layout -> (its canonical tokenizer.json, transformers' ids of the byte-level corpus)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("byte-level")
    out = {}
    for name in byte_level_layouts.LAYOUTS:
        tok = AutoTokenizer.from_pretrained(str(byte_level_layouts.write_layout(name, root / name)))
        path = root / name / "canonical.tokenizer.json"
        tok.backend_tokenizer.save(str(path))
        out[name] = (path, [tok(s)["input_ids"] for s in byte_level_layouts.CORPUS])
    return out


@pytest.mark.parametrize("name", list(byte_level_layouts.LAYOUTS))
def test_byte_level_ids_and_text_equal_the_reference(cli, byte_level, name, tmp_path):
    path, want = byte_level[name]
    ref = pipeline(path)
    corpus = list(byte_level_layouts.CORPUS)
    got = results(cli, path, corpus + LONG_PROMPTS, tmp_path)
    for text, ids, r in zip(corpus, want, got):
        assert r["ids"] == ids, f"{name}: {text!r}"
        assert r["text"] == ref.decode(ids, skip_special_tokens=True), f"{name}: {text!r}"
    for text, r in zip(LONG_PROMPTS, got[len(corpus):]):
        assert r["ids"] == ref.encode(text).ids


def all_code_points_texts(chunk: int = 2048, also_unassigned: tuple = ()) -> list[str]:
    """Every code point Python's unicodedata assigns (the tables' source), each doubled, before a digit and again,
    space-separated: a letter, number, space or other class that differs from the regex engine's cuts otherwise,
    and NFC composes across the doubled marks. `also_unassigned`: (first, last) ranges to leave out too."""
    import bisect
    import unicodedata

    ranges = sorted(also_unassigned)
    firsts = [first for first, _ in ranges]

    def left_out(c: int) -> bool:
        k = bisect.bisect_right(firsts, c) - 1
        return k >= 0 and c <= ranges[k][1]

    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"
           and not left_out(c)]
    return [" ".join(chr(c) * 2 + "1" + chr(c) for c in cps[k:k + chunk]) for k in range(0, len(cps), chunk)]


@pytest.mark.parametrize("name", list(byte_level_layouts.LAYOUTS))
def test_byte_level_words_on_every_code_point(cli, byte_level, name, tmp_path):
    from bonsai_export.byte_level import byte_level_alphabet

    path = byte_level[name][0]
    ref = pipeline(path)
    alphabet = byte_level_alphabet()
    texts = all_code_points_texts()
    got = results(cli, path, [{"words": t} for t in texts], tmp_path)
    for text, r in zip(texts, got):
        normalized = ref.normalizer.normalize_str(text) if ref.normalizer else text
        want = [w for w, _ in ref.pre_tokenizer.pre_tokenize_str(normalized)]
        assert ["".join(alphabet[b] for b in w.encode()) for w in r["words"]] == want, text[:40]


def byte_level_generated_ids(ref) -> list[list[int]]:
    """Ids a model can produce: a character's bytes cut short or interrupted by specials and words, stray
    continuation bytes, the added tokens that are not special (decoded as their text), ids past the vocabulary."""
    from bonsai_export.byte_level import byte_level_alphabet

    alphabet = byte_level_alphabet()
    byte = {b: ref.token_to_id(alphabet[b]) for b in range(256)}
    word = ref.encode("Paris", add_special_tokens=False).ids
    specials = [ref.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<think>", "<|begin_of_text|>")
                if ref.token_to_id(t) is not None]
    return [
        [byte[0xE6], byte[0x97]],
        [*word, byte[0xE6], byte[0x97], byte[0xA5], *word],
        [byte[0xE6], *specials, byte[0x97], byte[0xA5]],
        [byte[0xE6], *word, byte[0x97]],
        [byte[0xC0], byte[0x80], byte[0xED], byte[0xA0], byte[0x80], byte[0xF4], byte[0x90], byte[0xFF]],
        [byte[0xF0], byte[0x9F], byte[0x98], byte[0xE2], byte[0x82], byte[0xAC], byte[0x80], byte[0xBF]],
        [*specials, *word, ref.get_vocab_size() + 5, *word],
        [],
    ]


def test_byte_level_decode_of_generated_ids(cli, byte_level, tmp_path):
    for name in byte_level_layouts.LAYOUTS:
        path = byte_level[name][0]
        ref = pipeline(path)
        inputs = byte_level_generated_ids(ref)
        for r, ids in zip(results(cli, path, inputs, tmp_path), inputs):
            assert r["text"] == ref.decode(ids, skip_special_tokens=True), (name, ids)
            assert "".join(r["streamed"]) == r["text"], (name, ids, r["streamed"])  # TextStream's deltas
        assert results(cli, path, [byte_level_generated_ids(ref)[0]], tmp_path)[0]["streamed"] == ["", "", "\ufffd"]


BYTE_LEVEL_MALFORMED = {  # an edit of the Qwen2 layout -> the part the one error line names
    "another regex": (["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], r"\s+|\w+", "pre_tokenizer"),
    "Split removed": (["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed", "pre_tokenizer"),
    "prefix space": (["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], True, "pre_tokenizer"),
    "pre_tokenizer a list": (["pre_tokenizer"], [1, 2], "pre_tokenizer"),
    "steps a string": (["pre_tokenizer", "pretokenizers"], "Split", "pre_tokenizer"),
    "NFKC": (["normalizer"], {"type": "NFKC"}, "normalizer"),
    "byte fallback": (["model", "byte_fallback"], True, "model.byte_fallback"),
    "prefix": (["model", "continuing_subword_prefix"], "##", "model.continuing_subword_prefix"),
    "ignore_merges a string": (["model", "ignore_merges"], "yes", "model.ignore_merges"),
    "two templates": (["post_processor"], {"type": "Sequence", "processors": [
        {"type": "TemplateProcessing", "single": [], "special_tokens": {}}] * 2}, "post_processor"),
}
assert len(BYTE_LEVEL_MALFORMED) == 10


@pytest.mark.parametrize("case", BYTE_LEVEL_MALFORMED)
def test_malformed_byte_level_tokenizer_json_is_refused_on_one_line(cli, byte_level, case, tmp_path):
    keys, value, part = BYTE_LEVEL_MALFORMED[case]
    spec = json.loads(byte_level["qwen2"][0].read_text())
    node = spec
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(spec, ensure_ascii=False))
    proc = run_cli(cli, bad, ["x"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, f"exit {proc.returncode} (negative = signal):\n{proc.stderr}"
    assert f"{bad}: {part}" in lines[0], lines[0]


def test_a_byte_level_vocabulary_missing_a_byte_is_refused(cli, byte_level, tmp_path):
    from bonsai_export.byte_level import byte_level_alphabet

    spec = json.loads(byte_level["qwen2"][0].read_text())
    lost = byte_level_alphabet()[0x7F]
    del spec["model"]["vocab"][lost]
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if lost not in "".join(m)]
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(spec, ensure_ascii=False))
    proc = run_cli(cli, bad, ["x"], tmp_path)
    assert proc.returncode == 2 and "model.vocab: no piece for byte 0x7F" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def aarch64_cli(tmp_path_factory) -> Path:
    """tokenizer_cli cross-compiled for aarch64 (the phone's side: no Python, no Unicode or regex library)."""
    require_aarch64()
    build = tmp_path_factory.mktemp("tokenizer-cli-aarch64")
    cmake_build(build, *KERNEL_TESTS_ONLY, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", target="tokenizer_cli")
    return build / "custom_ops" / "runner" / "tokenizer_cli"


def test_byte_level_under_qemu_aarch64(aarch64_cli, byte_level, tmp_path):
    for name, (path, want) in byte_level.items():
        inputs = tmp_path / "inputs.json"
        inputs.write_text(json.dumps(list(byte_level_layouts.CORPUS), ensure_ascii=False))
        qemu = [tool("qemu-aarch64"), "-L", AARCH64_SYSROOT, str(aarch64_cli), str(path), str(inputs)]
        proc = subprocess.run(qemu, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [r["ids"] for r in json.loads(proc.stdout)["results"]] == want, name
