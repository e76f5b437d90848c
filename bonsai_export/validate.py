"""`bonsai-export validate`: does an artifact compute what the float reference computes?

The reference is the source checkpoint run in fp32 by the eager model with float activations and the dense
embedding and head (exact Bonsai). Both see the same inputs:
- decode: a greedy continuation of a prompt by the reference, fed token by token to both (teacher forcing), gives
  per-step max / mean |delta logits|, KL(reference || artifact) and top-1 agreement; the artifact's own greedy
  continuation gives greedy-token identity;
- text: windows of a held-out text (the standard library's `pydoc_data.topics` by default) give the perplexity of
  both, and KL and top-1 agreement over every position;
- generation: text in, greedy text out, against an independent reference (reference.py): the prompt tokenized by
  transformers' AutoTokenizer of the checkpoint and continued by transformers' greedy `generate` on its own Llama
  with the ternary scales folded into fp32 weights, beside the same prompt tokenized by the artifact's own
  tokenizer and continued greedily by the artifact's runner (what `bonsai-export run` prints). Reported: whether
  the prompt ids are equal, whether the generated ids are equal, the first differing position, both texts.
Gates (with defaults, each a flag) turn the figures into a verdict: a failure exits with code 1 and says why.

The generation gates: the prompt ids must always be equal (tokenizing is exact: a difference is a wrong tokenizer
file or reader). The greedy text must be equal (`require_text="exact"`) only for an artifact that computes the
reference's own math up to float rounding: float activations, bf16 embedding and head, our ternary op (stock
ONNX's MatMulNBits quantizes activations in blocks of 64). Any quantization legitimately changes greedy tokens: on
the tiny random-weight checkpoint, 64 greedy tokens from 3 prompts first differ at new token 1-35 with an int8
head, 1-7 with int4, 1-55 with an int8 embedding, 1-12 with int8 activations, 14-53 through MatMulNBits, where the
exact .pte and .onnx give all 64 identical; so no shorter horizon would hold for them either.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from .artifact import ExportConfig
from .errors import BonsaiError
from .gates import Gates
from .generate import SamplingConfig, generate, greedy
from .runners import Runner, positions
from .tokenizer import Tokenizer


def is_exact(options: ExportConfig, backend: str) -> bool:
    """Whether an artifact computes the float reference's math up to float rounding (its export options and the
    runner's name): float activations, bf16 embedding and head, and not MatMulNBits (stock ONNX)."""
    return options.exact and backend != "onnx-stock"


def held_out_text(path: str | Path | None) -> str:
    if path is None:
        import pydoc_data.topics

        return "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BonsaiError(f"--text {path}: cannot read it as UTF-8 ({exc})") from None


def _compare(ref_logits: torch.Tensor, art_logits: torch.Tensor) -> dict:
    """Per-position statistics of two [P, V] logit matrices."""
    delta = (art_logits - ref_logits).abs()
    logp_ref, logp_art = torch.log_softmax(ref_logits.double(), -1), torch.log_softmax(art_logits.double(), -1)
    kl = (logp_ref.exp() * (logp_ref - logp_art)).sum(-1)
    return {"max_abs": delta.amax(-1), "mean_abs": delta.mean(-1), "kl": kl,
            "top1": (ref_logits.argmax(-1) == art_logits.argmax(-1)).double()}


def decode_check(ref: Runner, art: Runner, prompt: list[int], steps: int) -> dict:
    """Teacher-forced per-step comparison on the reference's greedy path, and greedy identity."""
    ref.reset(), art.reset()
    tokens, pos, ref_steps, art_steps, path = torch.tensor([prompt]), 0, [], [], []
    for _ in range(steps):
        r, a = ref(tokens, torch.tensor([pos]))[0, -1], art(tokens, torch.tensor([pos]))[0, -1]
        ref_steps.append(r), art_steps.append(a)
        pos += tokens.shape[1]
        path.append(int(r.argmax()))
        tokens = torch.tensor([[path[-1]]])
    stats = _compare(torch.stack(ref_steps), torch.stack(art_steps))
    own = greedy(art, prompt, steps)
    first_diff = first_difference(path, own)
    return {"steps": steps, "per_step_max_abs": stats["max_abs"].tolist(),
            "per_step_mean_abs": stats["mean_abs"].tolist(), "per_step_kl": stats["kl"].tolist(),
            "top1_agreement": float(stats["top1"].mean()), "greedy_identical": first_diff is None,
            "greedy_first_difference": first_diff, "reference_tokens": path, "artifact_tokens": own}


def first_difference(a: list, b: list) -> int | None:
    """The first index where two sequences differ (a shorter one differs where it ends); None when equal."""
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return None if i == len(a) == len(b) else i


def generation_check(art: Runner, lm, prompt: str, max_new_tokens: int, exact: bool) -> dict:
    """transformers' tokenizer and greedy `generate` on the folded model (`lm`, a reference.ReferenceLM) against
    the artifact's own tokenizer and its runner's greedy continuation, which stops at EOS as `run` does."""
    tok = Tokenizer(art.tokenizer_dir)
    ref_prompt, art_prompt = lm.encode(prompt), tok.encode(prompt)
    if max(len(ref_prompt), len(art_prompt)) + max_new_tokens > art.max_seq_len:
        raise BonsaiError(f"--max-new-tokens {max_new_tokens}: prompt + new tokens exceed the artifact's max_seq_len "
                          f"{art.max_seq_len}")
    ref_ids = lm.greedy(ref_prompt, max_new_tokens)
    art.reset()
    cfg = SamplingConfig(max_new_tokens=max_new_tokens)  # temperature 0, as `run` defaults to
    art_ids = generate(art, art_prompt, cfg, art.eos_ids, art.max_seq_len).tokens
    ref_text, art_text = lm.decode(ref_ids), tok.decode(art_ids)
    return {"prompt": prompt, "max_new_tokens": max_new_tokens, "exact_artifact": exact,
            "prompt_ids_reference": ref_prompt, "prompt_ids_artifact": art_prompt,
            "prompt_ids_equal": ref_prompt == art_prompt,
            "prompt_ids_first_difference": first_difference(ref_prompt, art_prompt),
            "tokens_reference": ref_ids, "tokens_artifact": art_ids, "tokens_equal": ref_ids == art_ids,
            "first_difference": first_difference(ref_ids, art_ids),
            "text_reference": ref_text, "text_artifact": art_text, "text_equal": ref_text == art_text}


def text_check(ref: Runner, art: Runner, ids: list[int], window: int, max_tokens: int) -> dict:
    """Perplexity of both, KL and top-1 agreement over non-overlapping windows of the text."""
    ids = ids[: max_tokens + 1]
    nll = {"reference": 0.0, "artifact": 0.0}
    stats, count = [], 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        inputs, targets = torch.tensor([chunk[:-1]]), torch.tensor(chunk[1:])
        ref.reset(), art.reset()
        every = positions(0, inputs.shape[1])
        r, a = ref(inputs, every)[0], art(inputs, every)[0]
        for name, logits in (("reference", r), ("artifact", a)):
            nll[name] += float(torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum"))
        stats.append(_compare(r, a))
        count += targets.numel()
    merged = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
    return {"tokens": count, "window": window,
            "perplexity_reference": math.exp(nll["reference"] / count),
            "perplexity_artifact": math.exp(nll["artifact"] / count),
            "top1_agreement": float(merged["top1"].mean()), "mean_kl": float(merged["kl"].mean()),
            "max_abs": float(merged["max_abs"].max()), "mean_abs": float(merged["mean_abs"].mean())}


def verdict(report: dict, gates: Gates) -> list[str]:
    """The reasons the artifact fails its gates (empty: it passes)."""
    text, dec, failures = report["text"], report["decode"], []
    increase = text["perplexity_artifact"] / text["perplexity_reference"] - 1
    if text["top1_agreement"] < gates.min_top1:
        failures.append(f"top-1 agreement {text['top1_agreement']:.4f} < {gates.min_top1} (--min-top1)")
    if increase > gates.max_ppl_increase:
        failures.append(f"perplexity {text['perplexity_artifact']:.3f} is {100 * increase:.2f}% above the "
                        f"reference's {text['perplexity_reference']:.3f} (> {100 * gates.max_ppl_increase:g}%, "
                        f"--max-ppl-increase)")
    if text["mean_kl"] > gates.max_mean_kl:
        failures.append(f"mean KL {text['mean_kl']:.4g} > {gates.max_mean_kl} (--max-mean-kl)")
    if gates.require_greedy and not dec["greedy_identical"]:
        failures.append(f"greedy tokens differ from step {dec['greedy_first_difference']} (--require-greedy)")
    if "generation" in report:
        failures += _generation_failures(report["generation"], gates)
    return failures


def summary(report: dict, gates: Gates) -> str:
    """The checks as a plain-text table for the terminal: what was measured, the gate, and whether it held."""
    t, d, g = report["text"], report["decode"], report.get("generation")
    increase = t["perplexity_artifact"] / t["perplexity_reference"] - 1

    def mark(ok: bool | None) -> str:
        return "-" if ok is None else "ok" if ok else "FAIL"

    rows = [("perplexity, reference / artifact", f"{t['perplexity_reference']:.3f} / {t['perplexity_artifact']:.3f}"
             f" ({100 * increase:+.2f}%)", f"<= +{100 * gates.max_ppl_increase:g}%",
             mark(increase <= gates.max_ppl_increase)),
            (f"top-1 agreement, {t['tokens']} text tokens", f"{100 * t['top1_agreement']:.2f}%",
             f">= {100 * gates.min_top1:g}%", mark(t["top1_agreement"] >= gates.min_top1)),
            ("mean KL, nats", f"{t['mean_kl']:.3g}", f"<= {gates.max_mean_kl:g}", mark(t["mean_kl"] <= gates.max_mean_kl)),
            (f"greedy tokens identical, {d['steps']} decode steps", "yes" if d["greedy_identical"] else
             f"no (from step {d['greedy_first_difference']})", "required" if gates.require_greedy else "reported",
             mark(d["greedy_identical"] if gates.require_greedy else None))]
    if g is not None:
        text_gated = gates.require_text == "always" or (gates.require_text == "exact" and g["exact_artifact"])
        rows += [("prompt ids = transformers'", "yes" if g["prompt_ids_equal"] else "no",
                  "required" if gates.require_prompt_ids else "reported",
                  mark(g["prompt_ids_equal"] if gates.require_prompt_ids else None)),
                 (f"greedy text = transformers', {g['max_new_tokens']} tokens",
                  "yes" if g["tokens_equal"] and g["text_equal"] else f"no (from token {g['first_difference']})",
                  "required" if text_gated else "reported",
                  mark(g["tokens_equal"] and g["text_equal"] if text_gated else None))]
    header = ("check", "value", "gate", "")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows)]
    lines.append(f"verdict: {'PASS' if not report['failures'] else 'FAIL'}")
    return "\n".join(lines)


def _generation_failures(gen: dict, gates: Gates) -> list[str]:
    failures = []
    if gates.require_prompt_ids and not gen["prompt_ids_equal"]:
        i = gen["prompt_ids_first_difference"]
        failures.append(f"the artifact's tokenizer gives the prompt other ids than transformers' AutoTokenizer from "
                        f"position {i}: {gen['prompt_ids_artifact'][i:i + 4]} vs {gen['prompt_ids_reference'][i:i + 4]}"
                        f" (--require-prompt-ids)")
    gated = gates.require_text == "always" or (gates.require_text == "exact" and gen["exact_artifact"])
    if gated and not (gen["tokens_equal"] and gen["text_equal"]):
        where = (f"from new token {gen['first_difference']}" if not gen["tokens_equal"]
                 else "with the same ids (the detokenizers differ)")
        failures.append(f"greedy text differs from transformers' greedy text {where}: artifact "
                        f"{gen['text_artifact'][:80]!r} vs {gen['text_reference'][:80]!r} "
                        f"(--require-text {gates.require_text})")
    return failures


def markdown(report: dict) -> str:
    t, d = report["text"], report["decode"]
    lines = [f"# Validation of `{report['artifact']}` ({report['backend']})", "",
             f"Reference: `{report['reference']}` (fp32, float activations).", "",
             "| check | reference | artifact |", "|---|---|---|",
             f"| perplexity on {t['tokens']} held-out tokens | {t['perplexity_reference']:.3f} | "
             f"{t['perplexity_artifact']:.3f} |", "",
             "| metric | value |", "|---|---|",
             f"| top-1 agreement (text) | {t['top1_agreement']:.4f} |",
             f"| mean KL(reference \\|\\| artifact) (text) | {t['mean_kl']:.3g} |",
             f"| max / mean \\|delta logits\\| (text) | {t['max_abs']:.3g} / {t['mean_abs']:.3g} |",
             f"| top-1 agreement ({d['steps']} decode steps) | {d['top1_agreement']:.4f} |",
             f"| greedy tokens identical over {d['steps']} steps | {d['greedy_identical']} |",
             f"| max \\|delta logits\\| per decode step (max) | {max(d['per_step_max_abs']):.3g} |", "",
             *(_generation_markdown(report["generation"]) if "generation" in report else []),
             f"**Verdict: {'PASS' if not report['failures'] else 'FAIL'}**", ""]
    lines += [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    """A string or id list as one Markdown table cell: quoted, newlines escaped, pipes escaped."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else ", ".join(map(str, value)) or "-"
    return text.replace("|", "\\|")


def _generation_markdown(g: dict) -> list[str]:
    return [f"Greedy text: prompt {_cell(g['prompt'])}, up to {g['max_new_tokens']} new tokens; transformers' "
            f"AutoTokenizer and `generate` on its Llama with the scales folded into fp32 weights, beside the "
            f"artifact's tokenizer and runner.", "",
            "| | transformers | artifact |", "|---|---|---|",
            f"| prompt ids | {_cell(g['prompt_ids_reference'])} | {_cell(g['prompt_ids_artifact'])} |",
            f"| greedy ids | {_cell(g['tokens_reference'])} | {_cell(g['tokens_artifact'])} |",
            f"| greedy text | {_cell(g['text_reference'])} | {_cell(g['text_artifact'])} |", "",
            "| metric | value |", "|---|---|",
            f"| prompt ids identical | {g['prompt_ids_equal']} |",
            f"| greedy ids identical | {g['tokens_equal']} (first difference: {g['first_difference']}) |",
            f"| greedy text identical | {g['text_equal']} |",
            f"| exact artifact (text gated by `--require-text exact`) | {g['exact_artifact']} |", ""]


def validate(artifact: Runner, reference: Runner, tokenizer, *, text: str, prompt: str, steps: int,
             window: int, max_tokens: int, gates: Gates, lm=None, exact: bool = False,
             max_new_tokens: int = 32) -> dict:
    """Every check of the module docstring; `lm` (a reference.ReferenceLM) adds the generation check and its gates,
    `exact` says whether the artifact computes the reference's math (is_exact)."""
    prompt_ids = tokenizer.encode(prompt)
    window = min(window, artifact.max_seq_len, reference.max_seq_len)
    if len(prompt_ids) + steps > min(artifact.max_seq_len, reference.max_seq_len):
        raise BonsaiError(f"--steps {steps}: prompt + steps exceed the artifact's max_seq_len {artifact.max_seq_len}")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise BonsaiError("--text: fewer than 2 tokens")
    report = {"gates": asdict(gates), "decode": decode_check(reference, artifact, prompt_ids, steps),
              "text": text_check(reference, artifact, ids, window, max_tokens)}
    if lm is not None:
        report["generation"] = generation_check(artifact, lm, prompt, max_new_tokens, exact)
    report["failures"] = verdict(report, gates)
    return report

