"""Token-level scoring over any runner: continuation loglikelihoods with KV-cache reuse, rolling loglikelihoods of
long texts, and greedy generation up to stop strings. The lm-eval adapter (evaluate.py) turns text into these.

Cache reuse: requests that share a context are scored as one group. The context runs once from position 0; each
continuation then runs from position len(context). Every runner keeps a static KV cache whose attention reads only
positions [0, input_pos + T), so a continuation overwrites the previous one's cache entries before anything reads
them (tests/test_eval.py checks the result against scoring each context + continuation from scratch).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .generate import SamplingConfig, generate
from .runners import Runner, positions


@dataclass
class Stats:
    """What the runner was asked to do, for throughput figures."""

    requests: int = 0
    forward_calls: int = 0
    tokens: int = 0  # tokens run through the model
    truncated: int = 0  # requests whose context was left-truncated to fit max_seq_len
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return {"requests": self.requests, "forward_calls": self.forward_calls, "tokens": self.tokens,
                "truncated_requests": self.truncated, "seconds": round(self.seconds, 3),
                "requests_per_s": round(rate, 3)}


@dataclass
class Scorer:
    runner: Runner
    stats: Stats = field(default_factory=Stats)

    def forward(self, tokens: list[int], pos: int) -> torch.Tensor:
        """log-softmax of the logits of `tokens` placed at positions pos.. : [T, vocab] float64."""
        logits = self._counted(torch.tensor([tokens], dtype=torch.long), positions(pos, len(tokens)))
        return torch.log_softmax(logits[0].double(), dim=-1)

    def _counted(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The runner's call, counted in the stats."""
        self.stats.forward_calls += 1
        self.stats.tokens += tokens.shape[1]
        return self.runner(tokens, input_pos)

    def loglikelihoods(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy path) for (context, continuation)
        token lists; contexts must be non-empty (start them with BOS)."""
        start, out = time.perf_counter(), [None] * len(pairs)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for i, (context, continuation) in enumerate(pairs):
            context, continuation = self.fit(context, continuation)
            groups[tuple(context)].append((i, continuation))
        for context, members in groups.items():
            for i, result in zip((i for i, _ in members), self.score_group(list(context), [c for _, c in members])):
                out[i] = result
        self.stats.requests += len(pairs)
        self.stats.seconds += time.perf_counter() - start
        return out

    def fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Left-truncate so that context + continuation[:-1] (what the model reads) fits max_seq_len. The oldest
        context tokens go first (BOS included); a continuation longer than the window keeps its last tokens."""
        limit = self.runner.max_seq_len
        if len(context) + len(continuation) - 1 <= limit:
            return context, continuation
        self.stats.truncated += 1
        kept = (context + continuation)[-(limit + 1):]
        n_cont = min(len(continuation), limit)
        return kept[:-n_cont], kept[-n_cont:]

    def score_group(self, context: list[int], continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """The context once, then each continuation from position len(context) over the same cache."""
        self.runner.reset()
        first = self.forward(context, 0)[-1]  # predicts every continuation's first token
        results = []
        for cont in continuations:
            rows = first[None] if len(cont) == 1 else torch.cat([first[None], self.forward(cont[:-1], len(context))])
            target = torch.tensor(cont)
            logp = rows.gather(1, target[:, None]).sum().item()
            results.append((logp, bool((rows.argmax(-1) == target).all())))
        return results

    def rolling_loglikelihood(self, ids: list[int]) -> float:
        """sum log p(ids[i] | ids[:i]) for i >= 1, in windows of max_seq_len targets. Each window after the first
        re-reads up to max_seq_len earlier tokens, so every prediction sees as much context as fits."""
        start, limit, total = time.perf_counter(), self.runner.max_seq_len, 0.0
        for first in range(1, len(ids), limit):
            end = min(len(ids), first + limit)  # targets ids[first:end], predicted from the inputs before each
            begin = max(0, end - 1 - limit)
            self.runner.reset()
            logp = self.forward(ids[begin:end - 1], 0)[-(end - first):]
            total += logp.gather(1, torch.tensor(ids[first:end])[:, None]).sum().item()
        self.stats.requests += 1
        self.stats.seconds += time.perf_counter() - start
        return total

    def greedy_until(self, prompt: list[int], max_new: int, stop, decode) -> list[int]:
        """Greedy tokens after `prompt` until EOS, max_new tokens, the end of the cache, or `stop(decode(ids))`
        says a stop string appeared (decoding the whole continuation: a stop string may span tokens)."""
        start = time.perf_counter()
        self.runner.reset()
        out = generate(self._counted, prompt, SamplingConfig(max_new_tokens=max_new), self.runner.eos_ids,
                       self.runner.max_seq_len, stop=lambda ids: stop(decode(ids))).tokens
        self.stats.requests += 1
        self.stats.seconds += time.perf_counter() - start
        return out
