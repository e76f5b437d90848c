"""The `bonsai-export` command line: each subcommand parses, builds a config, and calls one function.

This module holds the parser: the global options, one function per subcommand adding its options (defaults from
the config dataclasses), and the argument checks argparse runs. Nothing here imports torch: --help and argument
errors are answered in a fraction of a second.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .. import __version__, bench_kernels
from .. import options as O
from ..artifact import (ARTIFACT_FORMATS, EMBEDDINGS, GGUF_DENSE, GGUF_FALLBACKS, GGUF_TERNARY, HEAD_ACT_QUANTS,
                        HEADS, KV_CACHES, TERNARY_OPS, ExportConfig)
from ..config import PRESETS
from ..errors import BonsaiError
from ..formats import ACT_MODES
from ..gates import TEXT_GATES, Gates
from . import commands as C

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
    "chat": 'bonsai-export chat ckpt/ternary-bonsai --system "Be brief." --no-think\n'
            '  printf "Hi\\nAnd then?\\n" | bonsai-export --json chat out/ternary-bonsai',
    "bench-kernels": "bonsai-export bench-kernels --quick --json-out kernels.json",
    "eval": "bonsai-export eval out/bonsai --reference deepgrove/Bonsai --report out/bonsai-eval\n"
            "  bonsai-export eval out/tiny --tasks bonsai_qa --limit 20        (the offline task shipped with us)",
}


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


def _make_checkpoint_options(p) -> None:
    p.add_argument("--preset", required=True, choices=list(PRESETS),
                   help="tiny / bonsai-500m: random latent weights; trained-tiny: trained on CPU (minutes); "
                        "trained-small: trained on a GPU, unpacked from the weights shipped with the package (seconds)")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--seed", type=_arg(O.seed), default=0)
    p.add_argument("--retrain", action="store_true",
                   help="trained-small: train it again instead of unpacking the shipped weights (CUDA when "
                        "available: about 7 minutes on one H200; CPU: many hours)")


def _info_options(p) -> None:
    _add_model(p)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (as the global --json)")


# ExportConfig's fields with a fixed set of values: their choices and help (the defaults are ExportConfig's)
EXPORT_CHOICES = {
    "format": (ARTIFACT_FORMATS, "all = pte + onnx; gguf (llama.cpp: TQ2_0 ternary layers) is asked for by name, "
                                 "since its blocks need every ternary K to be a multiple of 256"),
    "act_quant": (ACT_MODES, "int8: per-token absmax int8 activations; none: float activations (exact Bonsai)"),
    "embedding": (EMBEDDINGS, "token table: bf16 (the checkpoint's, lossless; default) or int8 (8.5 bits/weight)"),
    "head": (HEADS, "output head: bf16 (lossless; default), int8 (8.5 bits/weight: ~1.25x decode, top-1 -0.2 to "
                    "-0.5 points) or int4 (5 bits: perplexity +0.8%%); README, Heads and embedding"),
    "head_act_quant": (HEAD_ACT_QUANTS, "int8 / int4 head's activations: none (float; default) or int8 (one scale "
                                        "per 32, exact integer sums, as llama.cpp's Q8_0 / Q4_0: faster decode)"),
    "ternary_op": (TERNARY_OPS, "ONNX: custom = bonsai::TernaryMatMul (our op library, copied into the folder); "
                                "stock = com.microsoft MatMulNBits bits=2 (unmodified ONNX Runtime)"),
    "kv_cache": (KV_CACHES, ".pte and custom-op .onnx: KV cache of f32 (default) or f16 (half the cache memory "
                            "and the bytes decode reads from it; each cached value rounded to fp16)"),
    "gguf_ternary": (GGUF_TERNARY, "GGUF: ternary layers as TQ2_0 (2.06 bits/weight, default) or TQ1_0 (1.69 bits, "
                                   "slower in llama.cpp); per-channel scales folded in, exact up to fp16 rounding of "
                                   "the scale"),
    "gguf_head": (GGUF_DENSE, "GGUF: output head as f16 (the bf16 values, exact down to 2**-14; default), bf16 "
                              "(bit-exact), q8_0 or q4_0 (llama.cpp's absmax quantizers), or tq2_0 for a "
                              "group-ternary table (Ternary-Bonsai; with --gguf-regroup where its groups differ)"),
    "gguf_embedding": (GGUF_DENSE, "GGUF: token table, same types as --gguf-head (default f16)"),
    "gguf_fallback": (GGUF_FALLBACKS, "GGUF: a ternary tensor whose K is not a multiple of 256 is refused (none, "
                                      "default), or stored as f16 (exact, 16 bits/weight) or q8_0 (8.5 bits), each "
                                      "listed on one line"),
}


# ExportConfig's boolean fields: a flag each (off by default)
EXPORT_FLAGS = {
    "gguf_regroup": "GGUF: write Ternary-Bonsai's t2g (a scale per 128 weights) as TQ2_0 / TQ1_0 (a scale per 256) "
                    "even where a block's two groups differ: each block takes the larger scale, its trits re-rounded "
                    "(lossy, error in the manifest; for speed comparisons)",
    "gguf_speed_only": "GGUF: write a model whose MLP llama.cpp does not compute (BitNet 2B4T's relu^2; llama.cpp "
                       "uses SiLU): it runs at the model's speed but computes another function (manifest: faithful "
                       "false)",
}


def _export_options(p) -> None:
    _add_model(p)
    p.add_argument("-o", "--output", required=True, help="artifact folder to write")
    p.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the model's limit)")
    for field, (choices, help_) in EXPORT_CHOICES.items():
        p.add_argument(f"--{field.replace('_', '-')}", choices=list(choices), default=getattr(ExportConfig, field),
                       help=help_)
    for field, help_ in EXPORT_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", action="store_true", help=help_)
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")


def _run_options(p, chat: bool = False) -> None:
    p.add_argument("model", nargs="?",
                   help="artifact folder, hub id or checkpoint folder; default: the embedded tiny checkpoint")
    if not chat:
        p.add_argument("--prompt", required=True, type=_arg(_utf8, "--prompt"))
        p.add_argument("--chat", action="store_true", help="one chat turn: --prompt is the user's message (see chat)")
    p.add_argument("--system", type=_arg(_utf8, "--system"), help="chat: the system message")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="chat: the template's enable_thinking switch (default: the template's own; Qwen3 thinks)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=_arg(O.seed), default=0)
    p.add_argument("--act-quant", choices=list(ACT_MODES), default=None,
                   help="checkpoints only (artifacts fix it at export): none = float activations, int8; default: "
                        "the mode the checkpoint's own model computes (int8 for BitNet formats, else none)")
    p.add_argument("--max-seq-len", type=int, default=None, help="checkpoints only: KV cache length")
    p.add_argument("--threads", type=_arg(O.threads), default=0,
                   help="artifacts: runtime threads (0 = the runtime's default)")
    p.add_argument("--backend", choices=["pte", "onnx"], help="which artifact of a --format all folder")


def _validate_options(p) -> None:
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


def _bench_options(p) -> None:
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


def _eval_options(p) -> None:
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


def _verify_options(p) -> None:
    p.add_argument("artifact", help="artifact folder written by `bonsai-export export`")


# name, handler, its options, its help line
SUBCOMMANDS = (
    ("make-checkpoint", C.cmd_make_checkpoint, _make_checkpoint_options,
     "write a deterministic synthetic checkpoint in Bonsai's format"),
    ("info", C.cmd_info, _info_options,
     "print a checkpoint's format, shape, parameter counts, sparsity and artifact sizes"),
    ("export", C.cmd_export, _export_options,
     "export a checkpoint to an ExecuTorch (.pte) and/or ONNX artifact folder, or a "
     "GGUF file for llama.cpp"),
    ("run", C.cmd_run, _run_options,
     "generate text from a checkpoint (eager PyTorch) or an artifact folder (streams tokens)"),
    ("validate", C.cmd_validate, _validate_options,
     "check an artifact against the fp32 reference: logits, KL, top-1, greedy "
     "tokens, perplexity; exits 1 when a gate fails"),
    ("bench", C.cmd_bench, _bench_options,
     "measure prefill/decode speed, TTFT, load time, peak RSS and bandwidth share of an "
     "artifact, beside llama.cpp, stock MatMulNBits, the bf16 eager reference and an XNNPACK 8da4w .pte"),
    ("eval", C.cmd_eval, _eval_options,
     "score an artifact on lm-evaluation-harness tasks, beside the float reference and "
     "Bonsai's published numbers (needs lm-eval: pip install 'bonsai-export[eval]')"),
    ("chat", C.cmd_chat, lambda p: _run_options(p, chat=True),
     "talk with a model through its chat template: one message a line on stdin, the KV cache kept across turns, "
     "/reset starts over, end of input ends; a turn the context cannot hold is refused (one line naming the tokens "
     "it needs and the context length) and the conversation kept"),
    ("verify", C.cmd_verify, _verify_options,
     "check an artifact folder against its manifest: format version, every file's "
     "size and sha256, unlisted files; exits 1 on any difference"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bonsai-export", description=__doc__.split("\n\n")[0])
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, add_options, help_ in SUBCOMMANDS:
        add_options(_subcommand(sub, name, handler, help_, EXAMPLES[name]))
    p = _subcommand(sub, "bench-kernels", bench_kernels.run,
                    "benchmark the packed-ternary kernels against ONNX Runtime", EXAMPLES["bench-kernels"])
    bench_kernels.add_arguments(p)
    return parser


def _global_options(parser) -> None:
    parser.add_argument("--version", action="version", version=f"bonsai-export {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or timing lines")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings and log lines (otherwise kept in the log file "
                             "$BONSAI_EXPORT_CACHE/last.log)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (errors too); implies --quiet")


def _subcommand(sub, name: str, handler, help_: str, example: str):
    p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=handler)
    return p
