"""The runtime harness: export a checkpoint to every artifact and check each against the eager reference.

    pytest runtime_tests                                   # trained-tiny, made on CPU on first use (minutes)
    pytest runtime_tests --checkpoint deepgrove/Bonsai      # the real model (network; ~3 min per export)
    BONSAI_CHECKPOINT=path/to/folder pytest runtime_tests

Exports are made once per session and act-quant mode: one `--format all` folder (the .pte and the custom-op
.onnx) and one stock-ONNX folder.
"""

import os

import pytest

from bonsai_export import artifact as A
from bonsai_export import checkpoint

PRESET_PREFIX = "preset:"


def pytest_addoption(parser):
    group = parser.getgroup("bonsai runtime harness")
    group.addoption("--checkpoint", default=os.environ.get("BONSAI_CHECKPOINT", "preset:trained-tiny"),
                    help="hub id, checkpoint folder, or preset:NAME (default preset:trained-tiny; env BONSAI_CHECKPOINT)")
    group.addoption("--max-seq-len", type=int, default=256, help="artifacts' KV cache length (default 256)")
    group.addoption("--decode-steps", type=int, default=16, help="decode steps compared per backend (default 16)")


@pytest.fixture(scope="session")
def source(request) -> str:
    name = request.config.getoption("--checkpoint")
    if name.startswith(PRESET_PREFIX):
        from bonsai_export.synthetic import cached_preset

        return str(cached_preset(name[len(PRESET_PREFIX):]))
    return name


@pytest.fixture(scope="session")
def ckpt(source):
    return checkpoint.load(source, progress=False)


@pytest.fixture(scope="session")
def options(request):
    return {"max_seq_len": request.config.getoption("--max-seq-len"),
            "decode_steps": request.config.getoption("--decode-steps")}


@pytest.fixture(scope="session")
def artifacts(source, options, tmp_path_factory):
    """(act_quant, variant) -> artifact folder, exported on first use."""
    from bonsai_export.export import export

    made = {}

    def get(act: str, variant: str):
        fmt, op = ("all", "custom") if variant == "custom" else ("onnx", "stock")
        if (act, fmt) not in made:
            out = tmp_path_factory.mktemp(f"{act}-{fmt}") / "artifact"
            export(source, out, A.ExportConfig(format=fmt, ternary_op=op, act_quant=act,
                                               max_seq_len=options["max_seq_len"]))
            made[(act, fmt)] = out
        return made[(act, fmt)]

    return get
