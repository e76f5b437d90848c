"""Where the native libraries and the C++ runner live (built by `pip install .`); the exporter copies the ONNX
Runtime op library out of here into an artifact, the runtimes load from here. No library is loaded by this module."""

from __future__ import annotations

import os
from pathlib import Path

ET_OPS_LIB = "libbonsai_et_ops.so"  # our ExecuTorch kernels (bonsai::ternary_linear, attention, dense_linear)
RUNNER = "bonsai_runner"  # the Python-free C++ runner of a .pte folder


def native_dir() -> Path:
    """Where the native libraries live: $BONSAI_NATIVE_DIR, else bonsai_export/_native (pip install puts them)."""
    return Path(os.environ.get("BONSAI_NATIVE_DIR", Path(__file__).resolve().parent / "_native"))
