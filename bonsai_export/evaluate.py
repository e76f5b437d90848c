"""`bonsai-export eval`: lm-evaluation-harness tasks on an artifact (and on the float reference), through one adapter.

RunnerLM is an lm-eval `LM` over any of our runners (eager checkpoint, .pte, custom or stock .onnx), so lm-eval's own
task definitions (prompts, choices, metrics) run unchanged on the artifact. Text becomes tokens with the runner's own
tokenizer; every request starts with BOS, as Bonsai was trained. Contexts longer than the runner's max_seq_len are
left-truncated (counted in the report). lm-eval is an optional dependency: `pip install 'bonsai-export[eval]'`.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from pathlib import Path

from .errors import BonsaiError
from .runners import Runner
from .scoring import Scorer
from .tokenizer import Tokenizer

try:
    from lm_eval.api.model import LM
except ImportError:  # an optional extra: importing this module without it is a bad-input error (exit code 2)
    raise BonsaiError("lm-eval is not installed; pip install 'bonsai-export[eval]'") from None

LOCAL_TASKS = Path(__file__).resolve().parent / "eval_tasks"  # offline tasks shipped with the package
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until requests without max_gen_toks

# deepgrove/Bonsai's model card, in percent: (metric compared, score). lm-eval for all but MMLU, which Bonsai scored
# with lighteval's cloze formulation; mmlu_continuation is lm-eval's cloze form (size-weighted over the subjects).
PUBLISHED = {"arc_challenge": ("acc_norm", 33.36), "arc_easy": ("acc_norm", 57.95), "hellaswag": ("acc_norm", 48.04),
             "openbookqa": ("acc_norm", 34.00), "piqa": ("acc_norm", 70.24), "winogrande": ("acc", 54.85),
             "mmlu_continuation": ("acc_norm", 30.28)}
METRICS = ("acc", "acc_norm")

log = logging.getLogger(__name__)


def split_pair(tokenizer: Tokenizer, bos_id: int, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's HF model splits them: spaces at the end of the context
    move to the continuation, context + continuation is encoded as one string (SentencePiece merges across the
    boundary), and the continuation is what follows the context's own token count."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:  # nothing to condition on but BOS
        return [bos_id], tokenizer.encode(continuation, specials=False)
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return whole[:n_context], whole[n_context:]


def _stop_check(until: list[str]):
    return lambda text: any(s in text for s in until)


def _cut_at_stop(text: str, until: list[str]) -> str:
    for s in until:
        if s:
            text = text.split(s, 1)[0]
    return text


class RunnerLM(LM):
    """lm-eval's LM interface over a runner (batch 1; requests sharing a context share its KV cache)."""

    def __init__(self, runner: Runner, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.runner, self.scorer = runner, Scorer(runner)
        self.tokenizer = tokenizer or Tokenizer(runner.tokenizer_dir)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [split_pair(self.tokenizer, self.runner.bos_id, *r.args) for r in requests]
        return self.scorer.loglikelihoods(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [self.scorer.rolling_loglikelihood(self.tokenizer.encode(r.args[0]))
                for r in requests]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate(context, dict(kwargs or {})) for context, kwargs in (r.args for r in requests)]

    def _generate(self, context: str, kwargs: dict) -> str:
        """Greedy (sampling options are ignored: evaluations compare deterministic outputs)."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        max_new = max(1, min(max_new, self.runner.max_seq_len - 1))
        prompt = self.tokenizer.encode(context)
        if len(prompt) > self.runner.max_seq_len - max_new:  # keep the end of the prompt, room for max_new
            prompt = prompt[-(self.runner.max_seq_len - max_new):]
            self.scorer.stats.truncated += 1
        ids = self.scorer.greedy_until(prompt, max_new, _stop_check(until), self.tokenizer.decode)
        return _cut_at_stop(self.tokenizer.decode(ids), until)


@functools.lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...]):
    """lm-eval's task index over its own tasks, ours and `include` (indexing takes ~10 s: built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(LOCAL_TASKS), *include])


def run_tasks(lm: RunnerLM, tasks: list[str], *, limit: int | None, include: list[Path] = ()) -> dict:
    """lm-eval's simple_evaluate on `lm`: its results dict (with per-item samples)."""
    from lm_eval import simple_evaluate

    manager = _task_manager(tuple(map(str, include)))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BonsaiError(f"--tasks: unknown lm-eval task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists them "
                          f"(local task folders: --include-path DIR)")
    try:
        return simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager, log_samples=True,
                               bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    except (ConnectionError, OSError) as exc:
        raise BonsaiError(f"task data could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); lm-eval "
                          f"downloads it from the Hugging Face hub: run with network or a filled HF_DATASETS_CACHE"
                          ) from None


def _leaves(results: dict, name: str) -> list[str]:
    """The leaf tasks of a task or group name."""
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaves(results, child)]


def task_scores(results: dict, name: str) -> dict:
    """acc and acc_norm in percent (a group: weighted by the number of items of each leaf task) and the item count."""
    leaves = _leaves(results, name)
    sizes = {t: results["n-samples"][t]["effective"] for t in leaves}
    total = sum(sizes.values())
    scores = {"items": total}
    for metric in METRICS:
        values = [(results["results"][t].get(f"{metric},none"), sizes[t]) for t in leaves]
        if total and all(v is not None for v, _ in values):
            scores[metric] = 100 * sum(v * n for v, n in values) / total
    return scores


def compare_items(art: dict, ref: dict, name: str) -> dict:
    """Per-item agreement of two runs: max |delta loglikelihood| over every choice, and how often the argmax
    choice (the acc prediction) is the same."""
    deltas, same, count = [], 0, 0
    for leaf in _leaves(art, name):
        ref_docs = {s["doc_id"]: s for s in ref["samples"][leaf]}
        for s in art["samples"][leaf]:
            if not all(isinstance(r, (tuple, list)) for r in s["filtered_resps"]):  # not (loglikelihood, greedy)
                continue
            a = [r[0] for r in s["filtered_resps"]]
            b = [r[0] for r in ref_docs[s["doc_id"]]["filtered_resps"]]
            deltas += [abs(x - y) for x, y in zip(a, b)]
            same += a.index(max(a)) == b.index(max(b))
            count += 1
    if not count:
        return {}
    return {"max_abs_delta_loglikelihood": max(deltas), "argmax_agreement": same / count}


def evaluate(artifact: Runner, reference: Runner | None, tasks: list[str], *, limit: int | None,
             include: list[Path] = ()) -> dict:
    """Run the tasks on the artifact (and the reference): scores, published numbers, per-item agreement, timing."""
    runs = {"artifact": RunnerLM(artifact)}
    if reference is not None:
        runs["reference"] = RunnerLM(reference)
    results = {}
    for role, lm in runs.items():
        log.info("evaluating the %s (%s) on %s", role, lm.runner.name, ", ".join(tasks))
        results[role] = run_tasks(lm, tasks, limit=limit, include=include)
    report = {"tasks": {}, "limit": limit, "lm_eval_version": metadata.version("lm-eval"),
              "timing": {role: lm.scorer.stats.as_dict() for role, lm in runs.items()}}
    for name in tasks:
        metric, published = PUBLISHED.get(name, ("acc", None))
        entry = {"metric": metric, "published": published}
        for role in runs:
            entry[role] = task_scores(results[role], name)
        if reference is not None:
            entry["agreement"] = compare_items(results["artifact"], results["reference"], name)
        report["tasks"][name] = entry
    return report


def _cell(scores: dict | None, metric: str) -> str:
    return "-" if not scores or scores.get(metric) is None else f"{scores[metric]:.2f}"


def _task_row(name: str, t: dict, has_ref: bool) -> str:
    agree, metric = t.get("agreement") or {}, t["metric"]
    cells = [name, metric, str(t["artifact"]["items"]), _cell(t["artifact"], metric),
             _cell(t.get("reference"), metric) if has_ref else "-",
             "-" if t["published"] is None else f"{t['published']:.2f}",
             f"{100 * agree['argmax_agreement']:.1f}%" if agree else "-",
             f"{agree['max_abs_delta_loglikelihood']:.3g}" if agree else "-"]
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict) -> str:
    has_ref = report.get("reference") is not None
    lines = [f"# lm-eval on `{report['artifact']}` ({report['backend']})", "",
             f"lm-eval {report['lm_eval_version']}; limit per task: {report['limit'] or 'none (full tasks)'}; "
             f"reference: {report.get('reference') or 'not run (--reference)'}. Scores in percent.", "",
             "| task | metric | items | artifact | reference | published (Bonsai) | same argmax | max \\|Δ loglik\\| |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in report["tasks"].items():
        lines.append(_task_row(name, t, has_ref))
    lines += ["", "| run | requests | forward calls | tokens | truncated | seconds | requests/s |", "|---|---|---|---|---|---|---|"]
    for role, s in report["timing"].items():
        lines.append(f"| {role} | {s['requests']} | {s['forward_calls']} | {s['tokens']} | {s['truncated_requests']} | "
                     f"{s['seconds']:.1f} | {s['requests_per_s']:.2f} |")
    return "\n".join(lines) + "\n"

