"""What an exported folder holds and how it describes itself: ExportConfig, metadata keys, the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import __version__, formats
from .errors import BonsaiError

FORMAT_VERSION = 1
MANIFEST = "bonsai_manifest.json"
PTE_FILE = "model.pte"
ONNX_FILE = "model.onnx"
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

ARTIFACT_FORMATS = ("pte", "onnx", "all")
EMBEDDINGS = ("bf16", "int8")
HEADS = ("bf16", "int8", "int4")
TERNARY_OPS = ("custom", "stock")  # ONNX: bonsai::TernaryMatMul (our library) or com.microsoft MatMulNBits bits=2


@dataclass(frozen=True)
class ExportConfig:
    """Every option of `bonsai-export export`; the CLI's defaults come from here."""

    format: str = "pte"
    max_seq_len: int | None = None  # None: the model's limit (Bonsai: 2048)
    act_quant: str = "int8"  # int8: per-token absmax int8 activations; none: float (exact Bonsai)
    embedding: str = "bf16"
    head: str = "int8"
    ternary_op: str = "custom"  # ONNX only: custom = bonsai::TernaryMatMul; stock = MatMulNBits (unmodified ORT)
    threads: int = 0  # runner default; 0: the runtime's choice

    def __post_init__(self):
        for name, allowed in (("format", ARTIFACT_FORMATS), ("act_quant", tuple(formats.ACT_MODES)),
                              ("embedding", EMBEDDINGS), ("head", HEADS),
                              ("ternary_op", TERNARY_OPS)):
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
    """Hash every file of the folder into the manifest (written last, so it covers all files)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, "bonsai_export_version": __version__, **body,
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BonsaiError(f"{folder}: no {MANIFEST}; not a bonsai-export artifact folder (run `bonsai-export "
                          f"export` first, or pass a checkpoint)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BonsaiError(f"{path}: not valid JSON ({exc})") from None
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BonsaiError(f"{path}: written by a newer bonsai-export (format {version}, made by "
                          f"{manifest.get('bonsai_export_version', '?')}); this {__version__} reads format "
                          f"{FORMAT_VERSION}: upgrade bonsai-export, or re-export with this one")
    if version != FORMAT_VERSION:
        raise BonsaiError(f"{path}: format_version {version!r}, this bonsai-export reads {FORMAT_VERSION}; "
                          f"re-export with this version")
    return manifest


def _file_problems(folder: Path, manifest: dict, hashes: bool):
    """Each listed file that is missing, has another size or (hashes=True) another sha256 than the manifest says."""
    for name, entry in manifest["files"].items():
        path = Path(folder) / name
        if not path.is_file():
            yield f"{name}: missing"
        elif path.stat().st_size != entry["bytes"]:
            yield f"{name}: {path.stat().st_size} bytes, expected {entry['bytes']}"
        elif hashes and sha256(path) != entry["sha256"]:
            yield f"{name}: sha256 differs from the manifest (modified or corrupt)"


def check_sizes(folder: Path, manifest: dict) -> None:
    """The cheap part of verify(), run before a runtime opens the folder: a truncated or missing file gets this
    message instead of a runtime's parse error."""
    problem = next(_file_problems(folder, manifest, hashes=False), None)
    if problem is not None:
        raise BonsaiError(f"{Path(folder) / problem} (truncated or replaced); re-export the folder, or run "
                          f"`bonsai-export verify {folder}`")


def verify(folder: Path) -> list[str]:
    """Every problem of an artifact folder against its manifest (format version, each file's size and sha256,
    files the manifest does not list); empty when the folder is exactly what export wrote."""
    manifest = read_manifest(folder)
    problems = list(_file_problems(folder, manifest, hashes=True))
    listed = set(manifest["files"]) | {MANIFEST}
    problems += [f"{p.name}: not in the manifest" for p in sorted(Path(folder).iterdir()) if p.name not in listed]
    return problems


def is_artifact(path) -> bool:
    return (Path(path) / MANIFEST).is_file()
