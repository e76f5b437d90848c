"""The artifact contract's names for the readers that are not Python: a C++ header for bonsai_runner and a Kotlin
object for the Android app, both generated from artifact.py's and metadata.py's types, so the three readers share
one definition.

`python -m bonsai_export.artifact_sources` writes them; tests/test_artifact_sources.py fails when a checked-in copy
differs from what they generate, or when those sources spell a key themselves instead of using the copy.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from . import artifact as A
from . import metadata as M

ROOT = Path(__file__).resolve().parents[1]
CPP_HEADER = Path("custom_ops/runner/artifact_keys.h")
KOTLIN_OBJECT = Path("android_demo/app/src/main/java/org/bonsaiexport/demo/ArtifactKeys.kt")
_NOTE = ("Generated from bonsai_export/{artifact,metadata}.py by `python -m bonsai_export.artifact_sources`; "
         "do not edit.")


def _fields(cls, drop: tuple[str, ...] = ()) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in drop]


def sections() -> dict[str, dict[str, str | int]]:
    """Section -> constant name (UPPER_SNAKE) -> value: what the C++ and Kotlin readers may name."""
    files = {"FORMAT_VERSION": A.FORMAT_VERSION, "MANIFEST": A.MANIFEST, "PTE_FILE": A.PTE_FILE,
             "ONNX_FILE": A.ONNX_FILE, "ONNX_DATA_FILE": A.ONNX_DATA_FILE, "GENAI_CONFIG": A.GENAI_CONFIG,
             "ORT_OPS_LIB": A.ORT_OPS_LIB, "SEAL": A.SEAL}
    files.update({f"TYPE_{kind.upper()}": kind for kind in A.ARTIFACT_TYPES})
    files.update({f"TERNARY_OP_{op.upper()}": op for op in A.TERNARY_OPS})
    return {
        "Folder": files,
        "Manifest": {k.upper(): k for k in _fields(A.Manifest)},
        "Model": {k.upper(): k for k in _fields(A.ModelShape)},
        "Entry": {k.upper(): k for k in _fields(A.ArtifactEntry, drop=("details",))},
        "Pte": {k.upper(): v for k, v in {**M.PteMetadata.METHODS, **{f: f for f in M.PteMetadata.FLAGS}}.items()},
    }


def _literal(value: str | int) -> str:
    return str(value) if isinstance(value, int) else f'"{value}"'


def cpp_header() -> str:
    lines = [f"// {_NOTE}", "#pragma once", "", "#include <cstdint>", "", "namespace bonsai::artifact {", ""]
    for section, names in sections().items():
        lines.append(f"namespace {section.lower()} {{")
        for name, value in names.items():
            kind = "int64_t" if isinstance(value, int) else "char"
            ident = "k" + "".join(w.capitalize() for w in name.split("_"))
            lines.append(f"inline constexpr {kind} {ident}{'' if kind == 'int64_t' else '[]'} = {_literal(value)};")
        lines += [f"}}  // namespace {section.lower()}", ""]
    return "\n".join([*lines, "}  // namespace bonsai::artifact", ""])


def kotlin_object() -> str:
    lines = [f"// {_NOTE}", "package org.bonsaiexport.demo", "",
             "/** The artifact contract's names (bonsai_export/artifact.py, metadata.py), as the app reads them. */",
             "object ArtifactKeys {"]
    for section, names in sections().items():
        lines.append(f"    object {section} {{")
        lines += [f"        const val {name} = {_literal(value)}" for name, value in names.items()]
        lines.append("    }")
    return "\n".join([*lines, "}", ""])


def generated() -> dict[Path, str]:
    return {CPP_HEADER: cpp_header(), KOTLIN_OBJECT: kotlin_object()}


def spelled_keys(text: str) -> set[str]:
    """String literals in a C++ or Kotlin source that are one of the contract's key names (they should come from
    the generated copy instead). File names are left out: messages name them."""
    keys = {v for s, names in sections().items() if s != "Folder" for v in names.values() if isinstance(v, str)}
    return {lit for lit in re.findall(r'"([A-Za-z_]\w*)"', text) if lit in keys}


def main() -> int:
    for path, text in generated().items():
        (ROOT / path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
