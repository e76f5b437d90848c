"""The artifact contract: what an exported folder is (ExportConfig, ModelShape, ArtifactEntry, Manifest) and the
manifest's reader and writer; what the .pte and the .onnx carry inside is metadata.py. Everything else reads an
artifact through these types; the C++ runner's and the Kotlin app's key tables are generated from both
(artifact_sources.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, formats
from .errors import BonsaiError
from .paths import inside

# Raised whenever the manifest or the embedded metadata change; a reader refuses every other version.
FORMAT_VERSION = 2
MANIFEST = "bonsai_manifest.json"
PTE_FILE = "model.pte"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = f"{ONNX_FILE}.data"  # its external weights, past export/onnx.py's EXTERNAL_DATA_LIMIT
GGUF_FILE = "model.gguf"  # llama.cpp's single-file format (export/gguf.py)
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's config, beside model.onnx
ORT_OPS_LIB = "libbonsai_ort_ops.so"  # our ONNX Runtime custom ops, copied into custom-variant folders

# "all" is pte + onnx: a gguf needs every ternary K to be a multiple of 256 (the tiny default's 192 is not), so it
# is asked for by name (export/gguf.py).
ARTIFACT_FORMATS = ("pte", "onnx", "all", "gguf")
ARTIFACT_TYPES = ("pte", "onnx", "gguf")  # ArtifactEntry.type: one file format each
RUNNABLE = ("pte", "onnx")  # the types bonsai-export's runners open
EMBEDDINGS = ("bf16", "int8")
HEADS = ("bf16", "int8", "int4")
HEAD_ACT_QUANTS = ("none", "int8")  # the dense head's activations: float, or int8 per group of DENSE_GROUP
TERNARY_OPS = ("custom", "stock")  # ONNX: bonsai::TernaryMatMul (our library) or com.microsoft MatMulNBits bits=2
KV_CACHES = ("f32", "f16")  # the KV cache's element type (model.CACHE_DTYPES)
# The packed ternary formats (docs/FORMAT.md): t2, one f32 scale per output channel (Bonsai); t2g, one fp16 scale
# per block of 128 weights (Ternary-Bonsai). ModelShape records which one an artifact holds.
TERNARY_FORMATS = ("t2", "t2g")
# GGUF: llama.cpp's types (option value -> ggml type in export/gguf.py)
GGUF_TERNARY = ("tq2_0", "tq1_0")
GGUF_DENSE = ("f16", "bf16", "q8_0", "q4_0", "tq2_0")  # tq2_0: a group-ternary table only (Ternary-Bonsai)
GGUF_FALLBACKS = ("none", "f16", "q8_0")


@dataclass(frozen=True)
class ExportConfig:
    """Every option of `bonsai-export export`; the CLI's defaults come from here. Threads are not here: they
    belong to the machine that runs the artifact, and the runners take them."""

    format: str = "pte"
    max_seq_len: int | None = None  # the context (KV cache positions); None: the model's limit (Bonsai: 2048)
    act_quant: str = "int8"  # int8: per-token absmax int8 activations; none: float (exact Bonsai)
    # The checkpoint's own bf16 tables (lossless): --act-quant none is then exact Bonsai, and with int8 activations
    # the int8 head cost top-1 agreement under the 98% gate on a weaker trained-small (README, "Heads and
    # embedding").
    embedding: str = "bf16"
    head: str = "bf16"
    # int8: an int8 / int4 head multiplies int8 activations (one scale per group of 32, as llama.cpp's Q8_0 dot
    # products and MatMulNBits' accuracy_level 4 do) in exact integer sums; none: float activations, the
    # runtimes agreeing with the eager model to float rounding.
    head_act_quant: str = "none"
    ternary_op: str = "custom"  # ONNX only: custom = bonsai::TernaryMatMul; stock = MatMulNBits (unmodified ORT)
    # .pte and custom-op .onnx: f16 halves the cache's memory and the bytes each decode step reads from it (at 4096
    # positions of Ternary-Bonsai-1.7B, 470 MB instead of 940), rounding each cached K and V value to fp16 as
    # llama.cpp's default cache does.
    kv_cache: str = "f32"
    # GGUF only. TQ2_0 is what llama.cpp decodes fastest (TQ1_0: 1.69 bits, slower); F16 head and embedding are
    # the checkpoint's bf16 values exactly (down to 2**-14) in the half type every llama.cpp backend runs.
    gguf_ternary: str = "tq2_0"
    gguf_head: str = "f16"
    gguf_embedding: str = "f16"
    # A ternary tensor whose K is not a multiple of 256 is refused unless a fallback type is named.
    gguf_fallback: str = "none"
    # Ternary-Bonsai's t2g (a scale per 128 weights) in TQ2_0 / TQ1_0 (a scale per 256): refused where a block's
    # two groups differ, unless regrouped (lossy, measured; for speed comparisons).
    gguf_regroup: bool = False
    # A non-SiLU MLP (BitNet 2B4T's relu^2), which llama.cpp's graphs do not compute: refused unless asked for
    # anyway (runs at the model's speed, computes another function; recorded as not faithful).
    gguf_speed_only: bool = False

    def __post_init__(self):
        for name, allowed in (("format", ARTIFACT_FORMATS), ("act_quant", tuple(formats.ACT_MODES)),
                              ("embedding", EMBEDDINGS), ("head", HEADS), ("head_act_quant", HEAD_ACT_QUANTS),
                              ("ternary_op", TERNARY_OPS), ("kv_cache", KV_CACHES), ("gguf_ternary", GGUF_TERNARY),
                              ("gguf_head", GGUF_DENSE), ("gguf_embedding", GGUF_DENSE),
                              ("gguf_fallback", GGUF_FALLBACKS), ("gguf_regroup", (False, True)),
                              ("gguf_speed_only", (False, True))):
            if getattr(self, name) not in allowed:
                raise BonsaiError(f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.head_act_quant == "int8" and self.head == "bf16":
            raise BonsaiError("--head-act-quant int8: needs --head int8 or int4 (a bf16 head has no integer codes "
                              "to multiply int8 activations with)")
        if self.kv_cache != "f32" and (self.format == "gguf" or self.ternary_op == "stock"):
            raise BonsaiError(f"--kv-cache {self.kv_cache}: the .pte and the custom-op .onnx have it; "
                              f"{'a GGUF' if self.format == 'gguf' else 'the stock .onnx (--ternary-op stock)'} "
                              f"keeps its runtime's own cache; leave --kv-cache at f32 for it")
        if self.max_seq_len is not None and (not _is_int(self.max_seq_len) or self.max_seq_len < 2):
            raise BonsaiError(f"--max-seq-len: expected >= 2, got {self.max_seq_len}")

    @property
    def exact(self) -> bool:
        """Float activations, the checkpoint's bf16 embedding and head and a float32 KV cache: the float
        reference's math up to rounding (a stock MatMulNBits runtime aside, which validate judges from the
        runner)."""
        return (self.act_quant, self.embedding, self.head, self.kv_cache) == ("none", "bf16", "bf16", "f32")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The canonical text embedded in the .pte and the .onnx (sorted keys: the same options, the same bytes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data, where: str) -> "ExportConfig":
        if not isinstance(data, dict) or set(data) - {f.name for f in dataclasses.fields(cls)}:
            unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)}) if isinstance(data, dict) else []
            raise BonsaiError(f"{where}: 'options' is not an object of export options"
                              + (f" (unknown {', '.join(unknown)})" if unknown else "") + "; re-export the folder")
        try:
            return cls(**data)
        except BonsaiError as exc:
            raise BonsaiError(f"{where}: options: {exc}; re-export the folder") from None


@dataclass(frozen=True)
class ModelShape:
    """The manifest's `model`: what the runners allocate and check (every field a runner reads is checked against
    the program itself before use), and the figures info and bench report."""

    n_layers: int
    dim: int
    vocab_size: int
    max_seq_len: int  # the context: KV cache positions (a .pte's tokens per call are PteMetadata.call_tokens)
    bos_id: int
    eos_ids: tuple[int, ...]
    n_kv_heads: int
    head_dim: int
    ternary_weights: int = 0
    ternary_bytes: int = 0
    bits_per_ternary_weight: float = 0.0
    head_bytes: int = 0
    note: str | None = None  # what an artifact not made by export is (bench's baselines)
    ternary_format: str = "t2"  # the decoder layers' packed format, one of TERNARY_FORMATS
    # How the embedding and the head are stored: a dense format (EMBEDDINGS, HEADS) or "t2g" (a group-ternary
    # checkpoint's own tables); None in a manifest written before these fields (then: the options' formats).
    embedding_format: str | None = None
    head_format: str | None = None

    @property
    def bytes_per_token(self) -> int:
        """Weights read per decoded token: every ternary matrix and the head (KV cache reads excluded)."""
        return self.ternary_bytes + self.head_bytes


# The fields a runner reads: non-negative integers (checked before any is used).
_SHAPE_INTS = ("n_layers", "dim", "vocab_size", "max_seq_len", "bos_id", "n_kv_heads", "head_dim")


@dataclass(frozen=True)
class ArtifactEntry:
    """One runnable (or llama.cpp) file of the folder: a manifest `artifacts` entry."""

    type: str  # pte, onnx or gguf
    file: str
    op_library: str | None = None  # pte: the package's ExecuTorch op library; onnx (custom): the copy in the folder
    ternary_op: str | None = None  # onnx: custom or stock
    files: tuple[str, ...] = ()  # onnx: the graph and its external data
    genai_config: str | None = None  # onnx: onnxruntime-genai's config beside it
    bits_per_ternary_weight: float | None = None  # gguf: its blocks' bits, not our packing's
    details: dict = field(default_factory=dict)  # gguf: tensor types, fallbacks, scale rounding (reported only)

    def to_dict(self) -> dict:
        fixed = {**dataclasses.asdict(self), "files": list(self.files) or None}
        del fixed["details"]
        return {**{k: v for k, v in fixed.items() if v is not None}, **self.details}


@dataclass(frozen=True)
class Source:
    checkpoint: str  # a local folder as an absolute path, a hub id as given
    format: str | None = None  # the checkpoint's weight format (checkpoint.detect_format)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """bonsai_manifest.json: the one description of an artifact folder, written by export and read back only
    through read_manifest. `tokenizer` is tokenizer.Settings.to_dict() (the pipeline's settings)."""

    artifacts: tuple[ArtifactEntry, ...]
    options: ExportConfig
    model: ModelShape
    source: Source
    tokenizer: dict
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    bonsai_export_version: str = __version__

    def artifact(self, kind: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.type == kind), None)

    @property
    def kinds(self) -> list[str]:
        return [a.type for a in self.artifacts]

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "bonsai_export_version": self.bonsai_export_version,
                "artifacts": [a.to_dict() for a in self.artifacts], "options": self.options.to_dict(),
                "model": {k: (list(v) if k == "eos_ids" else v) for k, v in dataclasses.asdict(self.model).items()
                          if v is not None},
                "source": {k: v for k, v in dataclasses.asdict(self.source).items() if v is not None},
                "tokenizer": self.tokenizer,
                "files": {name: dataclasses.asdict(e) for name, e in self.files.items()}}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, body: Manifest | dict) -> Manifest:
    """Hash every file of the folder into the manifest (written last, so it covers all files), then seal the
    manifest itself: an edit to it (an id, a size) is seen by verify and refused by the runners. `body` may be
    the dict of a manifest read as JSON (a folder described again after its files changed)."""
    paths = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != MANIFEST)
    files = {p.name: FileEntry(p.stat().st_size, sha256(p)) for p in paths}
    if isinstance(body, dict):
        listed = {name: dataclasses.asdict(entry) for name, entry in files.items()}
        body = parse_manifest(Path(folder), {**body, "files": listed, "format_version": FORMAT_VERSION})
    manifest = dataclasses.replace(body, format_version=FORMAT_VERSION, bonsai_export_version=__version__,
                                   files=files)
    data = manifest.to_dict()
    data[SEAL] = seal_of(data)
    (Path(folder) / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return manifest


SEAL = "manifest_sha256"  # sha256 of the manifest's canonical JSON without this key


def seal_of(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(folder: Path, sealed: bool = True) -> Manifest:
    """The manifest, its structure checked (every name it gives is a file inside the folder); `sealed`: also
    refuse a manifest edited after export (verify reports that as a difference instead)."""
    raw = _read_json(Path(folder))
    manifest = parse_manifest(Path(folder), raw)
    if sealed and manifest_edited(raw):
        raise BonsaiError(f"{Path(folder) / MANIFEST}: edited after export (its {SEAL} does not match); re-export "
                          f"the folder, or run `bonsai-export verify {folder}`")
    return manifest


def _read_json(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise BonsaiError(f"{folder}: no {MANIFEST}; not a bonsai-export artifact folder (run `bonsai-export "
                          f"export` first, or pass a checkpoint)")
    inside(folder, MANIFEST, MANIFEST)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BonsaiError(f"{path}: not valid JSON ({str(exc)[:200]}); re-export the folder") from None
    if not isinstance(manifest, dict):
        raise BonsaiError(f"{path}: expected a JSON object, got {type(manifest).__name__}; re-export the folder")
    return manifest


def manifest_edited(manifest: dict) -> bool:
    return manifest.get(SEAL) != seal_of(manifest)


def _check_version(path: Path, manifest: dict) -> None:
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BonsaiError(f"{path}: written by a newer bonsai-export (format {version}, made by "
                          f"{manifest.get('bonsai_export_version', '?')}); this {__version__} reads format "
                          f"{FORMAT_VERSION}: upgrade bonsai-export, or re-export with this one")
    if version != FORMAT_VERSION:
        raise BonsaiError(f"{path}: format_version {version!r}, this bonsai-export reads {FORMAT_VERSION}; "
                          f"re-export with this version")


def parse_manifest(folder: Path, raw: dict) -> Manifest:
    """A manifest's JSON as a Manifest, every part checked: a wrong type fails here, on one line naming it, not
    later inside a runner."""
    _check_version(folder / MANIFEST, raw)

    def bad(what: str):
        return BonsaiError(f"{folder / MANIFEST}: {what}; re-export the folder")

    files = _files(folder, raw.get("files"), bad)
    artifacts = tuple(_artifact(a, files, bad) for a in _artifact_list(raw.get("artifacts"), bad))
    source = raw.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("checkpoint"), str):
        raise bad("'source' is not an object naming the checkpoint")
    tokenizer = raw.get("tokenizer")
    if not isinstance(tokenizer, dict):
        raise bad("'tokenizer' is not an object")
    return Manifest(artifacts=artifacts, options=ExportConfig.from_dict(raw.get("options"), str(folder / MANIFEST)),
                    model=_shape(raw.get("model"), bad), source=Source(source["checkpoint"], source.get("format")),
                    tokenizer=tokenizer, files=files, format_version=raw["format_version"],
                    bonsai_export_version=str(raw.get("bonsai_export_version", "?")))


def _files(folder: Path, files, bad) -> dict[str, FileEntry]:
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and _is_int(e.get("bytes")) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise bad("'files' is not an object of file name -> {bytes, sha256}")
    for name in files:
        inside(folder, name, f"{MANIFEST} files")
    return {name: FileEntry(e["bytes"], e["sha256"]) for name, e in files.items()}


def _artifact_list(arts, bad) -> list[dict]:
    if not isinstance(arts, list) or not all(isinstance(a, dict) and isinstance(a.get("type"), str) and
                                             isinstance(a.get("file"), str) for a in arts):
        raise bad("'artifacts' is not a list of {type, file, ...} objects")
    return arts


def _artifact(art: dict, files: dict, bad) -> ArtifactEntry:
    # a .pte's op_library names the package's library; an .onnx folder carries its own
    for key in ("file", "op_library") if art["type"] == "onnx" else ("file",):
        if art.get(key) is not None and art.get(key) not in files:
            raise bad(f"artifact {key} {str(art.get(key))[:80]!r} is not one of the files it lists")
    known = {f.name for f in dataclasses.fields(ArtifactEntry)} - {"details"}
    listed = art.get("files") or []
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        raise bad(f"artifact {art['type']}: 'files' is not a list of names")
    return ArtifactEntry(**{k: v for k, v in art.items() if k in known and k != "files"}, files=tuple(listed),
                         details={k: v for k, v in art.items() if k not in known})


def _shape(model, bad) -> ModelShape:
    if not isinstance(model, dict) or not all(_is_int(model.get(k)) and model[k] >= 0 for k in _SHAPE_INTS):
        raise bad(f"'model' lacks one of {', '.join(_SHAPE_INTS)} as a non-negative integer")
    eos = model.get("eos_ids")
    if not isinstance(eos, list) or not all(_is_int(e) for e in eos):
        raise bad("'model.eos_ids' is not a list of integers")
    known = {f.name for f in dataclasses.fields(ModelShape)}
    if set(model) - known:
        raise bad(f"'model' has unknown fields {', '.join(sorted(set(model) - known))}")
    for key, allowed in (("ternary_format", TERNARY_FORMATS), ("embedding_format", (None, *EMBEDDINGS, "t2g")),
                         ("head_format", (None, *HEADS, "t2g"))):
        if model.get(key, allowed[0]) not in allowed:
            raise bad(f"'model.{key}' is {str(model[key])[:40]!r}, expected one of {', '.join(map(str, allowed))}")
    return ModelShape(**{**model, "eos_ids": tuple(eos)})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _file_problems(folder: Path, manifest: Manifest, hashes: bool):
    """Each listed file that is missing, has another size or (hashes=True) another sha256 than the manifest says."""
    for name, entry in manifest.files.items():
        path = Path(folder) / name
        if not path.is_file():
            yield f"{name}: missing"
        elif path.stat().st_size != entry.bytes:
            yield f"{name}: {path.stat().st_size} bytes, expected {entry.bytes} (truncated or replaced)"
        elif hashes and sha256(path) != entry.sha256:
            yield f"{name}: sha256 differs from the manifest (modified or corrupt)"


def check_files(folder: Path, manifest: Manifest) -> None:
    """verify()'s file checks, run before a runtime opens the folder: a runtime given a damaged file (one byte
    flipped in a .pte) can abort the whole process, so a damaged file gets this message instead."""
    problem = next(_file_problems(folder, manifest, hashes=True), None)
    if problem is not None:
        raise BonsaiError(f"{Path(folder) / problem}; re-export the folder, or run `bonsai-export verify {folder}`")


def verify(folder: Path) -> list[str]:
    """Every problem of an artifact folder against its manifest (format version, the manifest's own seal, each
    file's size and sha256, files the manifest does not list); empty when the folder is exactly what export
    wrote."""
    raw = _read_json(Path(folder))
    manifest = parse_manifest(Path(folder), raw)
    problems = [f"{MANIFEST}: edited after export ({SEAL} does not match)"] if manifest_edited(raw) else []
    problems += list(_file_problems(folder, manifest, hashes=True))
    listed = set(manifest.files) | {MANIFEST}
    problems += [f"{p.name}: not in the manifest" for p in sorted(Path(folder).iterdir()) if p.name not in listed]
    return problems


def is_artifact(path) -> bool:
    return (Path(path) / MANIFEST).is_file()
