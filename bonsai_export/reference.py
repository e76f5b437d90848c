"""The independent reference: transformers' own Llama (Qwen3ForCausalLM for a Qwen3 checkpoint, Ternary-Bonsai;
BitNetForCausalLM for BitNet b1.58 2B4T)
with every ternary linear, and a group-ternary embedding and head, folded into a plain dense weight.

Of ours it uses only the checkpoint reader (checkpoint.py) and the config it gives: the model definition,
attention, RoPE, the tokenizer (AutoTokenizer) and greedy decoding (`generate`) are all transformers', so it
checks our model definition, exporters, runners and tokenizer from outside. `folded_llama` in bf16 is also how
people run Bonsai today (bench's baseline).
"""

from __future__ import annotations

import itertools

import torch

from .checkpoint import Checkpoint
from .hf_configs import bitnet_config, llama_config, qwen3_config
from .errors import BonsaiError


def folded_llama(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, **config):
    """transformers' LlamaForCausalLM in `dtype` (Qwen3ForCausalLM for a Qwen3 checkpoint: per-head q/k norms;
    BitNetForCausalLM, unquantized, for a 2B4T-shaped one)
    with W = T * scales (per output channel, or per group of 128 weights) for every ternary tensor and the
    checkpoint's dense tensors as they are; `config` overrides the config's fields (attn_implementation)."""
    from transformers import BitNetForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

    if ckpt.args.qk_norm:
        model = Qwen3ForCausalLM(qwen3_config(ckpt.args, **config)).to(dtype).eval()
    elif ckpt.args.sub_norms:  # BitNet b1.58 2B4T: sub-layer norms and ReLU^2; dense weights, float activations
        model = BitNetForCausalLM(bitnet_config(ckpt.args, **config)).to(dtype).eval()
    else:
        model = LlamaForCausalLM(llama_config(ckpt.args, **config)).to(dtype).eval()
    state = {k: v.to(dtype) for k, v in ckpt.dense.items()}
    state.update({f"{n}.weight": w.folded().to(dtype) for n, w in ckpt.ternary.items()})
    if ckpt.args.tie_embeddings:  # correct whether or not transformers shares the two parameters
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]  # RoPE's inverse frequencies are computed, not read
    if missing or unexpected:
        raise BonsaiError(f"reference {type(model).__name__}: expected exactly the checkpoint's tensors, got missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return model


class ReferenceLM:
    """The folded model with transformers' tokenizer of the checkpoint folder and its greedy `generate`: text in,
    greedy text out, as `bonsai-export run` gives it (new tokens up to the first EOS, which is not returned)."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer

        self.model = folded_llama(ckpt, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(ckpt.folder))
        self.eos_ids, self.pad_id = list(ckpt.args.eos_ids), ckpt.args.pad_id

    def encode(self, text: str) -> list[int]:
        """The prompt ids as transformers makes them (BOS as the tokenizer's config says)."""
        return list(self.tokenizer(text).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        inputs = torch.tensor([ids])
        with torch.no_grad():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                      max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids,
                                      pad_token_id=self.pad_id)
        return list(itertools.takewhile(lambda t: t not in self.eos_ids, out[0, len(ids):].tolist()))
