"""Token generation over any runner that maps (tokens[1, T], input_pos[1]) -> the last position's logits [1, 1, V]
with its own KV cache (runners.py): the one decode loop, which `run`, validate, eval's scoring and bench use."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import BonsaiError


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    def __post_init__(self):
        if not math.isfinite(self.temperature):
            raise BonsaiError(f"--temperature: expected a finite number >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise BonsaiError(f"--max-new-tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise BonsaiError(f"--temperature: expected >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise BonsaiError(f"--top-k: expected >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise BonsaiError(f"--top-p: expected a value in (0, 1], got {self.top_p}")


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)  # generated ids (EOS excluded)
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0  # time for tokens 2..n (each one a single-token forward)
    stopped_at_eos: bool = False
    hit_max_seq_len: bool = False

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        steps = len(self.tokens) - 1 + self.stopped_at_eos
        return steps / self.decode_s if self.decode_s and steps > 0 else 0.0


def sample(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator) -> int:
    """Pick the next token from logits [V]: greedy at temperature 0, else top-k, then top-p (nucleus)."""
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < cfg.top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def generate(forward: Forward, prompt: list[int], cfg: SamplingConfig, eos_ids: tuple[int, ...],
             max_seq_len: int, on_token: Callable[[int], None] | None = None,
             stop: Callable[[list[int]], bool] | None = None) -> GenerationResult:
    """Prefill the prompt in one call, then decode one token per call until EOS, max_new_tokens, max_seq_len or
    `stop(tokens so far)` (checked after each token: a stop string may span tokens)."""
    if not prompt:
        raise BonsaiError("prompt: empty after tokenization")
    if len(prompt) >= max_seq_len:
        raise BonsaiError(f"prompt: {len(prompt)} tokens leave no room in max_seq_len={max_seq_len}; shorten the "
                          f"prompt, or use a larger --max-seq-len (artifacts: at export)")
    gen = torch.Generator().manual_seed(cfg.seed)
    res = GenerationResult(prompt_tokens=len(prompt))
    with torch.no_grad():
        start = time.perf_counter()
        logits = forward(torch.tensor([prompt]), torch.tensor([0]))[0, -1]
        res.prefill_s = time.perf_counter() - start
        pos, start = len(prompt), time.perf_counter()
        while True:
            token = sample(logits, cfg, gen)
            if token in eos_ids:
                res.stopped_at_eos = True
                break
            res.tokens.append(token)
            if on_token:
                on_token(token)
            if len(res.tokens) >= cfg.max_new_tokens or (stop is not None and stop(res.tokens)):
                break
            if pos >= max_seq_len:  # the cache is full: stop cleanly, the caller reports it
                res.hit_max_seq_len = True
                break
            logits = forward(torch.tensor([[token]]), torch.tensor([pos]))[0, -1]
            pos += 1
        res.decode_s = time.perf_counter() - start
    return res


def greedy(runner, prompt: list[int], n: int) -> list[int]:
    """n greedy (argmax) tokens after the prompt on a fresh cache, EOS not stopping them: the tokens compared
    across backends."""
    runner.reset()
    return generate(runner, prompt, SamplingConfig(max_new_tokens=n), eos_ids=(), max_seq_len=runner.max_seq_len).tokens
