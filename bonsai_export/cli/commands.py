"""The subcommands, one function each: the parsed arguments (parser.py) -> a config -> one public function of the
package -> its result printed. Each imports what it needs inside, so `--help` never imports torch."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .. import options as O
from .. import reports
from ..errors import BonsaiError
from ..gates import Gates


def _load(model: str | None, quiet: bool):
    from .. import checkpoint

    return checkpoint.load(model if model else _default(), progress=not quiet)


def _emit(args, text: str, data: dict) -> None:
    """The command's result: `text` for people, or with --json one JSON object for scripts."""
    print(json.dumps(data, default=str) if args.json else text)


def cmd_make_checkpoint(args) -> int:
    from ..synthetic import make_checkpoint

    out = make_checkpoint(args.preset, args.out, seed=args.seed, progress=not args.quiet, retrain=args.retrain)
    _emit(args, str(out), {"checkpoint": str(out), "preset": args.preset, "seed": args.seed})
    return 0


def cmd_info(args) -> int:
    from .. import artifact as A
    from ..info import describe, render

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
    from ..artifact import ExportConfig
    from ..export import export

    cfg = ExportConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportConfig)})
    manifest = export(args.model if args.model else _default(), args.output, cfg, force=args.force)
    gguf = manifest.artifact("gguf")  # a GGUF's bits are its blocks', not our packing's
    bits = gguf.bits_per_ternary_weight if gguf else manifest.model.bits_per_ternary_weight
    _emit(args, f"{args.output}: {', '.join(a.file for a in manifest.artifacts)}; ternary weights "
                f"{bits:.3f} bits/weight", {"output": str(args.output), **manifest.to_dict()})
    return 0


def _default():
    from ..synthetic import default_model

    return default_model()


def cmd_run(args) -> int:
    from ..generate import SamplingConfig, generate
    from ..runners import open_runner
    from ..tokenizer import StreamDecoder, Tokenizer

    if not args.prompt.strip():
        raise BonsaiError("--prompt: empty; give the text to continue, e.g. --prompt \"Once upon a time\"")
    if args.chat:
        return cmd_chat(args, [args.prompt])
    if args.system is not None or args.think is not None:
        raise BonsaiError("--system and --think are chat options; add --chat, or use `bonsai-export chat`")
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    runner = open_runner(args.model if args.model else _default(), act_quant=args.act_quant,
                         max_seq_len=args.max_seq_len, threads=args.threads, backend=args.backend)
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
        print(_run_summary(runner.name, res), file=sys.stderr)
    return 0


def cmd_chat(args, messages: list[str] | None = None) -> int:
    from ..chat import converse, open_session, read_messages
    from ..generate import SamplingConfig

    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    session = open_session(args.model if args.model else _default(), cfg, args.system, args.think,
                           act_quant=args.act_quant, max_seq_len=args.max_seq_len, threads=args.threads,
                           backend=args.backend)
    return converse(session, messages or read_messages(sys.stdin), sys.stdout, sys.stderr, quiet=args.quiet,
                    as_json=args.json, keep_going=messages is None)


def _run_summary(backend: str, res) -> str:
    end = "stopped at EOS" if res.stopped_at_eos else ("stopped at max_seq_len" if res.hit_max_seq_len else "")
    return (f"[{backend}: {res.prompt_tokens} prompt tokens, prefill {res.prefill_tps:.1f} tok/s; "
            f"{len(res.tokens)} new tokens, decode {res.decode_tps:.1f} tok/s{'; ' + end if end else ''}]")


def cmd_validate(args) -> int:
    from ..reference import ReferenceLM
    from ..tokenizer import Tokenizer
    from ..validate import held_out_text, is_exact, markdown, summary, validate

    manifest, art = _open_artifact(args)
    source = args.reference or manifest.source.checkpoint
    ckpt, ref = _reference(args, source, manifest, art)
    gates = Gates(min_top1=args.min_top1, max_ppl_increase=args.max_ppl_increase, max_mean_kl=args.max_mean_kl,
                  require_greedy=args.require_greedy, require_prompt_ids=args.require_prompt_ids,
                  require_text=args.require_text)
    report = validate(art, ref, Tokenizer(ckpt.folder), text=held_out_text(args.text), prompt=args.prompt,
                      steps=args.steps, window=args.window, max_tokens=args.max_text_tokens, gates=gates,
                      lm=ReferenceLM(ckpt), exact=is_exact(manifest.options, art.name),
                      max_new_tokens=args.max_new_tokens)
    report.update(artifact=str(args.artifact), backend=art.name, reference=str(source),
                  options=manifest.options.to_dict())
    paths = reports.write(args.report, report, markdown(report))
    _emit(args, f"{summary(report, gates)}\nreports: {', '.join(map(str, paths))}", report)
    for failure in report["failures"]:
        print(f"{'FAIL' if args.gates else 'gate not enforced'}: {failure}", file=sys.stderr)
    return 1 if report["failures"] and args.gates else 0


def _open_artifact(args):
    """validate's and eval's artifact: its manifest and its runner."""
    from .. import artifact as A
    from ..runners import open_runner

    if not A.is_artifact(args.artifact):
        raise BonsaiError(f"{args.artifact}: not an artifact folder (no {A.MANIFEST}); run `bonsai-export export`")
    return A.read_manifest(Path(args.artifact)), open_runner(args.artifact, threads=args.threads, backend=args.backend)


def _reference(args, source: str, manifest, art):
    """The float reference of the artifact's model: its checkpoint, and the fp32 eager runner of it with float
    activations at the artifact's context length."""
    from .. import checkpoint
    from ..model import from_checkpoint
    from ..runners import EagerRunner

    ckpt = checkpoint.load(source, progress=not args.quiet)
    _check_reference(ckpt, manifest, source)
    return ckpt, EagerRunner(from_checkpoint(ckpt, act_quant="none", max_seq_len=art.max_seq_len), ckpt.folder)


def _check_reference(ckpt, manifest, source) -> None:
    """A reference of another shape would fail deep in the comparison: say so before any work."""
    keys = ("n_layers", "dim", "vocab_size", "n_kv_heads", "head_dim")
    diff = [f"{k} {getattr(ckpt.args, k)} vs {getattr(manifest.model, k)}" for k in keys
            if getattr(ckpt.args, k) != getattr(manifest.model, k)]
    if diff:
        raise BonsaiError(f"--reference {source}: not the artifact's model ({'; '.join(diff)}); pass the checkpoint "
                          f"it was exported from ({manifest.source.checkpoint})")


def cmd_eval(args) -> int:
    from ..evaluate import evaluate, markdown  # raises the install hint without lm-eval

    if args.limit is not None and args.limit < 1:
        raise BonsaiError(f"--limit: expected >= 1, got {args.limit}")
    manifest, art = _open_artifact(args)
    ref = _reference(args, args.reference, manifest, art)[1] if args.reference else None
    report = evaluate(art, ref, args.tasks, limit=args.limit, include=[Path(p) for p in args.include_path])
    report.update(artifact=str(args.artifact), backend=art.name, reference=args.reference,
                  options=manifest.options.to_dict())
    paths = reports.write(args.report, report, markdown(report))
    _emit(args, "\n".join([*_task_lines(report), f"reports: {', '.join(map(str, paths))}"]), report)
    return 0


def _task_lines(report: dict) -> list[str]:
    """One line per task: the artifact's score, the reference's and the published one where there are."""
    lines = []
    for name, t in report["tasks"].items():
        ref_score = t.get("reference", {}).get(t["metric"])
        lines.append(f"{name}: {t['metric']} {t['artifact'].get(t['metric'], float('nan')):.2f}"
                     + (f" (reference {ref_score:.2f})" if ref_score is not None else "")
                     + (f", published {t['published']:.2f}" if t["published"] is not None else ""))
    return lines


def cmd_bench(args) -> int:
    if args.device == "adb":
        return _bench_device(args)
    from ..bench import run_bench
    from ..bench_report import chart, markdown

    for n in args.threads:
        O.threads(n, allow_default=False)
    results = run_bench(Path(args.artifact).resolve(), args)
    reports.write(args.report, results, markdown(results))
    chart(results, Path(f"{args.report}.png"))
    _emit(args, markdown(results), results)
    return 0


def _bench_device(args) -> int:
    from ..device_bench import device_bench, markdown

    if args.runner_dir is None:
        raise BonsaiError("--device adb needs --runner-dir: the folder of bonsai_runner built for the device and "
                          "its libraries (android_demo/README.md, section 8)")
    report = device_bench(Path(args.artifact), args.serial, Path(args.runner_dir), args.threads, args.prompt_tokens,
                          args.new_tokens, args.repeats)
    reports.write(args.report, report, markdown(report))
    _emit(args, markdown(report), report)
    return 0


def cmd_verify(args) -> int:
    from .. import artifact as A

    problems = A.verify(Path(args.artifact))
    files = A.read_manifest(Path(args.artifact), sealed=False).files  # an edited manifest is a FAIL line
    text = "\n".join(f"FAIL {p}" for p in problems) if problems else \
        f"{args.artifact}: OK ({len(files)} files match the manifest, format {A.FORMAT_VERSION})"
    _emit(args, text, {"artifact": str(args.artifact), "ok": not problems, "problems": problems})
    return 1 if problems else 0
