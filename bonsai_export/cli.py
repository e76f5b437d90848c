"""The `bonsai-export` command line: each subcommand parses, builds a config, and calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import BonsaiError

EXAMPLES = {
    "make-checkpoint": "bonsai-export make-checkpoint --preset tiny --out ckpt/tiny",
    "info": "bonsai-export info deepgrove/Bonsai\n  bonsai-export info ckpt/tiny --json",
    "run": 'bonsai-export run --prompt "Once upon a time"          (the embedded tiny model)\n'
           '  bonsai-export run deepgrove/Bonsai --prompt "The capital of France is" --max-new-tokens 20',
    "bench-kernels": "bonsai-export bench-kernels --quick --json-out kernels.json",
}


def default_model() -> Path:
    """The embedded default: the tiny synthetic checkpoint, made on first use in the user's cache."""
    from .synthetic import make_checkpoint

    cache = Path(os.environ.get("BONSAI_EXPORT_CACHE", Path.home() / ".cache" / "bonsai-export"))
    folder = cache / "tiny-seed0"
    if not (folder / "config.json").is_file():
        logging.info("making the embedded tiny checkpoint in %s", folder)
        make_checkpoint("tiny", folder, seed=0, progress=False)
    return folder


def _load(model: str | None, quiet: bool):
    from . import checkpoint

    return checkpoint.load(model if model else default_model(), progress=not quiet)


def cmd_make_checkpoint(args) -> int:
    from .synthetic import make_checkpoint

    out = make_checkpoint(args.preset, args.out, seed=args.seed, progress=not args.quiet)
    print(out)
    return 0


def cmd_info(args) -> int:
    from .info import describe, render

    d = describe(_load(args.model, args.quiet))
    print(json.dumps(d, indent=2) if args.json else render(d))
    return 0


def cmd_run(args) -> int:
    from .generate import SamplingConfig, generate
    from .model import from_checkpoint
    from .tokenizer import StreamDecoder, Tokenizer

    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    ckpt = _load(args.model, args.quiet)
    model = from_checkpoint(ckpt, act_quant=args.act_quant, max_seq_len=args.max_seq_len)
    tok = Tokenizer(ckpt.folder)
    stream = StreamDecoder(tok)
    print(args.prompt, end="", flush=True)
    res = generate(model, tok.encode(args.prompt, bos_id=ckpt.args.bos_id), cfg, ckpt.args.eos_ids,
                   model.max_seq_len, on_token=lambda t: print(stream.push(t), end="", flush=True))
    print()
    if not args.quiet:
        print(f"[{res.prompt_tokens} prompt tokens, prefill {res.prefill_tps:.1f} tok/s; {len(res.tokens)} new "
              f"tokens, decode {res.decode_tps:.1f} tok/s{'; stopped at EOS' if res.stopped_at_eos else ''}]",
              file=sys.stderr)
    return 0


def _add_model(p, required: bool = False) -> None:
    p.add_argument("model", nargs=None if required else "?",
                   help="hub id (org/name) or local checkpoint folder; default: the embedded tiny checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai-export", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bonsai-export {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or timing lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = add("make-checkpoint", cmd_make_checkpoint, "write a deterministic synthetic checkpoint in Bonsai's format")
    p.add_argument("--preset", required=True, choices=["tiny", "bonsai-500m"])
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--seed", type=int, default=0)

    p = add("info", cmd_info, "print a checkpoint's format, shape, parameter counts, sparsity and artifact sizes")
    _add_model(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("run", cmd_run, "generate text with the eager PyTorch model (streams tokens)")
    _add_model(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--act-quant", choices=["none", "int8"], default="none",
                   help="none: float activations (exact Bonsai); int8: per-token absmax int8")
    p.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the model's limit)")

    try:
        from . import bench_kernels
    except ImportError:  # the kernel benchmark lands with the native kernels
        bench_kernels = None
    if bench_kernels is not None:
        p = add("bench-kernels", bench_kernels.run, "benchmark the packed-ternary kernels against ONNX Runtime")
        bench_kernels.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except BonsaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
