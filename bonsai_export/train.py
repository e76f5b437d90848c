"""`make-checkpoint --preset trained-tiny`: a tiny Bonsai-format model trained on offline text, so that top-1
agreement and perplexity mean something.

Recipe (CPU, a few minutes, deterministic for a given seed and thread count):
- text: the docstrings of the Python standard library (modules, classes, functions; `pydoc_data` excluded, since
  its topics are the default held-out text of `validate`), tokenized with Bonsai's SentencePiece model;
- model: the `tiny` shape with QLinear's straight-through ternary layers (latent weight W, forward
  round(clamp(W, -1, 1)) * scales per output channel), everything else as in Llama; AdamW, cosine schedule;
- output: a folder in Bonsai's own format (latent bf16 weights + bf16 scales), read like any other checkpoint.
"""

from __future__ import annotations

import ast
import logging
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import PRESETS, ModelArgs, llama_config

log = logging.getLogger(__name__)

SEQ_LEN = 128
BATCH = 8
STEPS = 300
LR = 3e-3
LATENT_LR = 1e-2  # latent ternary weights must travel ~0.5 to change a trit


def stdlib_docstrings(min_chars: int = 80) -> list[str]:
    """Docstrings of the standard library, in a fixed order (sorted files, AST walk order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "pydoc_data", "idlelib", "lib2to3"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    docs.append(doc)
    return docs


class STELinear(nn.Module):
    """QLinear for training: forward (round(clamp(W, -1, 1)) x) * scales, straight-through gradient to W."""

    def __init__(self, in_features: int, out_features: int, gen: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(out_features, in_features, generator=gen) * 3 - 1.5)
        self.scales = nn.Parameter(torch.full((out_features,), 1 / math.sqrt(in_features * 2 / 3)))

    def forward(self, x):
        w = self.weight
        t = w + (torch.round(torch.clamp(w, -1, 1)) - w).detach()
        return F.linear(x, t) * self.scales


def build_student(args: ModelArgs, seed: int):
    """transformers' Llama with every q/k/v/o/gate/up/down projection replaced by an STELinear."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(args, attn_implementation="sdpa")).float()
    gen = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        for sub, (out, cols) in args.linear_shapes.items():
            parent, name = sub.split(".")
            setattr(getattr(layer, parent), name, STELinear(cols, out, gen))
    return model


def batches(tokens: torch.Tensor, steps: int, gen: torch.Generator):
    """Random windows of SEQ_LEN + 1 tokens from the token stream."""
    for _ in range(steps):
        starts = torch.randint(0, tokens.numel() - SEQ_LEN - 1, (BATCH,), generator=gen)
        yield torch.stack([tokens[s : s + SEQ_LEN + 1] for s in starts.tolist()])


def train(args: ModelArgs, token_ids: torch.Tensor, steps: int, seed: int):
    model = build_student(args, seed)
    latent = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    other = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    opt = torch.optim.AdamW([{"params": latent, "lr": LATENT_LR, "weight_decay": 0.0},
                             {"params": other, "lr": LR, "weight_decay": 0.01}], betas=(0.9, 0.95))
    base = [g["lr"] for g in opt.param_groups]
    gen, start = torch.Generator().manual_seed(seed), time.perf_counter()
    for step, batch in enumerate(batches(token_ids, steps, gen)):
        frac = step / max(steps - 1, 1)
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * frac))
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("train step %d/%d loss %.3f (%.0f s)", step + 1, steps, loss.item(), time.perf_counter() - start)
    return model


def train_tensors(seed: int = 0, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """Tokenize the corpus and train the trained-tiny model; returns Bonsai's checkpoint tensors (latent bf16
    weights + bf16 scales; the head is tied to the embedding)."""
    import sentencepiece as spm

    from .synthetic import mistral_v1_spm

    args = PRESETS["trained-tiny"]
    sp = spm.SentencePieceProcessor(model_file=str(mistral_v1_spm()))
    ids = []
    for doc in stdlib_docstrings():  # each document as SentencePiece encodes it, after BOS
        ids.extend([args.bos_id, *sp.encode(doc)])
    log.info("corpus: %d tokens of standard-library docstrings", len(ids))
    model = train(args, torch.tensor(ids), steps, seed)
    return {name: t.detach().to(torch.bfloat16).contiguous() for name, t in model.state_dict().items()
            if "rotary_emb" not in name and name != "lm_head.weight"}
