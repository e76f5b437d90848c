"""Checks of numeric command-line options, shared by argparse (as `type=`) and the Python API.

Light on purpose: the CLI answers `--help` and argument errors before torch is imported, so nothing here may
import it. Each check raises BonsaiError naming the option, the accepted range and the value.
"""

from __future__ import annotations

import os

from .errors import BonsaiError

# bench --device's --threads are for a phone, which may have more cores than this host, so they get a fixed bound;
# a runtime here never gets more threads than this host has CPUs: ExecuTorch's pool crashes and ONNX Runtime's
# grows without bound when asked for 100000.
MAX_DEVICE_THREADS = 256
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy accept any seed in 0..2**63-1


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def integer(text, option: str, low: int, high: int | None = None, note: str = "") -> int:
    """`text` as an int in [low, high] (high None: no upper bound)."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise BonsaiError(f"{option}: expected an integer, got {str(text)[:40]!r}") from None
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"{low}..{high}"
        raise BonsaiError(f"{option}: expected {bound}{note}, got {value}")
    return value


def threads(value, option: str = "--threads", allow_default: bool = True) -> int:
    """Runtime threads on this host: 0 (the runtime's default, where allowed) .. the CPU count."""
    n = cpu_count()
    return integer(value, option, 0 if allow_default else 1, n, f" (this machine has {n} CPUs"
                   + ("; 0 = the default)" if allow_default else ")"))


def seed(value) -> int:
    return integer(value, "--seed", 0, MAX_SEED)


def at_least(low: int, option: str):
    """An argparse `type=` accepting integers >= low."""
    return lambda text: integer(text, option, low)
