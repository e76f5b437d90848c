"""Build the ONNX graph of the export-ready model directly with onnx.helper (no tracing).

Why not torch.onnx.export: the graph must use ONNX Runtime's own fused nodes (GroupQueryAttention, RotaryEmbedding,
MatMulNBits) and our bonsai::TernaryMatMul with names and I/O that onnxruntime-genai expects; emitting them
directly keeps one choke point per concern and deterministic names, as onnxruntime-genai's builder does:
    nodes        /model/layers.{i}/attn/qkv_proj/TernaryMatMul
    outputs      {node}/output_{k}
    constants    /model/constants/{dtype}/{value}  (deduplicated by name)
    weights      the module names of the PyTorch model (model.layers.{i}.self_attn.qkv_proj.packed, ...)

I/O (optimum / onnxruntime-genai naming; cache layout [batch, kv_heads, seq, head_dim]):
    input_ids int64 [batch, seq], attention_mask int64 [batch, total_seq], position_ids int64 [batch, seq],
    past_key_values.{i}.key|value f32 [batch, kv_heads, past_seq, head_dim] (f16 with --kv-cache f16)
    -> logits f32 [batch, seq, vocab], present.{i}.key|value f32 (f16) [batch, kv_heads, total_seq, head_dim]
    (or past and present bound to one [batch, kv_heads, max_seq_len, head_dim] buffer, filled in place)

Ternary variants (TERNARY_OPS): "custom" = one bonsai::TernaryMatMul node over the packed t2 buffers
(docs/FORMAT.md); "stock" = com.microsoft MatMulNBits bits=2 (runs on unmodified ONNX Runtime). Block-scaled t2g
(Ternary-Bonsai): TernaryMatMul with scale_layout=1 and fp16 scales; stock: MatMulNBits bits=2 block_size=128 with
explicit zero points (formats.matmul_nbits_weights); its ternary embedding is gathered from the same packed table
a tied head reads (make_t2g_embedding).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from ..artifact import GENAI_CONFIG, ONNX_FILE, ORT_OPS_LIB, ArtifactEntry, ExportConfig
from ..errors import BonsaiError
from ..metadata import onnx_metadata
from ..model import Transformer
from .onnx_nodes import BONSAI_DOMAIN, IR_VERSION, MS_DOMAIN, OPSET, GraphBuilder, f32

log = logging.getLogger(__name__)

EXTERNAL_DATA_LIMIT = 1_800_000_000  # bytes of weights above which they go to model.onnx.data (protobuf: 2 GB)


def make_attention(g: GraphBuilder, i: int, attn, x: str, io: dict) -> str:
    """Self-attention of layer i over its KV cache (the attention node: make_group_query_attention).

          x ─ qkv_proj ─ Split ─┬─ q ── RotaryEmbedding(position_ids) ─┐
                                ├─ k ── RotaryEmbedding(position_ids) ─┼─ GroupQueryAttention(past_key, past_value,
                                └─ v ──────────────────────────────────┘    seqlens_k, total_seq) ─ o_proj ─> y
                                                                     └─> present.{i}.key / present.{i}.value
    """
    p, w = f"/model/layers.{i}/attn", f"model.layers.{i}.self_attn"
    qkv = g.make_ternary_matmul(f"{p}/qkv_proj", x, attn.qkv_proj, f"{w}.qkv_proj")
    q, k, v = g.node("Split", [qkv, g.const(attn.qkv_split)], f"{p}/qkv_proj/Split", n_out=3, axis=-1)
    if attn.qk_norm:
        q = g.make_qk_norm(f"{p}/q_norm", q, attn.q_norm, attn.n_heads, attn.head_dim)
        k = g.make_qk_norm(f"{p}/k_norm", k, attn.k_norm, attn.n_kv_heads, attn.head_dim)
    q = g.op("RotaryEmbedding", [q, io["position_ids"], io["cos"], io["sin"]], f"{p}/q_rotary/RotaryEmbedding",
             MS_DOMAIN, interleaved=0, num_heads=attn.n_heads)
    k = g.op("RotaryEmbedding", [k, io["position_ids"], io["cos"], io["sin"]], f"{p}/k_rotary/RotaryEmbedding",
             MS_DOMAIN, interleaved=0, num_heads=attn.n_kv_heads)
    y = make_group_query_attention(g, i, attn, q, k, v, io)  # [B, S, H*D]; writes present.{i}.*
    if attn.sub_norm:  # BitNet b1.58: RMSNorm before o_proj
        y = g.make_rms_norm(f"{p}/attn_sub_norm", y, attn.attn_sub_norm)
    return g.make_ternary_matmul(f"{p}/o_proj", y, attn.o_proj, f"{w}.o_proj")


def make_group_query_attention(g: GraphBuilder, i: int, attn, q: str, k: str, v: str, io: dict) -> str:
    """One node that writes present.{i}.* itself: com.microsoft GroupQueryAttention for the stock variant, our
    bonsai::Attention (the same inputs, outputs and cache modes, on our attention kernel) beside our custom ternary
    ops, where ORT's CPU GroupQueryAttention took a quarter of decode time at Bonsai's size."""
    op, domain, extra = (("Attention", BONSAI_DOMAIN, {}) if g.ternary_op == "custom" else
                         ("GroupQueryAttention", MS_DOMAIN, {"scale": attn.head_dim**-0.5, "do_rotary": 0}))
    name = f"/model/layers.{i}/attn/{op}"
    if cache_type(attn) == TensorProto.FLOAT16:  # --kv-cache f16: the node takes the new rows in the caches' type
        k = g.op("Cast", [k], f"{name}/CastKey", to=TensorProto.FLOAT16)
        v = g.op("Cast", [v], f"{name}/CastValue", to=TensorProto.FLOAT16)
    g.nodes.append(helper.make_node(
        op, [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", io["seqlens_k"], io["total_seq"]],
        [f"{name}/output_0", f"present.{i}.key", f"present.{i}.value"], name=name, domain=domain,
        num_heads=attn.n_heads, kv_num_heads=attn.n_kv_heads, **extra))
    return f"{name}/output_0"


def cache_type(attn) -> int:
    """The ONNX element type of an attention layer's KV cache (FLOAT16 with --kv-cache f16)."""
    return TensorProto.FLOAT16 if attn.cache.k.dtype == torch.float16 else TensorProto.FLOAT


def make_mlp(g: GraphBuilder, i: int, mlp, x: str) -> str:
    """SwiGLU:  x ─ gate_up_proj ─ Split ─┬─ gate ── Sigmoid ─ Mul ─┐
                                        │    └──────────────┘   ├─ Mul ── down_proj ─> y
                                        └─ up ───────────────────┘"""
    p, w = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp"
    gate_up = g.make_ternary_matmul(f"{p}/gate_up_proj", x, mlp.gate_up_proj, f"{w}.gate_up_proj")
    gate, up = g.node("Split", [gate_up, g.const([mlp.down_proj.in_features] * 2)], f"{p}/gate_up_proj/Split",
                      n_out=2, axis=-1)
    if mlp.mlp_act == "silu":
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/act_fn/Sigmoid")], f"{p}/act_fn/Mul")
    else:  # BitNet b1.58's ReLU^2
        relu = g.op("Relu", [gate], f"{p}/act_fn/Relu")
        act = g.op("Mul", [relu, relu], f"{p}/act_fn/Mul")
    h = g.op("Mul", [act, up], f"{p}/Mul")
    if mlp.sub_norm:  # BitNet b1.58: RMSNorm before down_proj
        h = g.make_rms_norm(f"{p}/ffn_sub_norm", h, mlp.ffn_sub_norm)
    return g.make_ternary_matmul(f"{p}/down_proj", h, mlp.down_proj, f"{w}.down_proj")


def make_shared_inputs(g: GraphBuilder, model: Transformer) -> dict:
    """Values every layer reads: RoPE tables, GroupQueryAttention's seqlens_k [B] and total_seq (scalar), both
    int32 and derived from attention_mask [B, past + S] (seqlens_k = number of attended positions - 1)."""
    half = model.args.head_dim // 2  # rotate-half layout: the tables repeat their first half
    io = {"position_ids": "position_ids",
          "cos": g.weight("model.rope.cos_cache", f32(model.rope_cos[:, :half])),
          "sin": g.weight("model.rope.sin_cache", f32(model.rope_sin[:, :half]))}
    total = g.op("ReduceSum", ["attention_mask", g.const([1])], "/model/attn_mask/ReduceSum", keepdims=0)
    seqlens = g.op("Sub", [total, g.const(1)], "/model/attn_mask/Sub")
    io["seqlens_k"] = g.op("Cast", [seqlens], "/model/attn_mask/CastSeqlens", to=TensorProto.INT32)
    shape = g.op("Shape", ["attention_mask"], "/model/attn_mask/Shape")
    width = g.op("Gather", [shape, g.const(1)], "/model/attn_mask/Gather", axis=0)
    io["total_seq"] = g.op("Cast", [width], "/model/attn_mask/CastTotal", to=TensorProto.INT32)
    return io


def io_specs(model: Transformer, cache_type: int = TensorProto.FLOAT) -> tuple[list, list]:
    """The graph's inputs and outputs; `cache_type`: the caches' element type (FLOAT16 with --kv-cache f16)."""
    a = model.args
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64

    def cache(name: str, seq: str):
        return helper.make_tensor_value_info(name, cache_type, ["batch", a.n_kv_heads, seq, a.head_dim])

    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", a.vocab_size])]
    for i in range(a.n_layers):
        inputs += [cache(f"past_key_values.{i}.{kv}", "past_seq") for kv in ("key", "value")]
        outputs += [cache(f"present.{i}.{kv}", "total_seq") for kv in ("key", "value")]
    return inputs, outputs


def build_graph(model: Transformer, ternary_op: str) -> onnx.ModelProto:
    """The whole decoder as one ONNX model (weights inline; save() moves them out when large)."""
    g = GraphBuilder(ternary_op)
    io = make_shared_inputs(g, model)
    h = g.make_embedding(model.embed_tokens, "input_ids")
    for i, layer in enumerate(model.layers):
        x = g.make_rms_norm(f"/model/layers.{i}/input_layernorm", h, layer.input_layernorm)
        h = g.op("Add", [h, make_attention(g, i, layer.self_attn, x, io)], f"/model/layers.{i}/attn/Add")
        x = g.make_rms_norm(f"/model/layers.{i}/post_attention_layernorm", h, layer.post_attention_layernorm)
        h = g.op("Add", [h, make_mlp(g, i, layer.mlp, x)], f"/model/layers.{i}/mlp/Add")
    tied = getattr(model.lm_head, "packed", None) is getattr(model.embed_tokens, "packed", False)
    logits = g.make_head(model.lm_head, g.make_rms_norm("/model/norm", h, model.norm), tied)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/model/logits/Identity"))
    inputs, outputs = io_specs(model, cache_type(model.layers[0].self_attn))
    graph = helper.make_graph(g.nodes, "bonsai", inputs, outputs, list(g.inits.values()))
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    if ternary_op == "custom":
        opsets.append(helper.make_opsetid(BONSAI_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="bonsai-export")


def save(proto: onnx.ModelProto, folder: Path, filename: str, metadata: dict[str, str]) -> list[str]:
    """Write the model (external data past EXTERNAL_DATA_LIMIT), check it, return the files written."""
    helper.set_model_props(proto, metadata)
    path = folder / filename
    external = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_LIMIT
    if external:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{filename}.data", size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    onnx.checker.check_model(str(path), full_check=False)
    return [filename, f"{filename}.data"] if external else [filename]


# ---- the folder: model, op library, onnxruntime-genai config ----


def genai_config(model: Transformer, custom_ops_library: str | None) -> dict:
    """onnxruntime-genai's config for this folder (Bonsai is not in its builder, so we write it)."""
    a = model.args
    session_options = {"log_id": "onnxruntime-genai", "provider_options": []}
    if custom_ops_library:
        session_options["custom_ops_library"] = custom_ops_library  # relative: resolved in the model folder
    decoder = {
        "session_options": session_options, "filename": ONNX_FILE, "head_size": a.head_dim, "hidden_size": a.dim,
        "num_attention_heads": a.n_heads, "num_hidden_layers": a.n_layers, "num_key_value_heads": a.n_kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    search = {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
              "max_length": model.max_seq_len, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
              "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
              "temperature": 1.0, "top_k": 1, "top_p": 1.0}
    return {"model": {"bos_token_id": a.bos_id, "context_length": model.max_seq_len, "decoder": decoder,
                      "eos_token_id": list(a.eos_ids) if len(a.eos_ids) > 1 else a.eos_ids[0],
                      "pad_token_id": a.pad_id, "type": "llama", "vocab_size": a.vocab_size},
            "search": search}


def to_folder(model: Transformer, folder: Path, cfg: ExportConfig) -> ArtifactEntry:
    """Write model.onnx (+ data, the export options in its metadata_props), the op library (custom) and
    genai_config.json; return the manifest entry."""
    import json
    import shutil

    from ..native import native_dir

    ternary_op, library = cfg.ternary_op, None
    if ternary_op == "custom":
        src = native_dir() / ORT_OPS_LIB
        if not src.is_file():
            raise BonsaiError(f"{src}: missing; the ONNX Runtime op library is built by `pip install .` (or set "
                              f"BONSAI_NATIVE_DIR to a build folder holding {ORT_OPS_LIB}), or export with "
                              f"--ternary-op stock")
        shutil.copyfile(src, folder / ORT_OPS_LIB)
        library = ORT_OPS_LIB
    log.info("onnx: building the graph (%s ternary op)", ternary_op)
    files = save(build_graph(model, ternary_op), folder, ONNX_FILE, onnx_metadata(cfg))
    (folder / GENAI_CONFIG).write_text(json.dumps(genai_config(model, library), indent=2) + "\n")
    return ArtifactEntry(type="onnx", file=ONNX_FILE, files=tuple(files), ternary_op=ternary_op,
                         genai_config=GENAI_CONFIG, op_library=library)
