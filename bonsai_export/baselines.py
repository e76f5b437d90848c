"""bench's baselines, the conventional ways to run the model: transformers' Llama in bf16 with the ternary scales
folded into dense weights (as people run Bonsai today), and an ExecuTorch XNNPACK 8da4w export of the same folded
model (the conventional ExecuTorch choice), made once into the cache."""

from __future__ import annotations

from pathlib import Path

import torch

from . import artifact as A
from . import peers as P

BF16_EAGER = "bf16-eager"
PTE_8DA4W = "pte-8da4w"


class Bf16Reference:
    """transformers' LlamaForCausalLM in bf16 with T * scales folded into dense weights, with its KV cache."""

    name = BF16_EAGER

    def __init__(self, source: str, max_seq_len: int):
        from transformers import DynamicCache

        from . import checkpoint
        from .reference import folded_llama

        self.model = folded_llama(checkpoint.load(source, progress=False), torch.bfloat16)
        self.cache_cls = DynamicCache
        self.max_seq_len, self.cache = max_seq_len, None

    def reset(self):
        self.cache = self.cache_cls()

    def __call__(self, tokens, input_pos):
        if int(input_pos[0]) == 0:
            self.reset()
        with torch.no_grad():
            out = self.model(tokens, past_key_values=self.cache, use_cache=True)
        return out.logits.float()


def export_8da4w(source: str, max_seq_len: int, out: Path) -> Path:
    """The same model with T * scales folded into plain linears, quantized the conventional ExecuTorch way
    (int8 dynamic activations, int4 weights in groups of 32, XNNPACK) and written as an artifact folder."""
    if (out / A.MANIFEST).is_file():
        return out
    from torch import nn
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from . import checkpoint, checkpoint_files, formats
    from .export import model_shape
    from .export.executorch import to_pte
    from .export.staging import commit, prepare_out
    from .model import from_checkpoint
    from .ternary_layers import TernaryLinear
    from .tokenizer import write_canonical

    ckpt = checkpoint.load(source, progress=False)
    model = from_checkpoint(ckpt, max_seq_len=max_seq_len)
    shape = model_shape(ckpt, model, note="XNNPACK 8da4w baseline")  # what the runners check, no ternary figures
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):  # the same fused projections as ours, scales folded in
            dense = nn.Linear(module.in_features, module.out_features, bias=False)
            values = torch.from_numpy(formats.unpack(module.packed.numpy(), module.in_features))
            dense.weight.data = values.float() * module.scales[:, None]
            model.get_submodule(name.rsplit(".", 1)[0]).register_module(name.rsplit(".", 1)[1], dense)
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
    tmp = prepare_out(out, force=True, source=checkpoint_files.root_of(ckpt.folder))
    options = A.ExportConfig(max_seq_len=max_seq_len)  # the defaults: our options do not describe this program
    (tmp / A.PTE_FILE).write_bytes(to_pte(model, options))
    settings = write_canonical(ckpt.folder, tmp)
    A.write_manifest(tmp, A.Manifest(artifacts=(A.ArtifactEntry(type="pte", file=A.PTE_FILE),), options=options,
                                     model=shape, source=A.Source(checkpoint=source), tokenizer=settings.to_dict()))
    commit(tmp, out, force=True)
    return out


def baseline_specs(source: str, base: dict) -> list[dict]:
    # rebuilt when the checkpoint, the length, this exporter or the model definition (its fused layout) changes
    out = P.cache_folder("8da4w", source, {"max_seq_len": base["max_seq_len"]}, code=("baselines.py", "model.py"))
    return [{**base, "label": BF16_EAGER, "group": "baseline", "kind": BF16_EAGER, "path": source},
            {**base, "label": PTE_8DA4W, "group": "baseline", "kind": "artifact", "backend": "pte",
             "path": str(export_8da4w(source, base["max_seq_len"], out))}]
