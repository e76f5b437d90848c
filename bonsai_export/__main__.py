"""`python -m bonsai_export` and the `bonsai-export` command: the CLI, with a Ctrl-C that lands while the CLI is
still being imported answered like one anywhere else (one line, exit 130)."""

import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
