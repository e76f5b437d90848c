"""The `bonsai-export` command line: each subcommand parses, builds a config, and calls one function."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path

from . import __version__
from . import options as O
from .artifact import (ARTIFACT_FORMATS, EMBEDDINGS, GGUF_DENSE, GGUF_FALLBACKS, GGUF_TERNARY, HEADS, TERNARY_OPS,
                       ExportConfig)
from .config import PRESETS
from .errors import BonsaiError
from .formats import ACT_MODES
from .gates import TEXT_GATES, Gates
from .quiet import session

# Nothing above imports torch: --help and argument errors are answered in a fraction of a second. Each command
# imports what it needs.

EXAMPLES = {
    "make-checkpoint": "bonsai-export make-checkpoint --preset tiny --out ckpt/tiny\n"
                       "  bonsai-export make-checkpoint --preset trained-small --out ckpt/small",
    "info": "bonsai-export info deepgrove/Bonsai\n  bonsai-export info ckpt/tiny --json",
    "export": "bonsai-export export deepgrove/Bonsai --format pte -o out/bonsai --head int8\n"
              "  bonsai-export export ckpt/tiny -o out/tiny --act-quant none --max-seq-len 256\n"
              "  bonsai-export export deepgrove/Bonsai --format gguf -o out/bonsai-gguf --gguf-head q8_0",
    "run": 'bonsai-export run out/bonsai --prompt "The capital of France is"\n'
           '  bonsai-export run --prompt "Once upon a time"          (the embedded tiny model)\n'
           '  bonsai-export run deepgrove/Bonsai --prompt "The capital of France is" --max-new-tokens 20',
    "validate": "bonsai-export validate out/bonsai --report out/bonsai-validation\n"
                "  bonsai-export validate out/tiny --reference ckpt/tiny --text notes.txt --min-top1 0.99",
    "bench": "bonsai-export bench out/bonsai --report out/bench\n"
             "  bonsai-export bench out/tiny --threads 2 --repeats 3 --no-baselines --no-peers\n"
             "  bonsai-export bench out/bonsai --device adb --runner-dir build-android/install --threads 2,4",
    "verify": "bonsai-export verify out/bonsai\n  bonsai-export --json verify out/bonsai",
    "bench-kernels": "bonsai-export bench-kernels --quick --json-out kernels.json",
    "eval": "bonsai-export eval out/bonsai --reference deepgrove/Bonsai --report out/bonsai-eval\n"
            "  bonsai-export eval out/tiny --tasks bonsai_qa --limit 20        (the offline task shipped with us)",
}


def _load(model: str | None, quiet: bool):
    from . import checkpoint

    return checkpoint.load(model if model else _default(), progress=not quiet)


def _emit(args, text: str, data: dict) -> None:
    """The command's result: `text` for people, or with --json one JSON object for scripts."""
    print(json.dumps(data, default=str) if args.json else text)


def cmd_make_checkpoint(args) -> int:
    from .synthetic import make_checkpoint

    out = make_checkpoint(args.preset, args.out, seed=args.seed, progress=not args.quiet, retrain=args.retrain)
    _emit(args, str(out), {"checkpoint": str(out), "preset": args.preset, "seed": args.seed})
    return 0


def cmd_info(args) -> int:
    from . import artifact as A
    from .info import describe, render

    if args.model and A.is_artifact(args.model):
        return _info_artifact(args, A.read_manifest(Path(args.model)))
    d = describe(_load(args.model, args.quiet))
    _emit(args, render(d), d)
    return 0


def _info_artifact(args, manifest) -> int:
    """`info` on an export folder: what the manifest says it holds (the checkpoint's own figures need it)."""
    m = manifest.model
    text = (f"{args.model}: bonsai-export artifact ({', '.join(manifest.kinds)}) of {manifest.source.checkpoint}\n"
            f"shape: {m.n_layers} layers, dim {m.dim}, vocab {m.vocab_size}, max_seq_len {m.max_seq_len}\n"
            f"options: {', '.join(f'{k}={v}' for k, v in manifest.options.to_dict().items())}\n"
            f"files: {len(manifest.files)}, {manifest.total_bytes / 1e6:.1f} MB")
    _emit(args, text, {"artifact": str(args.model), **manifest.to_dict()})
    return 0


def cmd_export(args) -> int:
    from .artifact import ExportConfig
    from .export import export

    cfg = ExportConfig(format=args.format, max_seq_len=args.max_seq_len, act_quant=args.act_quant,
                       embedding=args.embedding, head=args.head, ternary_op=args.ternary_op,
                       gguf_ternary=args.gguf_ternary, gguf_head=args.gguf_head,
                       gguf_embedding=args.gguf_embedding, gguf_fallback=args.gguf_fallback)
    manifest = export(args.model if args.model else _default(), args.output, cfg, force=args.force)
    gguf = manifest.artifact("gguf")  # a GGUF's bits are its blocks', not our packing's
    bits = gguf.bits_per_ternary_weight if gguf else manifest.model.bits_per_ternary_weight
    _emit(args, f"{args.output}: {', '.join(a.file for a in manifest.artifacts)}; ternary weights "
                f"{bits:.3f} bits/weight", {"output": str(args.output), **manifest.to_dict()})
    return 0


def _default():
    from .synthetic import default_model

    return default_model()


def cmd_run(args) -> int:
    from .generate import SamplingConfig, generate
    from .runners import open_runner
    from .tokenizer import StreamDecoder, Tokenizer

    if not args.prompt.strip():
        raise BonsaiError("--prompt: empty; give the text to continue, e.g. --prompt \"Once upon a time\"")
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    runner = open_runner(args.model if args.model else _default(), act_quant=args.act_quant, max_seq_len=args.max_seq_len, threads=args.threads,
                         backend=args.backend)
    tok = Tokenizer(runner.tokenizer_dir)
    prompt = tok.encode(args.prompt)
    stream = StreamDecoder(tok, context=prompt[-1:])
    show = (lambda text: print(text, end="", flush=True)) if not args.json else (lambda text: None)
    show(args.prompt)
    res = generate(runner, prompt, cfg, runner.eos_ids, runner.max_seq_len, on_token=lambda t: show(stream.push(t)))
    if args.json:
        _emit(args, "", {"backend": runner.name, "prompt": args.prompt, "text": tok.decode(res.tokens),
                         "tokens": res.tokens, "prompt_tokens": res.prompt_tokens, "prefill_tps": res.prefill_tps,
                         "decode_tps": res.decode_tps, "stopped_at_eos": res.stopped_at_eos,
                         "hit_max_seq_len": res.hit_max_seq_len})
        return 0
    print()
    if not args.quiet:
        end = "stopped at EOS" if res.stopped_at_eos else ("stopped at max_seq_len" if res.hit_max_seq_len else "")
        print(f"[{runner.name}: {res.prompt_tokens} prompt tokens, prefill {res.prefill_tps:.1f} tok/s; "
              f"{len(res.tokens)} new tokens, decode {res.decode_tps:.1f} tok/s{'; ' + end if end else ''}]",
              file=sys.stderr)
    return 0


def cmd_validate(args) -> int:
    from . import artifact as A
    from . import checkpoint
    from .model import from_checkpoint
    from .reference import ReferenceLM
    from .runners import EagerRunner, open_runner
    from .tokenizer import Tokenizer
    from .validate import held_out_text, is_exact, summary, validate, write_reports

    if not A.is_artifact(args.artifact):
        raise BonsaiError(f"{args.artifact}: not an artifact folder (no {A.MANIFEST}); run `bonsai-export export`")
    manifest = A.read_manifest(Path(args.artifact))
    art = open_runner(args.artifact, threads=args.threads, backend=args.backend)
    source = args.reference or manifest.source.checkpoint
    ckpt = checkpoint.load(source, progress=not args.quiet)
    _check_reference(ckpt, manifest, source)
    ref = EagerRunner(from_checkpoint(ckpt, act_quant="none", max_seq_len=art.max_seq_len), ckpt.folder)
    gates = Gates(min_top1=args.min_top1, max_ppl_increase=args.max_ppl_increase, max_mean_kl=args.max_mean_kl,
                  require_greedy=args.require_greedy, require_prompt_ids=args.require_prompt_ids,
                  require_text=args.require_text)
    report = validate(art, ref, Tokenizer(ckpt.folder), text=held_out_text(args.text), prompt=args.prompt,
                      steps=args.steps, window=args.window, max_tokens=args.max_text_tokens, gates=gates,
                      lm=ReferenceLM(ckpt), exact=is_exact(manifest.options, art.name),
                      max_new_tokens=args.max_new_tokens)
    report.update(artifact=str(args.artifact), backend=art.name, reference=str(source),
                  options=manifest.options.to_dict())
    paths = write_reports(report, Path(args.report))
    _emit(args, f"{summary(report, gates)}\nreports: {', '.join(map(str, paths))}", report)
    for failure in report["failures"]:
        print(f"{'FAIL' if args.gates else 'gate not enforced'}: {failure}", file=sys.stderr)
    return 1 if report["failures"] and args.gates else 0


def _check_reference(ckpt, manifest, source) -> None:
    """A reference of another shape would fail deep in the comparison: say so before any work."""
    keys = ("n_layers", "dim", "vocab_size", "n_kv_heads", "head_dim")
    diff = [f"{k} {getattr(ckpt.args, k)} vs {getattr(manifest.model, k)}" for k in keys
            if getattr(ckpt.args, k) != getattr(manifest.model, k)]
    if diff:
        raise BonsaiError(f"--reference {source}: not the artifact's model ({'; '.join(diff)}); pass the checkpoint "
                          f"it was exported from ({manifest.source.checkpoint})")


def cmd_eval(args) -> int:
    from . import artifact as A
    from . import checkpoint
    from .evaluate import evaluate, write_reports  # raises the install hint without lm-eval
    from .model import from_checkpoint
    from .runners import EagerRunner, open_runner

    if not A.is_artifact(args.artifact):
        raise BonsaiError(f"{args.artifact}: not an artifact folder (no {A.MANIFEST}); run `bonsai-export export`")
    if args.limit is not None and args.limit < 1:
        raise BonsaiError(f"--limit: expected >= 1, got {args.limit}")
    art = open_runner(args.artifact, threads=args.threads, backend=args.backend)
    ref = None
    if args.reference:  # the float reference: fp32 eager, float activations, the artifact's context length
        ckpt = checkpoint.load(args.reference, progress=not args.quiet)
        _check_reference(ckpt, A.read_manifest(Path(args.artifact)), args.reference)
        ref = EagerRunner(from_checkpoint(ckpt, act_quant="none", max_seq_len=art.max_seq_len), ckpt.folder)
    report = evaluate(art, ref, args.tasks, limit=args.limit, include=[Path(p) for p in args.include_path])
    report.update(artifact=str(args.artifact), backend=art.name, reference=args.reference,
                  options=A.read_manifest(Path(args.artifact)).options.to_dict())
    paths = write_reports(report, Path(args.report))
    lines = []
    for name, t in report["tasks"].items():
        ref_score = t.get("reference", {}).get(t["metric"])
        lines.append(f"{name}: {t['metric']} {t['artifact'].get(t['metric'], float('nan')):.2f}"
                     + (f" (reference {ref_score:.2f})" if ref_score is not None else "")
                     + (f", published {t['published']:.2f}" if t["published"] is not None else ""))
    _emit(args, "\n".join([*lines, f"reports: {', '.join(map(str, paths))}"]), report)
    return 0


def cmd_bench(args) -> int:
    if args.device == "adb":
        return _bench_device(args)
    from .bench import chart, markdown, run_bench

    for n in args.threads:
        O.threads(n, allow_default=False)
    results = run_bench(Path(args.artifact).resolve(), args)
    prefix = _write_report(args.report, results, markdown(results))
    chart(results, prefix.with_suffix(".png"))
    _emit(args, markdown(results), results)
    return 0


def _write_report(prefix: str, data: dict, markdown: str) -> Path:
    """PREFIX.json and PREFIX.md of a bench report; returns the prefix as a Path."""
    path = Path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    return path


def _bench_device(args) -> int:
    from .device_bench import device_bench, markdown

    if args.runner_dir is None:
        raise BonsaiError("--device adb needs --runner-dir: the folder of bonsai_runner built for the device and "
                          "its libraries (android_demo/README.md, section 8)")
    report = device_bench(Path(args.artifact), args.serial, Path(args.runner_dir), args.threads, args.prompt_tokens,
                          args.new_tokens, args.repeats)
    _write_report(args.report, report, markdown(report))
    _emit(args, markdown(report), report)
    return 0


def cmd_verify(args) -> int:
    from . import artifact as A

    problems = A.verify(Path(args.artifact))
    files = A.read_manifest(Path(args.artifact), sealed=False).files  # an edited manifest is a FAIL line
    text = "\n".join(f"FAIL {p}" for p in problems) if problems else \
        f"{args.artifact}: OK ({len(files)} files match the manifest, format {A.FORMAT_VERSION})"
    _emit(args, text, {"artifact": str(args.artifact), "ok": not problems, "problems": problems})
    return 1 if problems else 0


class UsageError(BonsaiError):
    """A command line argparse refuses: reported like any bad input (one line, exit 2, JSON under --json)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prefixes our own "--opt: ..." messages with "argument --opt: "; say it once.
        message = re.sub(r"^argument ([^:]+): (?=\1[: ])", "", message)
        raise UsageError(f"{message}; see `{self.prog} --help`")


def _arg(check, *extra):
    """An argparse `type=` from one of our checks: its BonsaiError message becomes argparse's error message."""
    def parse(text):
        try:
            return check(text, *extra)
        except BonsaiError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__
    return parse


def _utf8(text: str, option: str) -> str:
    """Arguments that are not UTF-8 reach Python as lone surrogates, which fail later inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BonsaiError(f"{option}: not valid UTF-8 text; pass the text in UTF-8 (check the terminal's or the "
                          f"file's encoding)") from None
    return text


def _report_prefix(text: str) -> str:
    """A report prefix under a file could never be written: refuse it before the (long) measurement."""
    for folder in Path(text).parents:
        if folder.exists():
            if not folder.is_dir():
                raise BonsaiError(f"--report {text}: {folder} is a file, not a folder; choose another prefix")
            break
    return text


def _thread_list(text: str) -> list[int]:
    return [O.integer(v, "--threads", 1, O.MAX_DEVICE_THREADS) for v in text.split(",")]


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise BonsaiError(f"--tasks: no task names in {text!r}; give comma-separated names, e.g. --tasks arc_easy")
    return tasks


def _folder(text: str, option: str) -> str:
    if not Path(text).is_dir():
        raise BonsaiError(f"{option} {text}: no such folder; give a folder of lm-eval task YAML files")
    return text


def _add_model(p, required: bool = False) -> None:
    p.add_argument("model", nargs=None if required else "?",
                   help="hub id (org/name) or local checkpoint folder; default: the embedded tiny checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bonsai-export", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bonsai-export {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or timing lines")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings and log lines (otherwise kept in the log file "
                             "$BONSAI_EXPORT_CACHE/last.log)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (errors too); implies --quiet")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = add("make-checkpoint", cmd_make_checkpoint, "write a deterministic synthetic checkpoint in Bonsai's format")
    p.add_argument("--preset", required=True, choices=list(PRESETS),
                   help="tiny / bonsai-500m: random latent weights; trained-tiny: trained on CPU (minutes); "
                        "trained-small: trained on a GPU, unpacked from the weights shipped with the package (seconds)")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--seed", type=_arg(O.seed), default=0)
    p.add_argument("--retrain", action="store_true",
                   help="trained-small: train it again instead of unpacking the shipped weights (CUDA when "
                        "available: about 7 minutes on one H200; CPU: many hours)")

    p = add("info", cmd_info, "print a checkpoint's format, shape, parameter counts, sparsity and artifact sizes")
    _add_model(p)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (as the global --json)")

    p = add("export", cmd_export, "export a checkpoint to an ExecuTorch (.pte) and/or ONNX artifact folder, or a "
            "GGUF file for llama.cpp")
    _add_model(p)
    p.add_argument("-o", "--output", required=True, help="artifact folder to write")
    p.add_argument("--format", choices=list(ARTIFACT_FORMATS), default=ExportConfig.format,
                   help="all = pte + onnx; gguf (llama.cpp: TQ2_0 ternary layers) is asked for by name, since its "
                        "blocks need every ternary K to be a multiple of 256")
    p.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the model's limit)")
    p.add_argument("--act-quant", choices=list(ACT_MODES), default=ExportConfig.act_quant,
                   help="int8: per-token absmax int8 activations; none: float activations (exact Bonsai)")
    p.add_argument("--embedding", choices=list(EMBEDDINGS), default=ExportConfig.embedding,
                   help="token table: bf16 (the checkpoint's, lossless; default) or int8 (8.5 bits/weight)")
    p.add_argument("--head", choices=list(HEADS), default=ExportConfig.head,
                   help="output head: bf16 (lossless; default), int8 (8.5 bits/weight: ~1.25x decode, top-1 -0.2 to "
                        "-0.5 points) or int4 (5 bits: perplexity +0.8%%); README, Heads and embedding")
    p.add_argument("--ternary-op", choices=list(TERNARY_OPS), default=ExportConfig.ternary_op,
                   help="ONNX: custom = bonsai::TernaryMatMul (our op library, copied into the folder); "
                        "stock = com.microsoft MatMulNBits bits=2 (unmodified ONNX Runtime)")
    p.add_argument("--gguf-ternary", choices=list(GGUF_TERNARY), default=ExportConfig.gguf_ternary,
                   help="GGUF: ternary layers as TQ2_0 (2.06 bits/weight, default) or TQ1_0 (1.69 bits, slower in "
                        "llama.cpp); per-channel scales folded in, exact up to fp16 rounding of the scale")
    p.add_argument("--gguf-head", choices=list(GGUF_DENSE), default=ExportConfig.gguf_head,
                   help="GGUF: output head as f16 (the bf16 values, exact down to 2**-14; default), bf16 (bit-exact), "
                        "q8_0 or q4_0 (llama.cpp's absmax quantizers)")
    p.add_argument("--gguf-embedding", choices=list(GGUF_DENSE), default=ExportConfig.gguf_embedding,
                   help="GGUF: token table, same types as --gguf-head (default f16)")
    p.add_argument("--gguf-fallback", choices=list(GGUF_FALLBACKS), default=ExportConfig.gguf_fallback,
                   help="GGUF: a ternary tensor whose K is not a multiple of 256 is refused (none, default), or "
                        "stored as f16 (exact, 16 bits/weight) or q8_0 (8.5 bits), each listed on one line")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")

    p = add("run", cmd_run, "generate text from a checkpoint (eager PyTorch) or an artifact folder (streams tokens)")
    p.add_argument("model", nargs="?",
                   help="artifact folder, hub id or checkpoint folder; default: the embedded tiny checkpoint")
    p.add_argument("--prompt", required=True, type=_arg(_utf8, "--prompt"))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=_arg(O.seed), default=0)
    p.add_argument("--act-quant", choices=list(ACT_MODES), default="none",
                   help="checkpoints only (artifacts fix it at export): none = float activations, int8")
    p.add_argument("--max-seq-len", type=int, default=None, help="checkpoints only: KV cache length")
    p.add_argument("--threads", type=_arg(O.threads), default=0,
                   help="artifacts: runtime threads (0 = the runtime's default)")
    p.add_argument("--backend", choices=["pte", "onnx"], help="which artifact of a --format all folder")

    p = add("validate", cmd_validate, "check an artifact against the fp32 reference: logits, KL, top-1, greedy "
            "tokens, perplexity; exits 1 when a gate fails")
    p.add_argument("artifact", help="artifact folder written by `bonsai-export export`")
    p.add_argument("--reference", help="checkpoint (hub id or folder); default: the manifest's source checkpoint")
    p.add_argument("--backend", choices=["pte", "onnx"], help="which artifact of a --format all folder")
    p.add_argument("--text", help="held-out UTF-8 text file (default: the standard library's pydoc topics)")
    p.add_argument("--max-text-tokens", type=_arg(O.at_least(2, "--max-text-tokens")), default=4096,
                   help="held-out tokens scored (default 4096)")
    p.add_argument("--window", type=_arg(O.at_least(2, "--window")), default=256,
                   help="perplexity window in tokens (default 256)")
    p.add_argument("--prompt", default="The Python language reference describes", type=_arg(_utf8, "--prompt"),
                   help="prompt of the decode and greedy-text checks")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="greedy-text check: tokens generated by transformers and by the artifact (default 32)")
    p.add_argument("--steps", type=_arg(O.at_least(1, "--steps")), default=32,
                   help="decode steps compared (default 32)")
    p.add_argument("--threads", type=_arg(O.threads), default=0)
    p.add_argument("--min-top1", type=float, default=Gates.min_top1)
    p.add_argument("--max-ppl-increase", type=float, default=Gates.max_ppl_increase,
                   help="relative, e.g. 0.02 = 2%%")
    p.add_argument("--max-mean-kl", type=float, default=Gates.max_mean_kl)
    p.add_argument("--require-greedy", action=argparse.BooleanOptionalAction, default=Gates.require_greedy,
                   help="fail unless the greedy continuations are identical")
    p.add_argument("--require-prompt-ids", action=argparse.BooleanOptionalAction, default=Gates.require_prompt_ids,
                   help="fail unless the artifact's tokenizer gives the prompt the ids transformers' AutoTokenizer "
                        "does")
    p.add_argument("--require-text", choices=list(TEXT_GATES), default=Gates.require_text,
                   help="when the greedy text must equal transformers' greedy text on the folded model: exact = for "
                        "artifacts with float activations, bf16 embedding and head, our ternary op (default)")
    p.add_argument("--gates", action=argparse.BooleanOptionalAction, default=True,
                   help="exit 1 when a gate fails (--no-gates: report only, e.g. for random-weight models)")
    p.add_argument("--report", default="validation", type=_arg(_report_prefix),
                   help="report path prefix: PREFIX.json and PREFIX.md")

    p = add("bench", cmd_bench, "measure prefill/decode speed, TTFT, load time, peak RSS and bandwidth share of an "
            "artifact, beside llama.cpp, stock MatMulNBits, the bf16 eager reference and an XNNPACK 8da4w .pte")
    p.add_argument("artifact", help="artifact folder written by `bonsai-export export`")
    p.add_argument("--threads", type=_arg(_thread_list), default=[1, 2],
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeats", type=_arg(O.at_least(1, "--repeats")), default=5,
                   help="runs per figure; medians are reported (default 5)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the bf16 eager reference and the XNNPACK 8da4w .pte")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure llama.cpp on the GGUF of the same checkpoint (needs pip install "
                        "'.[peers]'; skipped with one line without it) and ONNX Runtime's stock MatMulNBits, with "
                        "our / llama.cpp ratios")
    p.add_argument("--report", default="bench", type=_arg(_report_prefix),
                   help="report path prefix: PREFIX.json, PREFIX.md, PREFIX.png")
    p.add_argument("--device", choices=["adb"],
                   help="time the .pte on an Android device through adb with bonsai_runner, beside this host "
                        "(exit 3 when no device is attached)")
    p.add_argument("--serial", help="--device adb: which device (adb -s)")
    p.add_argument("--runner-dir", help="--device adb: folder of bonsai_runner built for the device + its .so files")
    p.add_argument("--prompt-tokens", type=_arg(O.at_least(1, "--prompt-tokens")), default=128,
                   help="--device adb: prompt length (default 128)")
    p.add_argument("--new-tokens", type=_arg(O.at_least(1, "--new-tokens")), default=128,
                   help="--device adb: tokens generated (default 128)")

    p = add("eval", cmd_eval, "score an artifact on lm-evaluation-harness tasks, beside the float reference and "
            "Bonsai's published numbers (needs lm-eval: pip install 'bonsai-export[eval]')")
    p.add_argument("artifact", help="artifact folder written by `bonsai-export export`")
    p.add_argument("--tasks", type=_arg(_task_list),
                   default="arc_easy,arc_challenge,hellaswag,openbookqa,piqa,winogrande,mmlu_continuation",
                   help="comma-separated lm-eval task or group names (default: Bonsai's published set; their data "
                        "comes from the Hugging Face hub; bonsai_qa is a small offline task)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each task (default: all)")
    p.add_argument("--reference", help="checkpoint (hub id or folder) also scored as the fp32 float reference")
    p.add_argument("--backend", choices=["pte", "onnx"], help="which artifact of a --format all folder")
    p.add_argument("--include-path", action="append", default=[], type=_arg(_folder, "--include-path"),
                   help="folder of extra lm-eval task YAMLs")
    p.add_argument("--threads", type=_arg(O.threads), default=0)
    p.add_argument("--report", default="eval", type=_arg(_report_prefix),
                   help="report path prefix: PREFIX.json and PREFIX.md")

    p = add("verify", cmd_verify, "check an artifact folder against its manifest: format version, every file's "
            "size and sha256, unlisted files; exits 1 on any difference")
    p.add_argument("artifact", help="artifact folder written by `bonsai-export export`")

    try:
        from . import bench_kernels
    except ImportError:  # the kernel benchmark lands with the native kernels
        bench_kernels = None
    if bench_kernels is not None:
        p = add("bench-kernels", bench_kernels.run, "benchmark the packed-ternary kernels against ONNX Runtime")
        bench_kernels.add_arguments(p)
    return parser


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
