"""validate's quality gates: the thresholds that turn its figures into a verdict, with their defaults.

Apart from validate.py because the CLI takes its option defaults from here, and the CLI must build its parser
without importing torch (validate.py needs it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BonsaiError

TEXT_GATES = ("exact", "always", "never")  # when the greedy text must equal transformers' (Gates.require_text)


@dataclass(frozen=True)
class Gates:
    min_top1: float = 0.98  # top-1 agreement over the held-out text positions
    max_ppl_increase: float = 0.02  # artifact perplexity / reference perplexity - 1
    max_mean_kl: float = 0.05  # mean KL(reference || artifact) over the held-out text positions, nats
    require_greedy: bool = False  # greedy continuations must be identical over all decode steps
    require_prompt_ids: bool = True  # the artifact's tokenizer gives the prompt transformers' ids
    require_text: str = "exact"  # greedy text = transformers' greedy text: for exact artifacts, always or never

    def __post_init__(self):
        if self.require_text not in TEXT_GATES:
            raise BonsaiError(f"--require-text: expected one of {', '.join(TEXT_GATES)}, got {self.require_text!r}")
