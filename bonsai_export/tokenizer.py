"""The tokenizer: one `tokenizers` pipeline per folder, equal to transformers' (docs/TOKENIZER.md).

- A checkpoint folder is read by `transformers.AutoTokenizer`, the reference; its `backend_tokenizer` is the
  pipeline transformers itself runs (in transformers 5 a Llama tokenizer rebuilds its pre-tokenizer from
  tokenizer_config.json, so the file's own pre-tokenizer cannot be trusted).
- An artifact folder carries that pipeline as its canonical tokenizer.json (`write_canonical`), read with raw
  `tokenizers`: what bonsai_runner and the Android app implement too.
- Two families are supported: SentencePiece-style BPE (Llama-2, Mistral: byte fallback, "▁" for spaces) and
  byte-level BPE (Qwen2/Qwen3, Llama-3: a known pre-tokenizer regex, every byte one symbol).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .byte_level import SPLIT_PATTERNS, byte_level_alphabet
from .errors import BonsaiError

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own file for a folder's single template
SPM_MODEL = "tokenizer.model"
MARKER = "\u2581"  # SentencePiece's visible space

# Strings on which the written pipeline is checked against transformers at export (and the tests' corpus).
PROBE_TEXTS = (
    "The capital of France is", "Once upon a time", " leading space", "  two leading spaces", "trailing space ",
    "a  b   c    d", "tab\there", "\tstarts with a tab", "new\nline\n\nand two", "\n", " ", "   ", ".punct first",
    "!?", "3 starts with a digit", "2026-12-01 12:00", "café naïve résumé", "Ünïcödé", "日本語のテキスト", "中文 字",
    "emoji 😀 and 👍🏽", "<s> typed as text", "Hello <s> world", "x</s>y", "<unk>", "<s><s>", "a<s>b</s>c",
    "<s", "s>", "mixed\t \n spaces", "\u00a0nbsp", "zero\u200bwidth", "def f(x):\n    return x + 1", "",
    # what a byte-level pre-tokenizer regex cuts on: contractions, digit runs, \r\n, punctuation runs, marks
    "it's, don't, we're, they've, I'm, you'll, he'd", "IT'S DON'T 'Re 'LL", "x's'", "12345678901 and 3.14159",
    "line\r\nbreak\r\n\r\n", "  \n\t  \r\n", "trailing spaces   ", "...!!!???---", "(a) [b] {c} \"d\" 'e'",
    "e\u0301 vs \u00e9, A\u030a, \u1e9b\u0323",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family, \U0001f1eb\U0001f1f7",
    "\u0661\u0662\u0663 \u2167 \u00bd", "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|>",
    "x<|im_end|><|im_start|>y", "<|im_start", "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
)


def mistral_v1_spm() -> Path:
    """Mistral v1's SentencePiece model (Bonsai's tokenizer), as shipped in the mistral-common wheel."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise BonsaiError(f"{path}: missing; reinstall mistral-common (it ships Bonsai's tokenizer model)")
    return path


@dataclass(frozen=True)
class Settings:
    """What a pipeline of the supported subset does, as the manifest records it (docs/TOKENIZER.md)."""

    prefix: str  # "first" | "always" | "never" (Metaspace's prepend_scheme) | "legacy" (Prepend normalizer)
    bos: tuple[int, ...]  # ids the post-processor puts before the text
    eos: tuple[int, ...]  # and after it
    kind: str = "sentencepiece"  # | "byte_level"
    split: str | None = None  # byte_level: the pre-tokenizer regex by name, a key of SPLIT_PATTERNS
    nfc: bool = False  # byte_level: the NFC normalizer runs before the split
    ignore_merges: bool = False  # byte_level: a word that is a vocabulary piece is taken whole (Llama-3)

    def to_dict(self) -> dict:
        out = {"file": TOKENIZER_JSON, "prefix": self.prefix, "bos": list(self.bos), "eos": list(self.eos)}
        if self.kind != "sentencepiece":  # the SentencePiece entry keeps the keys artifacts always had
            out.update(kind=self.kind, split=self.split, normalizer="NFC" if self.nfc else None,
                       ignore_merges=self.ignore_merges)
        return out


class Tokenizer:
    """The folder's pipeline: an artifact's canonical tokenizer.json, or transformers' reading of a checkpoint."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.pipeline = (_read_pipeline(folder / TOKENIZER_JSON) if _is_artifact(folder)
                         else reference_pipeline(folder))

    @property
    def vocab_size(self) -> int:
        return self.pipeline.get_vocab_size()

    def encode(self, text: str, specials: bool = True) -> list[int]:
        """Ids of `text`; `specials` adds the post-processor's BOS / EOS, as transformers' `tokenizer(text)` does."""
        return self.pipeline.encode(text, add_special_tokens=specials).ids

    def decode(self, ids: list[int]) -> str:
        return self.pipeline.decode(ids, skip_special_tokens=True)


def _is_artifact(folder: Path) -> bool:
    from .artifact import MANIFEST

    return (folder / MANIFEST).is_file()


def _read_pipeline(path: Path):
    from tokenizers import Tokenizer as Pipeline

    if not path.is_file():
        raise BonsaiError(f"{path}: missing; re-export the artifact (it carries its tokenizer)")
    try:
        return Pipeline.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types on a corrupt file
        raise BonsaiError(f"{path}: cannot be read ({_first_line(exc)}); re-export the artifact") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _transformers_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on legacy behaviour are about the settings we read back anyway
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a corrupt file surfaces as whatever the parser raises
        if not any((folder / f).is_file() for f in (TOKENIZER_JSON, SPM_MODEL)):
            raise BonsaiError(f"{folder}: no {TOKENIZER_JSON} or {SPM_MODEL}; copy the model's tokenizer files "
                              f"in") from None
        raise BonsaiError(f"{folder}: transformers cannot read its tokenizer ({_first_line(exc)}); copy in the "
                          f"model's tokenizer files again") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def reference_pipeline(folder: Path):
    """transformers' tokenizer of a checkpoint folder, as the `tokenizers` pipeline it runs."""
    return _reference(Path(folder))[1]


def _reference(folder: Path):
    """(transformers' tokenizer, its pipeline), read once per folder state: loading converts the vocabulary."""
    stamp = tuple((f, p.stat().st_size, p.stat().st_mtime_ns) for f in (TOKENIZER_JSON, SPM_MODEL, TOKENIZER_CONFIG)
                  if (p := folder / f).is_file())
    key = (str(folder.resolve()), stamp)
    if key not in _REFERENCES:
        _REFERENCES.clear()
        _REFERENCES[key] = _read_reference(folder)
    return _REFERENCES[key]


_REFERENCES: dict = {}


def _read_reference(folder: Path):
    from tokenizers import Tokenizer as Pipeline

    ref = _transformers_tokenizer(folder)
    backend = getattr(ref, "backend_tokenizer", None)
    if backend is None:
        raise BonsaiError(f"{folder}: transformers reads its tokenizer as {type(ref).__name__}, which has no "
                          f"tokenizers pipeline; give the folder a tokenizer.json")
    pipeline = Pipeline.from_str(backend.to_str())
    for text in PROBE_TEXTS:  # transformers adds nothing of its own on top of the pipeline, for this lineage
        if ref(text)["input_ids"] != pipeline.encode(text).ids:
            raise BonsaiError(f"{folder}: transformers' {type(ref).__name__} encodes {text!r} other than its own "
                              f"pipeline does; this tokenizer is not supported")
    return ref, pipeline


def settings(pipeline, byte_level: bool = False) -> Settings:
    """The Settings of a pipeline, or one error naming the part outside the subset every runner implements.

    `byte_level` also accepts the byte-level BPE layout (Qwen2, Llama-3): the runners implement it, a caller that
    only handles SentencePiece vocabularies (the GGUF writer's llama vocabulary) leaves it False."""
    spec = json.loads(pipeline.to_str())
    for part in ("truncation", "padding"):
        if spec.get(part) is not None:
            _unsupported(part, "none")
    _check_added_tokens(spec)
    if byte_level and _looks_byte_level(spec):
        return _byte_level_settings(spec)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not model.get("fuse_unk") \
            or model.get("ignore_merges") or model.get("dropout") is not None \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        _unsupported("model", "a SentencePiece-style BPE (byte_fallback, fuse_unk, merges, no dropout, no affixes)"
                     + (" or a byte-level BPE" if byte_level else ""))
    prefix = _prefix(spec.get("normalizer"), spec.get("pre_tokenizer"))
    _check_decoder(spec.get("decoder"))
    bos, eos = _template(spec.get("post_processor"), spec)
    return Settings(prefix, bos, eos)


def _check_added_tokens(spec: dict) -> None:
    vocab = (spec.get("model") or {}).get("vocab") or {}
    for tok in spec.get("added_tokens") or []:
        if tok.get("normalized") or tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            _unsupported(f"added token {tok.get('content')!r}", "normalized, lstrip, rstrip and single_word false")
        if vocab.get(tok.get("content"), tok.get("id")) != tok.get("id"):  # tokenizers would use the vocab's id
            _unsupported(f"added token {tok.get('content')!r} id {tok.get('id')}", "the vocabulary's id")


def _unsupported(part: str, expected: str):
    raise BonsaiError(f"tokenizer.json: unsupported {part}; bonsai-export's runners implement {expected} "
                      f"(docs/TOKENIZER.md)")


LEGACY_NORMALIZER = [{"type": "Prepend", "prepend": MARKER},
                     {"type": "Replace", "pattern": {"String": " "}, "content": MARKER}]


def _prefix(normalizer, pre_tokenizer) -> str:
    if normalizer is not None:
        if pre_tokenizer is not None or normalizer.get("type") != "Sequence" \
                or normalizer.get("normalizers") != LEGACY_NORMALIZER:
            _unsupported("normalizer", "none, or Prepend('▁') + Replace(' ', '▁') without a pre-tokenizer")
        return "legacy"
    if (pre_tokenizer or {}).get("type") != "Metaspace" or pre_tokenizer.get("replacement") != MARKER \
            or pre_tokenizer.get("split") or pre_tokenizer.get("prepend_scheme") not in ("first", "always", "never"):
        _unsupported("pre_tokenizer", "Metaspace('▁', prepend_scheme first|always|never, split false)")
    return pre_tokenizer["prepend_scheme"]


DECODER = [{"type": "Replace", "pattern": {"String": MARKER}, "content": " "}, {"type": "ByteFallback"},
           {"type": "Fuse"}]
STRIP = {"type": "Strip", "content": " ", "start": 1, "stop": 0}


def _check_decoder(decoder) -> None:
    steps = (decoder or {}).get("decoders")
    if (decoder or {}).get("type") != "Sequence" or not isinstance(steps, list) or steps[:3] != DECODER \
            or steps[3:] not in ([], [STRIP]):
        _unsupported("decoder", "Replace('▁', ' '), ByteFallback, Fuse[, Strip(' ', 1, 0)]")


def chat_template_source(folder: Path, config: dict) -> str | None:
    """The folder's chat template as transformers picks it: chat_template.jinja wins over tokenizer_config.json's
    `chat_template` (`config`), a string or the older list of named templates (the "default" one)."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    found = config.get("chat_template")
    if isinstance(found, list):
        found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None)
    return found if isinstance(found, str) and found.strip() else None


def _template(post, spec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if post is None:
        return (), ()
    if post.get("type") != "TemplateProcessing":
        _unsupported("post_processor", "TemplateProcessing")
    ids = {name: entry["ids"] for name, entry in (post.get("special_tokens") or {}).items()}
    before, after, seen = [], [], False
    for item in post.get("single") or []:
        if "Sequence" in item:
            seen = True
        elif "SpecialToken" in item and not seen:
            before += ids[item["SpecialToken"]["id"]]
        elif "SpecialToken" in item:
            after += ids[item["SpecialToken"]["id"]]
    if not seen:
        _unsupported("post_processor", "a single template holding $A")
    return tuple(before), tuple(after)


# ---- byte-level BPE (Qwen2/Qwen3, Llama-3) ----

def _looks_byte_level(spec: dict) -> bool:
    """The decoder names the family, as in the C++ and Kotlin runners: ByteLevel for byte-level BPE."""
    return (spec.get("decoder") or {}).get("type") == "ByteLevel"


def _byte_level_settings(spec: dict) -> Settings:
    model = spec.get("model") or {}
    vocab = model.get("vocab") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("dropout") is not None \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or (model.get("unk_token") is not None and model.get("unk_token") not in vocab):
        _unsupported("model", "a byte-level BPE (no byte_fallback, dropout or affixes; unk_token null or a piece)")
    missing = [b for b, c in byte_level_alphabet().items() if c not in vocab]
    if missing:
        _unsupported(f"model.vocab (no piece for byte 0x{missing[0]:02X})", "a vocabulary holding all 256 bytes")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer != {"type": "NFC"}:
        _unsupported("normalizer", "none or NFC with a byte-level BPE")
    split = _split_name(spec.get("pre_tokenizer"))
    bos, eos = _template(_without_byte_level(spec.get("post_processor")), spec)
    return Settings("never", bos, eos, kind="byte_level", split=split, nfc=normalizer is not None,
                    ignore_merges=bool(model.get("ignore_merges")))


def _split_name(pre_tokenizer) -> str:
    steps = (pre_tokenizer or {}).get("pretokenizers") or []
    split, byte_level = steps if len(steps) == 2 else ({}, {})  # tokenizers wrote it: each step is an object
    name = next((k for k, v in SPLIT_PATTERNS.items() if (split.get("pattern") or {}).get("Regex") == v), None)
    if (pre_tokenizer or {}).get("type") != "Sequence" or split.get("type") != "Split" or name is None \
            or split.get("behavior") != "Isolated" or split.get("invert") \
            or byte_level.get("type") != "ByteLevel" or byte_level.get("add_prefix_space") \
            or byte_level.get("use_regex"):
        _unsupported("pre_tokenizer", "Sequence[Split(the Qwen2 or Llama-3 regex, Isolated), ByteLevel("
                     "add_prefix_space false, use_regex false)] with a byte-level BPE")
    return name


def _without_byte_level(post):
    """The post-processor less its ByteLevel steps, which only move offsets (never ids)."""
    if post is None or post.get("type") == "ByteLevel":
        return None
    if post.get("type") == "Sequence":
        rest = [p for p in post.get("processors") or [] if p.get("type") != "ByteLevel"]
        if len(rest) > 1:
            _unsupported("post_processor", "ByteLevel steps and at most one TemplateProcessing")
        return rest[0] if rest else None
    return post


def write_canonical(source: Path, out: Path) -> Settings:
    """Write the reference pipeline of checkpoint folder `source` into artifact folder `out`: tokenizer.json,
    a tokenizer_config.json that reads back the same, and the SentencePiece model as shipped."""
    source, out = Path(source), Path(out)
    ref, pipeline = _reference(source)
    found = settings(pipeline, byte_level=True)
    _note_disagreement(source, pipeline)
    pipeline.save(str(out / TOKENIZER_JSON))
    (out / TOKENIZER_CONFIG).write_text(json.dumps(_config(source, ref, found), indent=2, ensure_ascii=False) + "\n")
    if (source / SPM_MODEL).is_file():
        shutil.copyfile(source / SPM_MODEL, out / SPM_MODEL)
    _check_written(out, pipeline)
    return found


def _config(source: Path, ref, found: Settings) -> dict:
    """tokenizer_config.json for the artifact: transformers rebuilds a Llama pipeline from `legacy` and
    `add_prefix_space`, onnxruntime-genai and ExecuTorch read `add_bos_token`; all set to what the pipeline does."""
    try:
        cfg = json.loads((source / TOKENIZER_CONFIG).read_text())
        cfg = cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        cfg = {}
    for key in ("auto_map", "tokenizer_file", "vocab_file", "added_tokens_decoder"):  # no remote code, no paths
        cfg.pop(key, None)
    jinja = source / CHAT_TEMPLATE_FILE  # transformers prefers it to the config's template: the artifact keeps one
    if jinja.is_file():
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    cfg.update(tokenizer_class=type(ref).__name__, add_bos_token=bool(found.bos), add_eos_token=bool(found.eos),
               add_prefix_space=found.prefix != "never")
    if found.kind == "sentencepiece":  # `legacy` is a SentencePiece setting only
        cfg["legacy"] = found.prefix in ("always", "legacy")
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(ref, name, None)
        if isinstance(value, str):
            cfg[name] = value
    return dict(sorted(cfg.items()))


def _note_disagreement(source: Path, pipeline) -> None:
    """A folder with both files whose tokenizer.model alone transformers reads otherwise: say so, once."""
    if not ((source / SPM_MODEL).is_file() and (source / TOKENIZER_JSON).is_file()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in (SPM_MODEL, TOKENIZER_CONFIG, "special_tokens_map.json", "config.json"):
            if (source / name).is_file():
                shutil.copyfile(source / name, Path(tmp) / name)
        try:
            alone = _transformers_tokenizer(Path(tmp))
        except BonsaiError:
            return
        for text in PROBE_TEXTS:
            a, b = alone(text)["input_ids"], pipeline.encode(text).ids
            if a != b:
                log.warning("tokenizer: %s and %s disagree on %r (%s vs %s); using %s, as transformers does",
                            TOKENIZER_JSON, SPM_MODEL, text, b, a, TOKENIZER_JSON)
                return


def _check_written(out: Path, pipeline) -> None:
    """The artifact's files read back by raw tokenizers and by transformers give the reference ids."""
    written = _read_pipeline(out / TOKENIZER_JSON)
    again = _transformers_tokenizer(out)
    for text in PROBE_TEXTS:
        want = pipeline.encode(text).ids
        if written.encode(text).ids != want:
            raise BonsaiError(f"tokenizer: the written {TOKENIZER_JSON} encodes {text!r} differently; please report")
        if again(text)["input_ids"] != want:
            log.warning("tokenizer: transformers reads the artifact's tokenizer files otherwise than the "
                        "checkpoint's on %r; the runners use %s", text, TOKENIZER_JSON)
            return


class StreamDecoder:

    """Turns a growing list of ids into text deltas, holding back incomplete UTF-8 byte-fallback sequences.

    `context` (the prompt's last ids) is decoded in front of the new ids and cut off again: SentencePiece drops the
    space that starts a decoded text, which would glue the first generated word to the prompt."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()):
        self.tokenizer, self.ids = tokenizer, list(context)
        self.text = tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is still arriving
            return ""
        delta, self.text = text[len(self.text):], text
        return delta
