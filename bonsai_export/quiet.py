"""What a CLI call shows: our progress bars, timing lines, results and errors on the terminal; everything the
libraries say (Python warnings, their log records, and the lines native runtimes write straight to file
descriptor 2, such as ExecuTorch's `[cpuinfo_utils.cpp:...]`) goes to a log file instead, unless --verbose.

The native lines can only be caught at the descriptor: fd 2 is pointed at the log file and Python's sys.stderr
at a duplicate of the original terminal descriptor, so our own output still reaches the terminal. ExecuTorch's
Python bindings print its log lines through sys.stderr instead (in pieces, `[file.cpp:71] message`), so that
stream sends such lines to the log too. torch installs
its own log handler on the sys.stderr it finds at import, so torch is imported before the swap (its handler then
writes to fd 2, the log).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

PACKAGE_LOGGER = "bonsai_export"


def log_path() -> Path:
    """$BONSAI_EXPORT_CACHE/last.log (default ~/.cache/bonsai-export), else the temporary folder's."""
    cache = Path(os.environ.get("BONSAI_EXPORT_CACHE", Path.home() / ".cache" / "bonsai-export"))
    for folder in (cache, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "last.log"
            path.open("w").close()
            return path
        except OSError:
            continue
    return Path(os.devnull)


class _Terminal(io.TextIOBase):
    """sys.stderr while a command runs: text to the terminal, native log lines to the log. A write that starts a
    line with "[" is held until its line ends (tqdm's bars never start so, and pass at once)."""

    NATIVE = re.compile(r"\[[\w./-]+\.(?:cpp|cc|c|h):\d+\] ")

    def __init__(self, terminal_fd: int, log: Path):
        self.terminal = open(terminal_fd, "w", buffering=1, errors="backslashreplace")
        self.log = open(log, "a", buffering=1, errors="backslashreplace")
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._route(line + "\n")
        if self.pending and not self.pending.startswith("["):
            self._route(self.pending)
            self.pending = ""
        return len(text)

    def _route(self, text: str) -> None:
        (self.log if self.NATIVE.match(text) else self.terminal).write(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def fileno(self) -> int:
        return self.terminal.fileno()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


class Session:
    """One CLI call's output routing; `log` is the file holding what was hidden (None with --verbose)."""

    def __init__(self):
        self.log: Path | None = None

    def hidden(self) -> str:
        """' (library messages: LOG)' when something was hidden in the log, for an error line to point to."""
        if self.log is None or self.log == Path(os.devnull):
            return ""
        try:
            return f" (library messages: {self.log})" if self.log.stat().st_size else ""
        except OSError:
            return ""


def _handlers(logger: logging.Logger, *handlers: logging.Handler, level: int) -> None:
    """Replace the handlers this module installed before (main() may run many times in one process)."""
    for old in [h for h in logger.handlers if getattr(h, "_bonsai", False)]:
        logger.removeHandler(old)
        old.close() if isinstance(old, logging.FileHandler) else None
    for h in handlers:
        h._bonsai = True
        logger.addHandler(h)
    logger.setLevel(level)


@contextmanager
def session(quiet: bool, verbose: bool, whole_process: bool, preload: tuple[str, ...] = ()):
    """Route output for one call. whole_process: also take over fd 2 for the rest of the process (only when we
    are the program; a caller of main() in its own process, a test, keeps its descriptors). preload: modules the
    command will import that bind sys.stderr at import time."""
    s = Session()
    if not verbose:
        s.log = log_path()
        if whole_process:
            sys.stderr.flush()
            saved_fd = os.dup(2)
            log_fd = os.open(s.log, os.O_WRONLY | os.O_APPEND)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            try:
                for module in preload:
                    importlib.import_module(module)
            finally:  # also when Ctrl-C stops the import: "interrupted" must reach the terminal
                sys.stderr = _Terminal(saved_fd, s.log)
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(logging.Formatter("%(message)s"))
    ours.setLevel(logging.WARNING if quiet else logging.INFO)  # export reads the level: no stage bar when quiet
    others = logging.StreamHandler(sys.stderr) if verbose else logging.FileHandler(s.log, delay=True)
    package = logging.getLogger(PACKAGE_LOGGER)
    _handlers(package, ours, *([] if verbose else [logging.FileHandler(s.log, delay=True)]),
              level=logging.WARNING if quiet else logging.INFO)
    package.propagate = False
    _handlers(logging.getLogger(), others, level=logging.INFO if verbose else logging.WARNING)
    with warnings.catch_warnings():
        if not verbose:
            logging.captureWarnings(True)  # warnings become log records of "py.warnings": into the log file
        try:
            yield s
        finally:
            logging.captureWarnings(False)
            # The program keeps fd 2 on the log until it exits: native code still writes there while the
            # interpreter shuts down (ExecuTorch's thread pool logs its CPU probe then).
            sys.stderr.flush()
