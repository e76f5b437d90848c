"""ModelArgs: the shape of a Bonsai-style Llama, a Qwen3 or a BitNet b1.58 (2B4T), read from (and written to) a
Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import BonsaiError

MLP_ACTS = ("silu", "relu2")  # transformers' hidden_act names of the MLP activations model.py implements
MAX_POSITIONS = 1 << 20  # KV cache positions; more is a typo, not a model (an fp32 cache of 2**31
# positions is ~800 GB at Bonsai's shape)


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int = 32000
    dim: int = 1536  # hidden_size
    n_layers: int = 16
    n_heads: int = 16
    n_kv_heads: int = 8
    head_dim: int = 96
    hidden_dim: int = 4096  # intermediate_size of the SwiGLU MLP
    norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    max_seq_len: int = 2048  # max_position_embeddings
    tie_embeddings: bool = False
    bos_id: int = 1
    eos_ids: tuple[int, ...] = (2,)
    pad_id: int = 0
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k (weights [head_dim]) before RoPE
    # BitNet b1.58 2B4T: RMSNorm on the attention output before o_proj ([n_heads * head_dim]) and on the MLP's
    # product before down_proj ([hidden_dim]), and relu(gate)^2 * up instead of silu(gate) * up
    sub_norms: bool = False
    mlp_act: str = "silu"  # "silu" or "relu2"

    def __post_init__(self):
        if self.mlp_act not in MLP_ACTS:
            raise BonsaiError(f"config: hidden_act must be one of {', '.join(MLP_ACTS)}, got {self.mlp_act!r}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim",
                     "max_seq_len"):
            if getattr(self, name) <= 0:
                raise BonsaiError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise BonsaiError(
                f"config: num_attention_heads ({self.n_heads}) must be a multiple of "
                f"num_key_value_heads ({self.n_kv_heads})"
            )
        # Accepted, these give NaN logits or a cache of absurd size rather than an error: refuse them here.
        if self.max_seq_len > MAX_POSITIONS:
            raise BonsaiError(f"config: max_position_embeddings {self.max_seq_len} is above {MAX_POSITIONS}, the "
                              f"longest KV cache bonsai-export allocates; lower it in config.json")
        for name, value in (("rms_norm_eps", self.norm_eps), ("rope_theta", self.rope_theta)):
            if not (math.isfinite(value) and value > 0):
                raise BonsaiError(f"config: {name} must be a positive finite number, got {value}; fix it in "
                                  f"config.json")
        for name, ids in (("bos_token_id", (self.bos_id,)), ("eos_token_id", self.eos_ids),
                          ("pad_token_id", (self.pad_id,))):
            if not all(0 <= i < self.vocab_size for i in ids):
                raise BonsaiError(f"config: {name} {list(ids) if len(ids) > 1 else ids[0]} is outside the "
                                  f"vocabulary (0..{self.vocab_size - 1}); fix it in config.json")

    @property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """[out, in] of every ternary projection of one layer, keyed by its HF module name."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {
            "self_attn.q_proj": (q, self.dim),
            "self_attn.k_proj": (kv, self.dim),
            "self_attn.v_proj": (kv, self.dim),
            "self_attn.o_proj": (self.dim, q),
            "mlp.gate_proj": (self.hidden_dim, self.dim),
            "mlp.up_proj": (self.hidden_dim, self.dim),
            "mlp.down_proj": (self.dim, self.hidden_dim),
        }

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)


# Fields of a Llama config.json that change the computation and that this model definition does not implement.
# Each maps to a predicate saying whether the value is the harmless default.
_UNSUPPORTED = {
    "rope_scaling": lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default"),
    "sliding_window": lambda v: v is None,
    "attention_bias": lambda v: not v,
    "mlp_bias": lambda v: not v,
    "pretraining_tp": lambda v: v in (None, 1),
    "hidden_act": lambda v: v in (None, "silu"),
}

PRESETS = {
    # The real deepgrove/Bonsai shape.
    "bonsai-500m": ModelArgs(),
    # A tiny model of the same family (head_dim 96, GQA 2:1, real vocabulary) for tests and the offline demo.
    "tiny": ModelArgs(dim=192, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=512, max_seq_len=256),
    # Trained on CPU in minutes (bonsai_export/train.py): narrow and tied, because the 32000-row embedding and
    # head dominate the training cost.
    "trained-tiny": ModelArgs(dim=128, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=384, max_seq_len=512,
                              tie_embeddings=True),
    # Trained once on a GPU (bonsai_export/train.py, SMALL_RECIPE), committed in bonsai_export/data/: untied
    # embedding and head like Bonsai, GQA 2:1.
    "trained-small": ModelArgs(dim=256, n_layers=8, n_heads=4, n_kv_heads=2, head_dim=64, hidden_dim=1024,
                               max_seq_len=512),
    # prism-ml Ternary-Bonsai-1.7B: Qwen3-1.7B's shape (head_dim 128 independent of dim / n_heads, GQA 2:1, tied
    # embeddings, rope_theta 1e6, 32k context), every linear, the embedding and the head group-ternary (g128).
    "ternary-bonsai-1.7b": ModelArgs(vocab_size=151936, dim=2048, n_layers=28, n_heads=16, n_kv_heads=8,
                                     head_dim=128, hidden_dim=6144, norm_eps=1e-6, rope_theta=1e6,
                                     max_seq_len=32768, tie_embeddings=True, bos_id=151643, eos_ids=(151645,),
                                     pad_id=151643, qk_norm=True),
    # The same family, small enough for tests: K = 256 or 384 (two or three groups of 128 per row), 1024 BPE
    # tokens then Qwen's 26 added tokens (<|endoftext|> = 1024, <|im_end|> = 1026), rows to spare as Qwen has.
    "ternary-bonsai-tiny": ModelArgs(vocab_size=1152, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=128,
                                     hidden_dim=384, norm_eps=1e-6, rope_theta=1e6, max_seq_len=256,
                                     tie_embeddings=True, bos_id=1024, eos_ids=(1026,), pad_id=1024, qk_norm=True),
    # microsoft/bitnet-b1.58-2B-4T: BitNetConfig's shape (GQA 4:1, head_dim 128, rope_theta 5e5, tied embeddings,
    # Llama-3's 128,256-token vocabulary, <|end_of_text|> = 128001), 4096 positions as its config.json has.
    "bitnet-2b4t": ModelArgs(vocab_size=128256, dim=2560, n_layers=30, n_heads=20, n_kv_heads=5, head_dim=128,
                             hidden_dim=6912, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=4096,
                             tie_embeddings=True, bos_id=128000, eos_ids=(128001,), pad_id=128001, sub_norms=True,
                             mlp_act="relu2"),
    # The same family for tests: GQA 2:1, rows a multiple of 4 (transformers' packing), 1024 BPE tokens then
    # Llama-3-style added tokens at 1024.. (<|begin_of_text|> 1024, <|end_of_text|> 1025).
    "bitnet-2b4t-tiny": ModelArgs(vocab_size=1056, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                                  hidden_dim=256, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=256,
                                  tie_embeddings=True, bos_id=1024, eos_ids=(1025,), pad_id=1025, sub_norms=True,
                                  mlp_act="relu2"),
    # tiiuae Falcon3-1B-Instruct-1.58bit: a plain Llama (head_dim 256, GQA 2:1, rope_theta 1000042, untied head,
    # 131,072-token vocabulary), every linear packed BitNet with the bitlinear (divide) scale.
    "falcon3-1.58bit": ModelArgs(vocab_size=131072, dim=2048, n_layers=18, n_heads=8, n_kv_heads=4, head_dim=256,
                                 hidden_dim=8192, norm_eps=1e-6, rope_theta=1000042.0, max_seq_len=8192,
                                 bos_id=11, eos_ids=(11,), pad_id=2023),
    "falcon3-1.58bit-tiny": ModelArgs(vocab_size=1056, dim=128, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=64,
                                      hidden_dim=256, norm_eps=1e-6, rope_theta=1000042.0, max_seq_len=256,
                                      bos_id=1024, eos_ids=(1025,), pad_id=1025),
}


def _require(cfg: dict, key: str, types):
    if key not in cfg:
        raise BonsaiError(f"config.json: missing required field '{key}'")
    if cfg[key] is None:
        raise BonsaiError(f"config.json: field '{key}' has unexpected value None; expected {_kinds(types)}")
    return _typed(cfg, key, types, None)


def _typed(cfg: dict, key: str, types, default):
    """cfg[key] if it has one of `types` (never a bool for a number), `default` when absent or null."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise BonsaiError(f"config.json: field '{key}' has unexpected value {repr(value)[:80]}; expected "
                          f"{_kinds(types)}")
    return value


def _kinds(types) -> str:
    return " or ".join(t.__name__ for t in types)


def _eos_ids(value) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise BonsaiError(f"config.json: eos_token_id must be an int or a list of ints, got {repr(value)[:80]}")


def _refuse_unsupported(cfg: dict, table: dict, implements: str) -> None:
    """The first field of `table` present in cfg with a value its check does not accept, refused on one line."""
    for key, is_default in table.items():
        if key in cfg and not is_default(cfg[key]):
            raise BonsaiError(f"config.json: unsupported {key}={repr(cfg[key])[:80]}; bonsai-export implements "
                              f"{implements}")


def from_hf_config(cfg: dict) -> ModelArgs:
    """Validate a Llama-family or Qwen3 config.json dict and convert it. Unsupported features raise BonsaiError."""
    if not isinstance(cfg, dict):
        raise BonsaiError(f"config.json: expected a JSON object of model settings, got {type(cfg).__name__}; "
                          f"restore the checkpoint's config.json")
    if cfg.get("model_type") == "qwen3":
        return _from_qwen3_config(cfg)
    if cfg.get("model_type") == "bitnet":
        return _from_bitnet_config(cfg)
    _refuse_unsupported(cfg, _UNSUPPORTED, "plain Llama (default RoPE, full attention, no biases, SiLU MLP)")
    dim = _require(cfg, "hidden_size", (int,))
    n_heads = _require(cfg, "num_attention_heads", (int,))
    number = (int, float)
    return ModelArgs(
        vocab_size=_require(cfg, "vocab_size", (int,)),
        dim=dim,
        n_layers=_require(cfg, "num_hidden_layers", (int,)),
        n_heads=n_heads,
        n_kv_heads=_typed(cfg, "num_key_value_heads", (int,), n_heads),
        head_dim=_typed(cfg, "head_dim", (int,), dim // n_heads if n_heads > 0 else 0),
        hidden_dim=_require(cfg, "intermediate_size", (int,)),
        norm_eps=float(_typed(cfg, "rms_norm_eps", number, 1e-6)),
        rope_theta=float(_typed(cfg, "rope_theta", number, 10000.0)),
        max_seq_len=_require(cfg, "max_position_embeddings", (int,)),
        tie_embeddings=_typed(cfg, "tie_word_embeddings", (bool,), False),
        bos_id=_typed(cfg, "bos_token_id", (int,), 1),
        eos_ids=_eos_ids(cfg.get("eos_token_id", 2)),
        pad_id=_typed(cfg, "pad_token_id", (int,), 0),
    )


# Fields of a BitNet config.json (transformers' BitNetConfig) that change the computation and that model.py does
# not implement; hidden_act must be relu2 (the ReLU^2 MLP), checked on its own for a clearer message.
_BITNET_UNSUPPORTED = {
    "rope_scaling": _UNSUPPORTED["rope_scaling"],
    "attention_bias": lambda v: not v,
}


def _from_bitnet_config(cfg: dict) -> ModelArgs:
    """BitNet b1.58 (transformers' BitNetForCausalLM): Llama plus the two sub-layer norms and the ReLU^2 MLP;
    defaults are BitNetConfig's, so a field left out means what transformers reads."""
    _refuse_unsupported(cfg, _BITNET_UNSUPPORTED, "BitNet with default RoPE and no biases")
    act = _typed(cfg, "hidden_act", (str,), "relu2")
    if act != "relu2":
        raise BonsaiError(f"config.json: hidden_act {act!r} for model_type 'bitnet'; bonsai-export implements its "
                          f"ReLU^2 MLP (hidden_act 'relu2')")
    dim = _typed(cfg, "hidden_size", (int,), 2560)
    n_heads = _typed(cfg, "num_attention_heads", (int,), 20)
    head_dim = _typed(cfg, "head_dim", (int,), dim // n_heads if n_heads > 0 else 0)
    if n_heads * head_dim != dim:  # transformers sizes attn_sub_norm by hidden_size, the attention output's width
        raise BonsaiError(f"config.json: num_attention_heads * head_dim ({n_heads} * {head_dim}) must equal "
                          f"hidden_size ({dim}) for model_type 'bitnet' (attn_sub_norm has hidden_size weights)")
    eos = cfg.get("eos_token_id")
    return ModelArgs(
        vocab_size=_typed(cfg, "vocab_size", (int,), 128256),
        dim=dim,
        n_layers=_typed(cfg, "num_hidden_layers", (int,), 30),
        n_heads=n_heads,
        n_kv_heads=_typed(cfg, "num_key_value_heads", (int,), n_heads),
        head_dim=head_dim,
        hidden_dim=_typed(cfg, "intermediate_size", (int,), 6912),
        norm_eps=float(_typed(cfg, "rms_norm_eps", (int, float), 1e-5)),
        rope_theta=_rope_theta(cfg, 500000.0),
        max_seq_len=_typed(cfg, "max_position_embeddings", (int,), 2048),
        tie_embeddings=_typed(cfg, "tie_word_embeddings", (bool,), False),
        bos_id=_typed(cfg, "bos_token_id", (int,), 128000),
        eos_ids=_eos_ids(eos) if eos is not None else (128001,),
        pad_id=_typed(cfg, "pad_token_id", (int,), _eos_ids(eos)[0] if eos is not None else 128001),
        sub_norms=True,
        mlp_act="relu2",
    )


# Fields of a Qwen3 config.json that change the computation and that model.py does not implement. sliding_window
# and max_window_layers are read by transformers only when use_sliding_window is true.
_QWEN3_UNSUPPORTED = {
    "rope_scaling": _UNSUPPORTED["rope_scaling"],
    "use_sliding_window": lambda v: not v,
    "layer_types": lambda v: v is None or (isinstance(v, list) and all(t == "full_attention" for t in v)),
    "attention_bias": lambda v: not v,
    "hidden_act": _UNSUPPORTED["hidden_act"],
}


def _rope_theta(cfg: dict, default: float) -> float:
    """rope_theta, top level (transformers 4) or inside rope_parameters (transformers 5, which writes both)."""
    params = _typed(cfg, "rope_parameters", (dict,), {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise BonsaiError(f"config.json: unsupported rope_parameters.rope_type={kind!r}; bonsai-export implements "
                          f"default RoPE (no YaRN or other scaling)")
    if "rope_theta" in cfg:
        return float(_typed(cfg, "rope_theta", (int, float), default))
    return float(_typed(params, "rope_theta", (int, float), default))


def _from_qwen3_config(cfg: dict) -> ModelArgs:
    """Qwen3 (transformers' Qwen3ForCausalLM): Llama plus per-head q/k RMSNorm, head_dim 128 by default (not
    hidden_size / heads), no biases; defaults are Qwen3Config's, so a field left out means what transformers reads."""
    _refuse_unsupported(cfg, _QWEN3_UNSUPPORTED,
                        "Qwen3 with full attention on every layer, default RoPE, no biases and a SiLU MLP")
    n_heads = _require(cfg, "num_attention_heads", (int,))
    eos = cfg.get("eos_token_id")
    bos = _typed(cfg, "bos_token_id", (int,), 151643)
    return ModelArgs(
        vocab_size=_typed(cfg, "vocab_size", (int,), 151936),
        dim=_require(cfg, "hidden_size", (int,)),
        n_layers=_require(cfg, "num_hidden_layers", (int,)),
        n_heads=n_heads,
        n_kv_heads=_typed(cfg, "num_key_value_heads", (int,), n_heads),
        head_dim=_typed(cfg, "head_dim", (int,), 128),
        hidden_dim=_require(cfg, "intermediate_size", (int,)),
        norm_eps=float(_typed(cfg, "rms_norm_eps", (int, float), 1e-6)),
        rope_theta=_rope_theta(cfg, 1e6),  # Qwen3Config's default
        max_seq_len=_typed(cfg, "max_position_embeddings", (int,), 32768),
        tie_embeddings=_typed(cfg, "tie_word_embeddings", (bool,), False),
        bos_id=bos,
        eos_ids=_eos_ids(eos) if eos is not None else (151645,),
        pad_id=_typed(cfg, "pad_token_id", (int,), bos),  # Qwen3 configs name none; Qwen pads with <|endoftext|>
        qk_norm=True,
    )
