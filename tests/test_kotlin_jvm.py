"""The app's Android-free Kotlin, compiled and run on a plain JVM: its tokenizer gives transformers' ids.

android_demo's Tokenizer.kt / TokenizerJson.kt (and Sampler.kt) are compiled with the Kotlin compiler that the PyPI
package kotlin-jupyter-kernel ships (the test extra), together with the app's own unit tests and a harness
(tests/kotlin/). The harness reads the canonical tokenizer.json of every layout in tokenizer_layouts.LAYOUTS (what
export writes into the artifact: transformers' backend_tokenizer) and encodes the corpus; the ids must equal
transformers.AutoTokenizer's, decoding must equal `tokenizers`' decode (special tokens skipped), and the streaming
decoder's deltas must add up to the same text. Pipelines outside docs/TOKENIZER.md's subset must be refused.
The byte-level layouts (byte_level_layouts.py: Qwen2/Qwen3, Llama-3) are checked the same way, and their words on
every assigned code point against `tokenizers`' normalizer and pre-tokenizer (WordsHarness.kt).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import byte_level_layouts
import pytest
from tokenizer_layouts import CORPUS, LAYOUTS, write_layout

ROOT = Path(__file__).resolve().parents[1]
APP_SRC = ROOT / "android_demo/app/src"
APP_MAIN = APP_SRC / "main/java/org/bonsaiexport/demo"
# The app's files that use no Android API (ArtifactKeys.kt: compiled so a generated object that is not valid Kotlin
# fails here); the rest (UI, ONNX Runtime, memory) cannot run on a plain JVM.
JVM_SOURCES = [APP_MAIN / f for f in ("Tokenizer.kt", "TokenizerJson.kt", "ByteLevel.kt", "Sampler.kt",
                                      "ArtifactKeys.kt", "Chat.kt")]
TEST_CLASSES = ["org.bonsaiexport.demo.TokenizerTest", "org.bonsaiexport.demo.SamplerTest",
                "org.bonsaiexport.demo.ChatTest"]
HARNESS = "org.bonsaiexport.demo.HarnessKt"
WORDS_HARNESS = "org.bonsaiexport.demo.WordsHarnessKt"
# the layout whose canonical tokenizer.json TokenizerTest's Bonsai examples are checked on
BONSAI_LAYOUT = "json-legacy-normalizer"
SPECIAL_IDS = {0, 1, 2}  # <unk> <s> </s> of Mistral v1's model
COMPILE_TIMEOUT_S = 600


def _kernel_jars() -> Path:
    spec = importlib.util.find_spec("run_kotlin_kernel")
    if spec is None or spec.origin is None:
        pytest.skip("the Kotlin compiler is missing: pip install '.[test]' (kotlin-jupyter-kernel)")
    return Path(spec.origin).parent / "jars"


def _jar(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        pytest.skip(f"kotlin-jupyter-kernel has no {pattern} in {folder}")
    return found[-1]


@pytest.fixture(scope="session")
def kotlin(tmp_path_factory):
    """(java, runtime classpath) with the app's JVM sources, its unit tests and the harness compiled once."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("no `java` on PATH: install a JRE 17+ (apt-get install default-jre-headless)")
    jars = _kernel_jars()
    compiler = _jar(jars, "kotlin-jupyter-kernel-*-all.jar")
    runtime = [_jar(jars, p) for p in ("kotlin-stdlib-[0-9]*.jar", "kotlinx-serialization-json-jvm-*.jar",
                                        "kotlinx-serialization-core-jvm-*.jar")]
    out = tmp_path_factory.mktemp("kotlin-classes")
    sources = JVM_SOURCES + sorted((APP_SRC / "test").rglob("*.kt")) + sorted((ROOT / "tests/kotlin").rglob("*.kt"))
    # C1 only: kotlinc is a short-lived JVM, and this halves its time (about 20 s on 2 cores)
    cmd = [java, "-XX:TieredStopAtLevel=1", "-cp", str(compiler), "org.jetbrains.kotlin.cli.jvm.K2JVMCompiler", "-no-stdlib", "-no-reflect",
           "-jvm-target", "17", "-cp", os.pathsep.join(map(str, runtime)), "-d", str(out), *map(str, sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert done.returncode == 0, f"kotlinc failed:\n{done.stdout}\n{done.stderr}"
    return java, os.pathsep.join([str(out), *map(str, runtime)])


def run_harness(kotlin, request: dict, tmp_path: Path, env: dict | None = None, main: str = HARNESS) -> dict:
    java, classpath = kotlin
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([java, "-Dfile.encoding=UTF-8", "-cp", classpath, main, str(path)], capture_output=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return json.loads(done.stdout.decode("utf-8"))


# --- the layouts and what the reference makes of them ------------------------------------------------------------

@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    """layout name -> (its canonical tokenizer.json, transformers' ids of CORPUS)."""
    from transformers import AutoTokenizer

    from bonsai_export.tokenizer import mistral_v1_spm
    from bonsai_export.sentencepiece_json import spm_to_tokenizer_json

    root = tmp_path_factory.mktemp("kotlin-layouts")
    spm = mistral_v1_spm()
    base = root / "_base.tokenizer.json"
    spm_to_tokenizer_json(spm, base)
    out = {}
    for name in LAYOUTS:
        ref = AutoTokenizer.from_pretrained(str(write_layout(name, root / name, spm, base)))
        path = root / f"{name}.tokenizer.json"
        ref.backend_tokenizer.save(str(path))
        out[name] = (path, [ref(s)["input_ids"] for s in CORPUS])
    return out


def _byte_piece_ids(vocab: dict) -> list[int]:
    return [i for p, i in vocab.items() if len(p) == 6 and p.startswith("<0x")]


def decode_requests(ids_per_text: list[list[int]], vocab: dict, seed: int = 0) -> list[dict]:
    """What to decode: each text's ids; each again after a prompt cut at a piece that is not a byte; and random
    sequences of byte pieces (valid and invalid UTF-8), special tokens, ordinary pieces and unknown ids."""
    rng = random.Random(seed)
    byte_ids, size = set(_byte_piece_ids(vocab)), max(vocab.values()) + 1
    requests = [{"context": [], "ids": ids} for ids in ids_per_text]
    for ids in ids_per_text:
        # a cut inside a run of byte pieces (skipped special tokens do not end one) would change the prompt's text
        shown = [[i for i in ids[:k] if i not in SPECIAL_IDS] for k in range(len(ids))]
        cuts = [k for k in range(1, len(ids)) if not shown[k] or shown[k][-1] not in byte_ids]
        if cuts:
            k = rng.choice(cuts)
            requests.append({"context": ids[:k], "ids": ids[k:]})
    pools = [sorted(byte_ids), sorted(byte_ids), sorted(SPECIAL_IDS), range(259, size), [size, size + 7]]
    for _ in range(60):
        requests.append({"context": [], "ids": [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 16))]})
    return requests


def check_case(result: dict, path: Path, texts: list[str], want_ids: list[list[int]], decodes: list[dict]):
    """The harness's answer for one tokenizer.json against the reference ids and `tokenizers`' decoding."""
    from tokenizers import Tokenizer

    assert "error" not in result, result.get("error")
    for text, got, want in zip(texts, result["ids"], want_ids):
        assert got == want, f"{path.name}: {text!r}"
    ref = Tokenizer.from_file(str(path))
    for req, decoded, streamed in zip(decodes, result["decoded"], result["streamed"]):
        assert decoded == ref.decode(req["ids"], skip_special_tokens=True), req
        head = ref.decode(req["context"], skip_special_tokens=True)
        full = ref.decode(req["context"] + req["ids"], skip_special_tokens=True)
        assert full.startswith(head) and "".join(streamed) == full[len(head):], (req, streamed)


# --- the tests ---------------------------------------------------------------------------------------------------

def test_every_layout_gives_transformers_ids(kotlin, canonical, tmp_path):
    assert len(canonical) == len(LAYOUTS) and len(CORPUS) >= 30
    vocab = json.loads(canonical[BONSAI_LAYOUT][0].read_text())["model"]["vocab"]
    cases, checks = [], []
    for name, (path, want) in canonical.items():
        decodes = decode_requests(want, vocab)
        cases.append({"tokenizer": str(path), "texts": list(CORPUS), "decode": decodes})
        checks.append((path, list(CORPUS), want, decodes))
    answer = run_harness(kotlin, {"cases": cases}, tmp_path)
    assert len(answer["cases"]) == len(checks)
    for result, check in zip(answer["cases"], checks):
        check_case(result, *check)


def _variant(path: Path, dst: Path, edit) -> Path:
    spec = json.loads(path.read_text())
    edit(spec)
    dst.write_text(json.dumps(spec, ensure_ascii=False))
    return dst


def _eos_template(spec: dict) -> None:
    spec["post_processor"]["single"].append({"SpecialToken": {"id": "</s>", "type_id": 0}})
    spec["post_processor"]["special_tokens"]["</s>"] = {"id": "</s>", "ids": [2], "tokens": ["</s>"]}


def _unk_without_some_bytes(spec: dict) -> None:
    """unk_token set and the byte pieces of most multi-byte characters gone: code points become (fused) unks."""
    spec["model"]["unk_token"] = "<unk>"
    for b in range(0x80, 0xF0):
        del spec["model"]["vocab"][f"<0x{b:02X}>"]


def _merges_as_strings(spec: dict) -> None:
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]


VARIANTS = {  # pipelines of the subset that no layout produces; the judge is `tokenizers` itself
    "legacy-normalizer": None,  # spm_to_tokenizer_json's own file: Prepend + Replace normalizer, no pre-tokenizer
    "eos-template": _eos_template,
    "unk-fused": _unk_without_some_bytes,
    "merges-as-strings": _merges_as_strings,
}


def test_subset_variants_follow_tokenizers(kotlin, canonical, tmp_path):
    from tokenizers import Tokenizer

    base = canonical[BONSAI_LAYOUT][0]
    legacy = base.parent / "_base.tokenizer.json"
    cases, checks = [], []
    for name, edit in VARIANTS.items():
        path = legacy if edit is None else _variant(base, tmp_path / f"{name}.json", edit)
        ref = Tokenizer.from_file(str(path))
        want = [ref.encode(s).ids for s in CORPUS]
        decodes = decode_requests(want, json.loads(path.read_text())["model"]["vocab"], seed=1)
        cases.append({"tokenizer": str(path), "texts": list(CORPUS), "decode": decodes})
        checks.append((path, list(CORPUS), want, decodes))
    answer = run_harness(kotlin, {"cases": cases}, tmp_path)
    for result, check in zip(answer["cases"], checks):
        check_case(result, *check)


def test_long_text_encodes_fast_and_right(kotlin, canonical, tmp_path):
    """One 40k-character segment (no added token splits it) and a long ordinary text: the BPE is O(n log n)."""
    from tokenizers import Tokenizer

    path = canonical[BONSAI_LAYOUT][0]
    texts = ["x".join(CORPUS[:20]).replace(" ", "") * 60, " ".join(CORPUS) * 40]
    ref = Tokenizer.from_file(str(path))
    answer = run_harness(kotlin, {"cases": [{"tokenizer": str(path), "texts": texts}]}, tmp_path)
    result = answer["cases"][0]
    assert result["ids"] == [ref.encode(t).ids for t in texts]
    assert result["encode_ms"] < 20_000, result["encode_ms"]  # seconds at worst on a loaded 2-core machine


def _set(path: list, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


REFUSED = {  # a pipeline outside the subset -> the part the message must name
    "model.dropout": _set(["model", "dropout"], 0.1),
    "model.byte_fallback": _set(["model", "byte_fallback"], False),
    "model.fuse_unk": _set(["model", "fuse_unk"], False),
    "model.continuing_subword_prefix": _set(["model", "continuing_subword_prefix"], "##"),
    "model.ignore_merges": _set(["model", "ignore_merges"], True),
    "model.type": _set(["model", "type"], "WordPiece"),
    "normalizer": _set(["normalizer"], {"type": "NFKC"}),
    "pre_tokenizer.type": _set(["pre_tokenizer"], {"type": "ByteLevel", "add_prefix_space": False}),
    "pre_tokenizer.split": _set(["pre_tokenizer", "split"], True),
    "pre_tokenizer.prepend_scheme": _set(["pre_tokenizer", "prepend_scheme"], "sometimes"),
    "added_tokens[1].lstrip": _set(["added_tokens", 1, "lstrip"], True),
    "added_tokens[2].normalized": _set(["added_tokens", 2, "normalized"], True),
    "post_processor.type": _set(["post_processor"], {"type": "RobertaProcessing"}),
    "decoder": _set(["decoder", "decoders", 3, "start"], 2),
    "truncation": _set(["truncation"], {"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                                        "direction": "Right"}),
}


def _small(spec: dict, size: int = 400) -> dict:
    """The pipeline with only the first `size` pieces (and the merges among them): quick to load."""
    vocab = {p: i for p, i in spec["model"]["vocab"].items() if i < size}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [m for m in spec["model"]["merges"]
                               if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    return spec


def test_pipelines_outside_the_subset_are_refused_naming_the_part(kotlin, canonical, tmp_path):
    base = _small(json.loads(canonical[BONSAI_LAYOUT][0].read_text()))
    cases = []
    for k, (part, edit) in enumerate(REFUSED.items()):
        spec = copy.deepcopy(base)
        edit(spec)
        path = tmp_path / f"refused{k}.json"
        path.write_text(json.dumps(spec, ensure_ascii=False))
        cases.append({"tokenizer": str(path), "texts": ["a"]})
    (tmp_path / "accepted.json").write_text(json.dumps(base, ensure_ascii=False))
    cases.append({"tokenizer": str(tmp_path / "accepted.json"), "texts": ["a"]})
    answer = run_harness(kotlin, {"cases": cases}, tmp_path)
    assert "error" not in answer["cases"].pop(), "the unedited pipeline must load"
    for part, result in zip(REFUSED, answer["cases"]):
        assert result.get("error", "").startswith(f"tokenizer.json: {part} "), (part, result)
        assert "docs/TOKENIZER.md" in result["error"]


def test_the_apps_unit_tests_pass(kotlin, canonical, tmp_path):
    """TokenizerTest and SamplerTest, the files Gradle runs, through the JUnit stand-in of tests/kotlin/junit."""
    env = {"BONSAI_TOKENIZER_JSON": str(canonical[BONSAI_LAYOUT][0])}
    answer = run_harness(kotlin, {"junit": TEST_CLASSES}, tmp_path, env=env)
    results = {r["test"]: r for r in answer["junit"]}
    assert len(results) >= 12
    bad = {name: r["message"] for name, r in results.items() if r["status"] != "passed"}
    assert not bad, bad


# --- byte-level BPE (Qwen2/Qwen3, Llama-3) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    """layout name -> (its canonical tokenizer.json, transformers' ids of the byte-level corpus)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("kotlin-byte-level")
    out = {}
    for name in byte_level_layouts.LAYOUTS:
        ref = AutoTokenizer.from_pretrained(str(byte_level_layouts.write_layout(name, root / name)))
        path = root / f"{name}.tokenizer.json"
        ref.backend_tokenizer.save(str(path))
        out[name] = (path, [ref(s)["input_ids"] for s in byte_level_layouts.CORPUS])
    return out


def byte_level_decode_requests(path: Path, ids_per_text: list[list[int]], seed: int = 0) -> list[dict]:
    """Each text's ids; each again after a prompt cut where its text is final (not inside a character); random
    sequences of single-byte pieces (valid and invalid UTF-8), added tokens, other pieces and unknown ids."""
    from tokenizers import Tokenizer

    from bonsai_export.byte_level import byte_level_alphabet

    ref = Tokenizer.from_file(str(path))
    rng = random.Random(seed)
    requests = [{"context": [], "ids": ids} for ids in ids_per_text]
    for ids in ids_per_text:
        full = ref.decode(ids, skip_special_tokens=True)
        cuts = [k for k in range(1, len(ids)) if full.startswith(ref.decode(ids[:k], skip_special_tokens=True))]
        if cuts:
            k = rng.choice(cuts)
            requests.append({"context": ids[:k], "ids": ids[k:]})
    size = ref.get_vocab_size()
    byte_ids = [ref.token_to_id(c) for c in byte_level_alphabet().values()]
    added = [ref.token_to_id(t) for t in (*byte_level_layouts.QWEN_SPECIALS, *byte_level_layouts.THINK,
                                          *byte_level_layouts.LLAMA3_SPECIALS) if ref.token_to_id(t) is not None]
    pools = [byte_ids, byte_ids, added, range(256, size), [size, size + 7]]
    for _ in range(60):
        requests.append({"context": [], "ids": [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 16))]})
    return requests


def test_byte_level_layouts_give_transformers_ids(kotlin, byte_level, tmp_path):
    corpus = list(byte_level_layouts.CORPUS)
    cases, checks = [], []
    for path, want in byte_level.values():
        decodes = byte_level_decode_requests(path, want)
        cases.append({"tokenizer": str(path), "texts": corpus, "decode": decodes})
        checks.append((path, corpus, want, decodes))
    answer = run_harness(kotlin, {"cases": cases}, tmp_path)
    for result, check in zip(answer["cases"], checks):
        check_case(result, *check)


def test_byte_level_words_on_every_code_point(kotlin, byte_level, tmp_path):
    """The app's Unicode classes and NFC are the JVM's (java.lang.Character, java.text.Normalizer): the cuts must
    equal `tokenizers`' on every code point both Python's unicodedata and the JVM assign (Java 17 has Unicode 13:
    a character new in 14, such as the Tangsa digits, is no number to it)."""
    from test_runner_tokenizer import all_code_points_texts
    from tokenizers import Tokenizer

    from bonsai_export.byte_level import byte_level_alphabet

    alphabet = byte_level_alphabet()
    jvm = run_harness(kotlin, {"tokenizer": str(byte_level["qwen2"][0]), "texts": []}, tmp_path, main=WORDS_HARNESS)
    texts = all_code_points_texts(also_unassigned=tuple(map(tuple, jvm["unassigned"])))
    for name, (path, _) in byte_level.items():
        ref = Tokenizer.from_file(str(path))
        answer = run_harness(kotlin, {"tokenizer": str(path), "texts": texts}, tmp_path, main=WORDS_HARNESS)
        for text, got in zip(texts, answer["words"]):
            normalized = ref.normalizer.normalize_str(text) if ref.normalizer else text
            want = [w for w, _ in ref.pre_tokenizer.pre_tokenize_str(normalized)]  # as byte-level characters
            assert ["".join(alphabet[b] for b in w.encode()) for w in got] == want, (name, text[:40])


def _alphabet_char(byte: int) -> str:
    from bonsai_export.byte_level import byte_level_alphabet

    return byte_level_alphabet()[byte]


def _without_byte(spec: dict) -> None:
    lost = _alphabet_char(0x41)
    del spec["model"]["vocab"][lost]
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if lost not in "".join(m)]


BYTE_LEVEL_REFUSED = {  # an edit of the Qwen2 layout -> the part the message must name
    "pre_tokenizer": _set(["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], r"\s+|\w+"),
    "normalizer": _set(["normalizer"], {"type": "NFKC"}),
    "model.byte_fallback": _set(["model", "byte_fallback"], True),
    "model.dropout": _set(["model", "dropout"], 0.2),
    "post_processor": _set(["post_processor"], {"type": "Sequence", "processors": [
        {"type": "TemplateProcessing", "single": []}] * 2}),
    "model.vocab": _without_byte,
}


def test_byte_level_pipelines_outside_the_subset_are_refused(kotlin, byte_level, tmp_path):
    base = json.loads(byte_level["qwen2"][0].read_text())
    cases = []
    for k, edit in enumerate(BYTE_LEVEL_REFUSED.values()):
        spec = copy.deepcopy(base)
        edit(spec)
        path = tmp_path / f"refused{k}.json"
        path.write_text(json.dumps(spec, ensure_ascii=False))
        cases.append({"tokenizer": str(path), "texts": ["a"]})
    answer = run_harness(kotlin, {"cases": cases}, tmp_path)
    for part, result in zip(BYTE_LEVEL_REFUSED, answer["cases"]):
        assert result.get("error", "").startswith(f"tokenizer.json: {part} "), (part, result)
