"""What an exported folder holds and how it describes itself: ExportConfig, metadata keys, the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import __version__, formats
from .errors import BonsaiError
from .paths import inside

FORMAT_VERSION = 1
MANIFEST = "bonsai_manifest.json"
PTE_FILE = "model.pte"
ONNX_FILE = "model.onnx"
GGUF_FILE = "model.gguf"  # llama.cpp's single-file format (export/gguf.py)
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's config, beside model.onnx
ORT_OPS_LIB = "libbonsai_ort_ops.so"  # our ONNX Runtime custom ops, copied into custom-variant folders

# ExecuTorch LLM runner metadata: constant methods baked into the .pte (names as ExecuTorch's runner reads them).
META_MAX_SEQ_LEN = "get_max_seq_len"
META_MAX_CONTEXT_LEN = "get_max_context_len"
META_VOCAB_SIZE = "get_vocab_size"
META_N_LAYERS = "get_n_layers"
META_USE_KV_CACHE = "use_kv_cache"
META_DYNAMIC_SHAPE = "enable_dynamic_shape"
META_BOS_ID = "get_bos_id"
META_EOS_IDS = "get_eos_ids"

# "all" is pte + onnx: a gguf needs every ternary K to be a multiple of 256 (the tiny default's 192 is not), so it
# is asked for by name (export/gguf.py).
ARTIFACT_FORMATS = ("pte", "onnx", "all", "gguf")
EMBEDDINGS = ("bf16", "int8")
HEADS = ("bf16", "int8", "int4")
TERNARY_OPS = ("custom", "stock")  # ONNX: bonsai::TernaryMatMul (our library) or com.microsoft MatMulNBits bits=2
# GGUF: llama.cpp's types (option value -> ggml type in export/gguf.py)
GGUF_TERNARY = ("tq2_0", "tq1_0")
GGUF_DENSE = ("f16", "bf16", "q8_0", "q4_0")
GGUF_FALLBACKS = ("none", "f16", "q8_0")


@dataclass(frozen=True)
class ExportConfig:
    """Every option of `bonsai-export export`; the CLI's defaults come from here."""

    format: str = "pte"
    max_seq_len: int | None = None  # None: the model's limit (Bonsai: 2048)
    act_quant: str = "int8"  # int8: per-token absmax int8 activations; none: float (exact Bonsai)
    # The checkpoint's own bf16 tables (lossless): --act-quant none is then exact Bonsai, and with int8 activations
    # the int8 head cost top-1 agreement under the 98% gate on trained-small (README, "Heads and embedding").
    embedding: str = "bf16"
    head: str = "bf16"
    ternary_op: str = "custom"  # ONNX only: custom = bonsai::TernaryMatMul; stock = MatMulNBits (unmodified ORT)
    threads: int = 0  # runner default; 0: the runtime's choice
    # GGUF only. TQ2_0 is what llama.cpp decodes fastest (TQ1_0: 1.69 bits, slower); F16 head and embedding are
    # the checkpoint's bf16 values exactly (down to 2**-14) in the half type every llama.cpp backend runs.
    gguf_ternary: str = "tq2_0"
    gguf_head: str = "f16"
    gguf_embedding: str = "f16"
    # A ternary tensor whose K is not a multiple of 256 is refused unless a fallback type is named.
    gguf_fallback: str = "none"

    def __post_init__(self):
        for name, allowed in (("format", ARTIFACT_FORMATS), ("act_quant", tuple(formats.ACT_MODES)),
                              ("embedding", EMBEDDINGS), ("head", HEADS),
                              ("ternary_op", TERNARY_OPS), ("gguf_ternary", GGUF_TERNARY),
                              ("gguf_head", GGUF_DENSE), ("gguf_embedding", GGUF_DENSE),
                              ("gguf_fallback", GGUF_FALLBACKS)):
            if getattr(self, name) not in allowed:
                raise BonsaiError(f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise BonsaiError(f"--max-seq-len: expected >= 2, got {self.max_seq_len}")
        if self.threads < 0:
            raise BonsaiError(f"--threads: expected >= 0, got {self.threads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, body: dict) -> dict:
    """Hash every file of the folder into the manifest (written last, so it covers all files), then seal the
    manifest itself: an edit to it (an id, a size) is seen by verify and refused by the runners."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, "bonsai_export_version": __version__, **body,
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}}
    manifest.pop(SEAL, None)  # a body copied from an older manifest carries the old seal
    manifest[SEAL] = seal_of(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


SEAL = "manifest_sha256"  # sha256 of the manifest's canonical JSON without this key


def seal_of(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(folder: Path, sealed: bool = True) -> dict:
    """The manifest, its structure checked (every name it gives is a file inside the folder); `sealed`: also
    refuse a manifest edited after export (verify reports that as a difference instead)."""
    path = Path(folder) / MANIFEST
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
    _check_version(path, manifest)
    _check_structure(Path(folder), manifest)
    if sealed and manifest_edited(manifest):
        raise BonsaiError(f"{path}: edited after export (its {SEAL} does not match); re-export the folder, or run "
                          f"`bonsai-export verify {folder}`")
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


# The manifest fields a runner reads, and their types (checked before any is used).
_MODEL_FIELDS = ("n_layers", "dim", "vocab_size", "max_seq_len", "bos_id", "n_kv_heads", "head_dim")


def _check_structure(folder: Path, manifest: dict) -> None:
    def bad(what: str):
        return BonsaiError(f"{folder / MANIFEST}: {what}; re-export the folder")

    files, arts, model = manifest.get("files"), manifest.get("artifacts"), manifest.get("model")
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and _is_int(e.get("bytes")) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise bad("'files' is not an object of file name -> {bytes, sha256}")
    for name in files:
        inside(folder, name, f"{MANIFEST} files")
    if not isinstance(arts, list) or not all(isinstance(a, dict) and isinstance(a.get("type"), str) for a in arts):
        raise bad("'artifacts' is not a list of {type, file, ...} objects")
    for art in arts:  # a .pte's op_library names the package's library; an .onnx folder carries its own
        for key in ("file", "op_library") if art["type"] == "onnx" else ("file",):
            if art.get(key) is not None and art.get(key) not in files:
                raise bad(f"artifact {key} {str(art.get(key))[:80]!r} is not one of the files it lists")
    if not isinstance(model, dict) or not all(_is_int(model.get(k)) and model[k] >= 0 for k in _MODEL_FIELDS):
        raise bad(f"'model' lacks one of {', '.join(_MODEL_FIELDS)} as a non-negative integer")
    eos = model.get("eos_ids")
    if not isinstance(eos, list) or not all(_is_int(e) for e in eos):
        raise bad("'model.eos_ids' is not a list of integers")
    if not isinstance(manifest.get("options"), dict):
        raise bad("'options' is not an object")
    source = manifest.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("checkpoint"), str):
        raise bad("'source' is not an object naming the checkpoint")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _file_problems(folder: Path, manifest: dict, hashes: bool):
    """Each listed file that is missing, has another size or (hashes=True) another sha256 than the manifest says."""
    for name, entry in manifest["files"].items():
        path = Path(folder) / name
        if not path.is_file():
            yield f"{name}: missing"
        elif path.stat().st_size != entry["bytes"]:
            yield f"{name}: {path.stat().st_size} bytes, expected {entry['bytes']} (truncated or replaced)"
        elif hashes and sha256(path) != entry["sha256"]:
            yield f"{name}: sha256 differs from the manifest (modified or corrupt)"


def check_files(folder: Path, manifest: dict) -> None:
    """verify()'s file checks, run before a runtime opens the folder: a runtime given a damaged file (one byte
    flipped in a .pte) can abort the whole process, so a damaged file gets this message instead."""
    problem = next(_file_problems(folder, manifest, hashes=True), None)
    if problem is not None:
        raise BonsaiError(f"{Path(folder) / problem}; re-export the folder, or run `bonsai-export verify {folder}`")


def verify(folder: Path) -> list[str]:
    """Every problem of an artifact folder against its manifest (format version, the manifest's own seal, each
    file's size and sha256, files the manifest does not list); empty when the folder is exactly what export
    wrote."""
    manifest = read_manifest(folder, sealed=False)
    problems = [f"{MANIFEST}: edited after export ({SEAL} does not match)"] if manifest_edited(manifest) else []
    problems += list(_file_problems(folder, manifest, hashes=True))
    listed = set(manifest["files"]) | {MANIFEST}
    problems += [f"{p.name}: not in the manifest" for p in sorted(Path(folder).iterdir()) if p.name not in listed]
    return problems


def is_artifact(path) -> bool:
    return (Path(path) / MANIFEST).is_file()
