"""Parity against transformers' own model along its greedy path, shared by the model-family tests."""

from __future__ import annotations

import torch

from bonsai_export.runners import positions


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens of transformers' generate, EOS not stopping them."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long), eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def decode_errors(runner, hf, ids: list[int], n: int) -> list[float]:
    """Prefill (every position's logits), then n single-token steps along transformers' greedy path (teacher
    forcing): max |delta logits| against transformers' full forward at each step."""
    runner.reset()
    path = ids + hf_greedy(hf, ids, n)
    with torch.no_grad():
        want = hf(torch.tensor([path])).logits
    errors = [float((runner(torch.tensor([ids]), positions(0, len(ids))) - want[:, :len(ids)]).abs().max())]
    for pos in range(len(ids), len(path)):
        got = runner(torch.tensor([[path[pos]]]), positions(pos, 1))
        errors.append(float((got[0, -1] - want[0, pos]).abs().max()))
    assert float(want.abs().max()) > 1  # not a degenerate comparison
    return errors
