"""The export's named stages: one progress bar over them (tqdm, off with --quiet) and each one's duration in the log."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from .. import artifact as A

log = logging.getLogger("bonsai_export.export")


_bar = None  # the running export's stage bar (tqdm), None when progress is off


@contextmanager
def stage(name: str):
    """One named step of the export: the bar shows it while it runs, the log gets its duration."""
    start = time.perf_counter()
    if _bar is not None:
        _bar.set_description_str(name)
    yield
    if _bar is not None:
        _bar.update(1)
    log.info("[%s] done in %.1f s", name, time.perf_counter() - start)


def _stage_count(cfg: A.ExportConfig) -> int:
    pte, onnx, gguf = cfg.format in ("pte", "all"), cfg.format in ("onnx", "all"), cfg.format == "gguf"
    return 4 + 3 * pte + onnx + gguf  # load, build, [export, lower, serialize], [ONNX graph], [GGUF], tokenizer,
    # manifest


@contextmanager
def progress(cfg: A.ExportConfig):
    global _bar
    if not log.isEnabledFor(logging.INFO):  # --quiet
        yield
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # Our log lines above the bar (the libraries' are in the log file, see quiet.py).
    with logging_redirect_tqdm([logging.getLogger("bonsai_export")]), \
            tqdm(total=_stage_count(cfg), unit="stage", bar_format=BAR) as bar:
        _bar = bar
        try:
            yield
        finally:
            _bar = None


BAR = "{desc:<28} {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}"
