"""`bonsai-export info`: what a checkpoint holds and what its artifacts will weigh."""

from __future__ import annotations

import dataclasses

from . import formats
from .checkpoint import Checkpoint

# Bytes per weight of the embedding / head formats (bonsai_export/dense.py), scales included: int8 carries one
# bf16 scale per group of formats.DENSE_GROUP weights, int4 a bf16 scale and offset.
DENSE_BYTES = {"bf16": 2.0, "int8": 1.0 + 2 / formats.DENSE_GROUP, "int4": 0.5 + 4 / formats.DENSE_GROUP}


def describe(ckpt: Checkpoint) -> dict:
    a = ckpt.args
    ternary_params = sum(w.values.numel() for w in ckpt.ternary.values())
    zeros = sum(int((w.values == 0).sum()) for w in ckpt.ternary.values())
    scales = sum(w.scales.numel() for w in ckpt.ternary.values())
    dense_params = sum(t.numel() for t in ckpt.dense.values())
    packed = sum(w.values.shape[0] * formats.row_bytes(w.values.shape[1]) + 4 * w.values.shape[0]
                 for w in ckpt.ternary.values())
    norms = 4 * sum(t.numel() for n, t in ckpt.dense.items() if "norm" in n)
    table = a.vocab_size * a.dim

    def table_bytes(kind: str) -> int:
        return int(table * DENSE_BYTES[kind])

    heads = 0 if a.tie_embeddings else 1
    sizes = {f"embedding {e} + head {h}": packed + norms + table_bytes(e) + heads * table_bytes(h)
             for e, h in (("bf16", "bf16"), ("bf16", "int8"), ("int8", "int4"))}
    return {
        "source": ckpt.source,
        "format": ckpt.format,
        "config": dataclasses.asdict(a),
        "parameters": {"total": ternary_params + scales + dense_params, "ternary": ternary_params,
                       "scales": scales, "dense": dense_params},
        "ternary_sparsity": zeros / ternary_params,
        "ternary_linears": len(ckpt.ternary),
        "packed_ternary_bytes": packed,
        "bits_per_ternary_weight": 8 * packed / ternary_params,
        "estimated_artifact_bytes": sizes,
        "tokenizer_files": [p.name for p in ckpt.tokenizer_files],
    }


def render(d: dict) -> str:
    c, p = d["config"], d["parameters"]
    lines = [
        f"source            {d['source']}",
        f"format            {d['format']}",
        f"shape             {c['n_layers']} layers, dim {c['dim']}, heads {c['n_heads']}/{c['n_kv_heads']} "
        f"(head_dim {c['head_dim']}), mlp {c['hidden_dim']}, vocab {c['vocab_size']}, ctx {c['max_seq_len']}",
        f"parameters        {p['total']:,} ({p['ternary']:,} ternary in {d['ternary_linears']} linears, "
        f"{p['scales']:,} scales, {p['dense']:,} dense)",
        f"ternary sparsity  {100 * d['ternary_sparsity']:.2f}% zeros",
        f"packed ternary    {d['packed_ternary_bytes'] / 1e6:.1f} MB "
        f"({d['bits_per_ternary_weight']:.3f} bits/weight incl. scales)",
        "estimated artifact size:",
        *(f"  {k:<28}{v / 1e6:8.1f} MB" for k, v in d["estimated_artifact_bytes"].items()),
        f"tokenizer         {', '.join(d['tokenizer_files'])}",
    ]
    return "\n".join(lines)
