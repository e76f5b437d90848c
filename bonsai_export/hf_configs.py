"""config.json as each family's checkpoints write it, and the transformers configs of the same shape: what the
synthetic presets write and what the references (transformers' Llama, Qwen3, BitNet) are built from. config.py
reads them (`from_hf_config`); this module writes them."""

from __future__ import annotations

from .config import ModelArgs


def llama_config(args: ModelArgs, **overrides):
    """A transformers LlamaConfig of the same shape, without the remote-code fields (auto_map, architectures) and
    the storage dtype: what the reference, training and baseline Llamas are built from."""
    from transformers import LlamaConfig

    skip = ("auto_map", "architectures", "torch_dtype")
    return LlamaConfig(**{k: v for k, v in to_hf_config(args).items() if k not in skip}, **overrides)


def _config(args: ModelArgs, **family) -> dict:
    """The fields every family writes alike, with the family's own, in the published files' order: architectures
    and auto_map first, then the rest sorted."""
    cfg = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": args.bos_id,
        "eos_token_id": args.eos_ids[0] if len(args.eos_ids) == 1 else list(args.eos_ids),
        "hidden_size": args.dim,
        "initializer_range": 0.02,
        "intermediate_size": args.hidden_dim,
        "max_position_embeddings": args.max_seq_len,
        "num_attention_heads": args.n_heads,
        "num_hidden_layers": args.n_layers,
        "num_key_value_heads": args.n_kv_heads,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": args.tie_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": args.vocab_size,
        **family,
    }
    first = ("architectures", "auto_map")
    return {**{k: cfg[k] for k in first if k in cfg}, **dict(sorted(i for i in cfg.items() if i[0] not in first))}


def to_hf_config(args: ModelArgs) -> dict:
    """config.json in Bonsai's own form: every field of the published config, remote-code auto_map included."""
    return _config(args, architectures=["QLlamaForCausalLM"],
                   auto_map={"AutoModelForCausalLM": "modeling_qllama.QLlamaForCausalLM"}, head_dim=args.head_dim,
                   hidden_act="silu", mlp_bias=False, model_type="llama", pad_token_id=args.pad_id,
                   pretraining_tp=1, rope_scaling=None, transformers_version="4.48.0")


def to_qwen3_config(args: ModelArgs) -> dict:
    """config.json of a Qwen3 folder as transformers 4.51+ writes it (Qwen3-1.7B's fields)."""
    return _config(args, architectures=["Qwen3ForCausalLM"], head_dim=args.head_dim, hidden_act="silu",
                   max_window_layers=args.n_layers, model_type="qwen3", rope_scaling=None, sliding_window=None,
                   transformers_version="4.51.0", use_sliding_window=False)


def to_bitnet_config(args: ModelArgs) -> dict:
    """config.json of microsoft/bitnet-b1.58-2B-4T's packed folder (BitNetForCausalLM, packed uint8 linears with
    one autobitlinear (multiply) scale each)."""
    return _config(args, architectures=["BitNetForCausalLM"], hidden_act="relu2", model_type="bitnet",
                   quantization_config={"linear_class": "autobitlinear", "quant_method": "bitnet",
                                        "quantization_mode": "offline"})


def to_falcon3_bitnet_config(args: ModelArgs) -> dict:
    """config.json of a tiiuae Falcon3-*-1.58bit folder: a Llama whose linears are packed BitNet with the
    bitlinear (divide) scale (transformers' LlamaForCausalLM with its BitNet quantizer)."""
    cfg = {k: v for k, v in to_hf_config(args).items() if k != "auto_map"}
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["quantization_config"] = {"linear_class": "bitlinear", "modules_to_not_convert": None,
                                  "quant_method": "bitnet", "quantization_mode": "offline"}
    return cfg


def hf_config(args: ModelArgs) -> dict:
    """config.json of the family `args` belongs to."""
    if args.sub_norms:
        return to_bitnet_config(args)
    return to_qwen3_config(args) if args.qk_norm else to_hf_config(args)


def bitnet_config(args: ModelArgs, **overrides):
    """transformers' BitNetConfig of the same shape (the reference BitNetForCausalLM is built from it)."""
    from transformers import BitNetConfig

    skip = ("architectures", "torch_dtype", "quantization_config")
    return BitNetConfig(**{k: v for k, v in to_bitnet_config(args).items() if k not in skip},
                        pad_token_id=args.pad_id, **overrides)


def qwen3_config(args: ModelArgs, **overrides):
    """transformers' Qwen3Config of the same shape (the reference Qwen3ForCausalLM is built from it)."""
    from transformers import Qwen3Config

    skip = ("architectures", "torch_dtype", "transformers_version")
    return Qwen3Config(**{k: v for k, v in to_qwen3_config(args).items() if k not in skip},
                       pad_token_id=args.pad_id, **overrides)
