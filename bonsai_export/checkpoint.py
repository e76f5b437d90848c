"""Read a checkpoint (hub id or local folder) into one canonical in-memory form.

Canonical form: ModelArgs, the dense tensors (embeddings, norms, head) and, for every ternary linear, an int8
matrix T [out, in] in {-1, 0, +1} plus float32 scales (TernaryWeight): one per output channel, so that
y = (x @ T^T) * scales, or one per group of 128 weights along `in` (Ternary-Bonsai), W = scale_g * T; a
group-ternary embedding and head are TernaryWeights too ("model.embed_tokens", "lm_head"), not dense tensors.
Formats understood:
- "qlinear": Bonsai's own (QLinear): `X.weight` latent or exact 16-bit values, `X.scales` [out].
- "bitnet-bitlinear" / "bitnet-autobitlinear": transformers' packed BitNet format (see bitnet.py), on Llama-shaped
  models (Falcon3-1.58bit) and on BitNet b1.58 2B4T (`model_type: bitnet`, which adds two sub-layer norms);
  "bitnet-online": BitNet's bf16 master weights (quantization_mode "online"), ternarized per tensor on load.
- "unpacked-g128": a Qwen3 folder of dense 16-bit weights whose every group of 128 holds one magnitude
  (prism-ml's Ternary-Bonsai-*-unpacked; see ternary_groups.py).
- "gguf-q2_0": a folder holding one Ternary-Bonsai GGUF of Q2_0 tensors, plus the tokenizer files (gguf_reader.py).
The checkpoint's remote code is never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import bitnet, gguf_reader, ternary_groups
from .checkpoint_files import TOKENIZER_FILES, load_tensors, read_json, resolve, root_of
from .config import ModelArgs, from_hf_config
from .errors import BonsaiError
from .paths import inside

NORMS = ("input_layernorm", "post_attention_layernorm")
QK_NORMS = ("q_norm", "k_norm")  # Qwen3: model.layers.{i}.self_attn.{q,k}_norm.weight [head_dim]
# BitNet b1.58 2B4T: model.layers.{i}.{name}.weight, before o_proj ([dim]) and before down_proj ([hidden_dim])
SUB_NORMS = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
GROUP_SIZE = 128  # weights per scale of the group-scaled checkpoints (Ternary-Bonsai's g128, GGUF Q2_0)
# Storage dtypes of dense and latent weights that we convert exactly; float8 and others are refused by name.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class TernaryWeight:
    """W = scale * T. Per output channel: scales [out] (or [out, 1]). Group-scaled: scales [out, in / g], one per
    g consecutive weights of a row (g = group_size, 128 for Ternary-Bonsai): W[n, k] = scales[n, k // g] * T[n, k]."""

    values: torch.Tensor  # int8 [out, in], values in {-1, 0, +1}
    scales: torch.Tensor  # float32 [out], [out, 1] or [out, in / group_size]

    def __post_init__(self):
        n, k = self.values.shape
        s = tuple(self.scales.shape)
        if self.values.dtype != torch.int8 or not (s == (n,) or (len(s) == 2 and s[0] == n and s[1] and k % s[1] == 0)):
            raise ValueError(f"TernaryWeight: values {self.values.dtype} {[n, k]} and scales {list(s)} do not "
                             f"form int8 [out, in] with scales [out] or [out, in / group]")

    @property
    def group_size(self) -> int | None:
        """Weights per scale along `in`; None for one scale per output channel."""
        if self.scales.dim() == 1 or self.scales.shape[1] == 1:
            return None
        return self.values.shape[1] // self.scales.shape[1]

    def folded(self) -> torch.Tensor:
        """The float32 [out, in] matrix a plain linear needs: T times its scale, exactly."""
        if self.scales.dim() == 1:
            return self.values.float() * self.scales[:, None]
        return self.values.float() * self.scales.float().repeat_interleave(self.values.shape[1] // self.scales.shape[1],
                                                                           dim=1)


@dataclass
class Checkpoint:
    args: ModelArgs
    source: str
    folder: Path
    format: str
    dense: dict[str, torch.Tensor]  # HF names -> tensors in the checkpoint's dtype
    ternary: dict[str, TernaryWeight]  # HF module name ("model.layers.0.self_attn.q_proj") -> weight
    generation_config: dict = field(default_factory=dict)

    @property
    def group_size(self) -> int | None:
        """The group size of group-scaled ternary weights (all share one), None for per-channel ones."""
        sizes = {w.group_size for w in self.ternary.values()}
        if len(sizes) > 1:
            raise BonsaiError(f"{self.source}: ternary weights mix scale layouts {sorted(map(str, sizes))}; one "
                              f"checkpoint holds one layout")
        return next(iter(sizes), None)

    @property
    def act_quant(self) -> str:
        """The activation mode the checkpoint's own model computes, the eager default: int8 per-token absmax for
        transformers' BitNet formats (BitLinear and AutoBitLinear quantize every linear's input so, and BitNet
        b1.58 was trained so), float for the others."""
        return "int8" if self.format.startswith("bitnet-") else "none"

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.folder / f for f in TOKENIZER_FILES if (self.folder / f).is_file()]


def _take(tensors: dict, name: str, shape: tuple, floating: bool = True) -> torch.Tensor:
    """Pop one tensor, checking presence, shape, dtype and finiteness; every failure names the tensor."""
    if name not in tensors:
        raise BonsaiError(f"{name}: missing from the checkpoint")
    t = tensors.pop(name)
    if t.dtype.is_floating_point and t.dtype not in FLOAT_DTYPES:
        raise BonsaiError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} is not supported; store the "
                          f"weights as bfloat16, float16 or float32")
    if tuple(t.shape) != tuple(shape):
        raise BonsaiError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if floating != t.dtype.is_floating_point:
        kind = "a floating-point" if floating else "an integer"
        raise BonsaiError(f"{name}: expected {kind} dtype, got {t.dtype}")
    if floating and not torch.isfinite(t).all():
        raise BonsaiError(f"{name}: contains NaN or Inf")
    return t


def ternarize(w: torch.Tensor) -> torch.Tensor:
    """QLinear's round(clamp(w, -1, 1)) with torch's round-half-to-even: |w| > 0.5 -> sign(w), else 0."""
    w = w.float()
    return ((w > 0.5).to(torch.int8) - (w < -0.5).to(torch.int8)).to(torch.int8)


def _read_qlinear(tensors: dict, name: str, shape: tuple) -> TernaryWeight:
    if f"{name}.scales" not in tensors:
        raise BonsaiError(f"{name}.scales: missing; Bonsai's QLinear format stores one scale per output "
                          f"channel beside every ternary weight")
    weight = _take(tensors, f"{name}.weight", shape)
    scales = _take(tensors, f"{name}.scales", shape[:1])
    return TernaryWeight(ternarize(weight), scales.float())


def _read_bitnet(tensors: dict, name: str, shape: tuple, linear_class: str) -> TernaryWeight:
    out, cols = shape
    if f"{name}.weight" in tensors and tuple(tensors[f"{name}.weight"].shape) != (-(-out // 4), cols):
        raise BonsaiError(f"{name}.weight: expected packed BitNet shape {[-(-out // 4), cols]} (4 rows of [{out}, "
                          f"{cols}] a byte), got {list(tensors[f'{name}.weight'].shape)}")
    packed = _take(tensors, f"{name}.weight", (-(-out // 4), cols), floating=False)
    if packed.dtype != torch.uint8:
        raise BonsaiError(f"{name}.weight: expected uint8 packed BitNet weights, got {packed.dtype}")
    scale = _take(tensors, f"{name}.weight_scale", (1,))
    if (scale == 0).any():
        raise BonsaiError(f"{name}.weight_scale: is zero")
    try:
        values = bitnet.unpack(packed, out)
    except ValueError as exc:
        raise BonsaiError(f"{name}.weight: {exc}") from None
    return TernaryWeight(values, bitnet.channel_scales(scale, out, linear_class))


def _read_bitnet_online(tensors: dict, name: str, shape: tuple) -> TernaryWeight:
    if f"{name}.weight_scale" in tensors:
        raise BonsaiError(f"{name}.weight_scale: present in an online (master-weights) BitNet folder, whose scales "
                          f"are computed from the weights; set quantization_mode to 'offline' for packed weights")
    values, scale = bitnet.absmean_ternarize(_take(tensors, f"{name}.weight", shape))
    return TernaryWeight(values, scale.expand(shape[0]).contiguous())


def _read_unpacked(tensors: dict, name: str, shape: tuple) -> TernaryWeight:
    weight = _take(tensors, f"{name}.weight", shape)
    return TernaryWeight(*ternary_groups.split(weight, f"{name}.weight", GROUP_SIZE))


def _read_q2_0(tensors: dict, name: str, shape: tuple) -> TernaryWeight:
    if f"{name}.weight" in tensors:
        raise BonsaiError(f"{name}.weight: stored dense in the GGUF; Ternary-Bonsai's linears are Q2_0")
    if name not in tensors:
        raise BonsaiError(f"{name}.weight: missing from the GGUF file")
    values, scales = tensors.pop(name)
    if tuple(values.shape) != tuple(shape):
        raise BonsaiError(f"{name}.weight: expected shape {list(shape)}, got {list(values.shape)}")
    return TernaryWeight(values, scales)


def _read_table(tensors: dict, fmt: str, name: str, shape: tuple) -> torch.Tensor | TernaryWeight:
    """The embedding or the head: group-ternary when the format stores it so (a Q2_0 GGUF tensor, or an
    unpacked one whose every group holds one magnitude), else the dense tensor."""
    if fmt == "gguf-q2_0" and name.removesuffix(".weight") in tensors:
        return _read_q2_0(tensors, name.removesuffix(".weight"), shape)
    dense = _take(tensors, name, shape)
    split = ternary_groups.split(dense, name, GROUP_SIZE, strict=False) if fmt == "unpacked-g128" else None
    return dense if split is None else TernaryWeight(*split)


def _read_linear(tensors: dict, fmt: str, name: str, shape: tuple) -> TernaryWeight:
    if fmt == "qlinear":
        return _read_qlinear(tensors, name, shape)
    if fmt == "unpacked-g128":
        return _read_unpacked(tensors, name, shape)
    if fmt == "gguf-q2_0":
        return _read_q2_0(tensors, name, shape)
    if fmt == "bitnet-online":
        return _read_bitnet_online(tensors, name, shape)
    return _read_bitnet(tensors, name, shape, fmt.split("-", 1)[1])


def _gguf_file(folder: Path) -> Path | None:
    """The folder's GGUF file when it has no safetensors (two GGUF files are ambiguous)."""
    files = sorted(folder.glob("*.gguf"))
    if not files or any(folder.glob("*.safetensors")):
        return None
    if len(files) > 1:
        raise BonsaiError(f"{folder}: holds {len(files)} GGUF files ({files[0].name}, {files[1].name}, ...); keep "
                          f"one per folder")
    return inside(folder, files[0].name, files[0].name, root_of(folder))


def _read_source(folder: Path) -> tuple[dict, dict, str | None]:
    """config.json's dict, every tensor, and the format when the container fixes it (a GGUF file's metadata is
    its config)."""
    gguf = _gguf_file(folder)
    if gguf is not None:
        cfg, tensors = gguf_reader.read(gguf)
        return cfg, tensors, "gguf-q2_0"
    return read_json(folder / "config.json"), load_tensors(folder), None


def detect_format(cfg: dict, tensors: dict) -> str:
    quant = cfg.get("quantization_config") or {}
    if cfg.get("model_type") == "bitnet" and not quant:
        raise BonsaiError("config.json: model_type 'bitnet' without a quantization_config holds BitNet's bf16 "
                          "master weights, which transformers runs unquantized; use the packed checkpoint "
                          "(microsoft/bitnet-b1.58-2B-4T)")
    if quant:
        if not isinstance(quant, dict) or quant.get("quant_method") != "bitnet":
            raise BonsaiError(f"config.json: unsupported quantization_config.quant_method "
                              f"{quant.get('quant_method') if isinstance(quant, dict) else quant!r}; "
                              f"supported: 'bitnet'")
        linear_class = quant.get("linear_class", "bitlinear")
        if linear_class not in bitnet.LINEAR_CLASSES:
            raise BonsaiError(f"config.json: unsupported quantization_config.linear_class {linear_class!r}; "
                              f"supported: {', '.join(bitnet.LINEAR_CLASSES)}")
        if quant.get("use_rms_norm"):  # an extra RMSNorm inside every linear
            raise BonsaiError(f"config.json: unsupported quantization_config.use_rms_norm {quant['use_rms_norm']!r}; "
                              f"bonsai-export reads BitNet linears without their own norm")
        mode = quant.get("quantization_mode") or "offline"
        if mode == "online" and linear_class == "autobitlinear":
            return "bitnet-online"  # latent float weights, ternarized per tensor as AutoBitLinear does
        if mode != "offline":
            raise BonsaiError(f"config.json: unsupported quantization_config.quantization_mode {mode!r} with "
                              f"linear_class {linear_class!r}; supported: 'offline', or 'online' with autobitlinear")
        return f"bitnet-{linear_class}"
    if cfg.get("model_type") == "qwen3" and not any(n.endswith(".scales") for n in tensors):
        return "unpacked-g128"  # Qwen3 without QLinear scales: the dense weights carry the group scales
    return "qlinear"


def _reject_leftovers(tensors: dict) -> None:
    leftovers = sorted(n for n in tensors if not n.endswith("rotary_emb.inv_freq"))
    if not leftovers:
        return
    bias = [n for n in leftovers if n.endswith(".bias")]
    if bias:
        raise BonsaiError(f"{bias[0]}: biases are not supported (Bonsai's linears have none)")
    raise BonsaiError(f"{leftovers[0]}: unexpected tensor ({len(leftovers)} in all); this architecture "
                      f"has parts bonsai-export's Llama model does not implement")


def _check_tokenizer(folder: Path, vocab_size: int) -> None:
    """A tokenizer from another model gives ids past the embedding table: refuse it here, not at generation."""
    from .tokenizer import Tokenizer

    pieces = Tokenizer(folder).vocab_size
    if pieces > vocab_size:
        raise BonsaiError(f"{folder}: the tokenizer has {pieces} tokens but the model's vocab_size is {vocab_size} "
                          f"(tokenizer of another model?); copy in the checkpoint's own tokenizer files")


def load(source: str | Path, progress: bool = True) -> Checkpoint:
    """Read and validate a checkpoint into the canonical form."""
    folder = resolve(source)
    for name in TOKENIZER_FILES:  # read by the tokenizer, which opens them by these names
        if os.path.lexists(folder / name):
            inside(folder, name, name, root_of(folder))
    cfg, tensors, fmt = _read_source(folder)
    args = from_hf_config(cfg)
    fmt = fmt or detect_format(cfg, tensors)
    d = args.dim
    dense, ternary = {}, {}
    for table in ("model.embed_tokens.weight", "model.norm.weight",
                  *(() if args.tie_embeddings else ("lm_head.weight",))):  # the order Llama checkpoints had
        w = (_take(tensors, table, (d,)) if table == "model.norm.weight"
             else _read_table(tensors, fmt, table, (args.vocab_size, d)))
        if isinstance(w, TernaryWeight):
            ternary[table.removesuffix(".weight")] = w
        else:
            dense[table] = w
    names = [f"model.layers.{i}.{sub}" for i in range(args.n_layers) for sub in args.linear_shapes]
    for name in tqdm(names, desc="ternarize", unit="linear", disable=not progress, leave=False):
        ternary[name] = _read_linear(tensors, fmt, name, args.linear_shapes[name.split(".", 3)[3]])
        if not torch.isfinite(ternary[name].scales).all():
            raise BonsaiError(f"{name}: scales contain NaN or Inf")
    for i in range(args.n_layers):
        for norm in NORMS:
            key = f"model.layers.{i}.{norm}.weight"
            dense[key] = _take(tensors, key, (d,))
        for norm in QK_NORMS if args.qk_norm else ():
            key = f"model.layers.{i}.self_attn.{norm}.weight"
            dense[key] = _take(tensors, key, (args.head_dim,))
        for norm, size in zip(SUB_NORMS, (d, args.hidden_dim)) if args.sub_norms else ():
            key = f"model.layers.{i}.{norm}.weight"
            dense[key] = _take(tensors, key, (size,))
    _reject_leftovers(tensors)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise BonsaiError(f"{folder}: no tokenizer.json or tokenizer.model; copy the model's tokenizer files in")
    _check_tokenizer(folder, args.vocab_size)
    generation = read_json(folder / "generation_config.json", required=False)
    return Checkpoint(args, str(source), folder, fmt, dense, ternary, generation)
