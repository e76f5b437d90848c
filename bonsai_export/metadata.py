"""What a .pte and an .onnx carry inside themselves, beside the manifest: the .pte's constant methods
(ExecuTorch's LLM runner metadata and our export options, PteMetadata) and the .onnx's metadata_props (the
options). The runners read them back here and check them against the manifest."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

from .artifact import FORMAT_VERSION, MANIFEST, ExportConfig, Manifest
from .errors import BonsaiError


@dataclass(frozen=True)
class PteMetadata:
    """The constant methods baked into a .pte: ExecuTorch's LLM runner metadata under ExecuTorch's names (its
    "max_seq_len" is tokens per call, here `call_tokens`; the context is its "max_context_len"), and our options."""

    call_tokens: int  # most tokens one forward call takes; longer prompts go in several calls
    max_seq_len: int  # the context: KV cache positions
    vocab_size: int
    n_layers: int
    bos_id: int
    eos_ids: tuple[int, ...]
    options: ExportConfig
    format_version: int = FORMAT_VERSION

    # field -> constant method; the C++ runner's and the Kotlin app's copies are generated from these tables
    METHODS: ClassVar[dict[str, str]] = {
        "call_tokens": "get_max_seq_len", "max_seq_len": "get_max_context_len", "vocab_size": "get_vocab_size",
        "n_layers": "get_n_layers", "bos_id": "get_bos_id", "eos_ids": "get_eos_ids",
        "options": "get_bonsai_export_options", "format_version": "get_bonsai_format_version"}
    # fixed flags ExecuTorch's runner reads: every program has a KV cache and a dynamic prompt length
    FLAGS: ClassVar[dict[str, bool]] = {"use_kv_cache": True, "enable_dynamic_shape": True}

    def methods(self) -> dict:
        """Constant method name -> value, for to_edge_transform_and_lower (the options as UTF-8 bytes: a
        constant method returns numbers or lists of them)."""
        values = {**dataclasses.asdict(self), "eos_ids": list(self.eos_ids),
                  "options": list(self.options.to_json().encode())}
        return {**{self.METHODS[k]: v for k, v in values.items()}, **self.FLAGS}

    @classmethod
    def read(cls, get, where: str) -> "PteMetadata":
        """From a program: `get(method name)` returns what the method returns (a list of numbers)."""
        values = {k: get(name) for k, name in cls.METHODS.items()}
        try:
            options = json.loads(bytes(int(b) for b in values.pop("options")).decode())
        except (ValueError, UnicodeDecodeError):
            raise BonsaiError(f"{where}: its {cls.METHODS['options']} is not JSON; re-export the folder") from None
        scalars = {k: int(v[0]) for k, v in values.items() if k != "eos_ids"}
        return cls(**scalars, eos_ids=tuple(int(e) for e in values["eos_ids"]),
                   options=ExportConfig.from_dict(options, where))


# The .onnx's metadata_props (onnx.ModelProto; ONNX Runtime: session.get_modelmeta().custom_metadata_map).
ONNX_META_OPTIONS = "bonsai_export_options"
ONNX_META_FORMAT_VERSION = "bonsai_format_version"


def onnx_metadata(cfg: ExportConfig) -> dict[str, str]:
    return {ONNX_META_OPTIONS: cfg.to_json(), ONNX_META_FORMAT_VERSION: str(FORMAT_VERSION)}


def onnx_options(props: dict[str, str], where: str) -> ExportConfig:
    """The export options an .onnx carries (its metadata_props)."""
    if ONNX_META_OPTIONS not in props:
        raise BonsaiError(f"{where}: no {ONNX_META_OPTIONS} in its metadata; re-export the folder")
    try:
        data = json.loads(props[ONNX_META_OPTIONS])
    except ValueError:
        raise BonsaiError(f"{where}: its {ONNX_META_OPTIONS} is not JSON; re-export the folder") from None
    return ExportConfig.from_dict(data, where)


def check_embedded(options: ExportConfig, manifest: Manifest, where: str) -> None:
    """The options a .pte or .onnx carries must be the manifest's (a file of another export, copied in)."""
    if options != manifest.options:
        diff = [f"{k} {v!r} vs {getattr(manifest.options, k)!r}" for k, v in options.to_dict().items()
                if getattr(manifest.options, k) != v]
        raise BonsaiError(f"{where}: exported with other options than {MANIFEST} says ({'; '.join(diff)}); "
                          f"re-export the folder")
