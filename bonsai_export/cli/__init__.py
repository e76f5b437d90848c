"""The `bonsai-export` command line: `main` runs one subcommand (parser.py reads the arguments, commands.py holds
the subcommands) and turns every outcome into an exit code and, for errors, one line."""

from __future__ import annotations

import json
import os
import sys
import traceback

from ..errors import BonsaiError
from ..quiet import session
from .parser import UsageError, build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """The program (argv None: also takes over file descriptor 2 for the libraries' lines, see quiet.py), or a
    call from Python with its own arguments."""
    whole_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except UsageError as exc:
            return _fail(str(exc), 2, "--json" in argv)
        args.quiet = args.quiet or args.json
        light = args.command in ("verify", "bench-kernels")  # commands that never import torch
        with session(args.quiet, args.verbose, whole_process, preload=() if light else ("torch",)) as s:
            return _call(args, s)
    except KeyboardInterrupt:  # also during start-up and imports
        print("interrupted", file=sys.stderr)
        return 130


def _call(args, s) -> int:
    try:
        return args.func(args)
    except BonsaiError as exc:
        return _fail(f"{exc}{s.hidden()}", getattr(exc, "exit_code", 2), args.json)
    except BrokenPipeError:  # the reader left (`| head`): stop quietly; no second error when Python flushes
        _silence_stdout()
        return 141
    except Exception as exc:  # a bug: one line here, the traceback in the log
        where = s.log if s.log is not None else "stderr"
        if s.log is not None:
            with open(s.log, "a") as log:
                log.write(traceback.format_exc())
        else:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no detail"
        return _fail(f"internal error ({type(exc).__name__}: {first}); the traceback is in {where}; please report "
                     f"it with that file", 70, args.json)


def _fail(message: str, code: int, as_json: bool) -> int:
    message = " ".join(message.split())  # one line, whatever a library's text embedded in it holds
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (captured): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
