"""The ONNX nodes of the export, one choke point per kind (as onnxruntime-genai's builder has): GraphBuilder emits
each ternary matmul (bonsai::TernaryMatMul or stock MatMulNBits, t2 or t2g), embedding, head, norm and constant
with deterministic names; export/onnx.py composes them into the model's graph (its docstring gives the naming and
the I/O).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .. import formats, ops
from ..artifact import TERNARY_OPS
from ..dense import Bf16Embedding, DenseLinear, Int8Embedding
from ..errors import BonsaiError
from ..ternary_layers import BlockTernaryEmbedding, BlockTernaryLinear, TernaryLinear

log = logging.getLogger(__name__)

OPSET = 23  # RMSNormalization
IR_VERSION = 10
MS_DOMAIN = "com.microsoft"
BONSAI_DOMAIN = "bonsai"  # our custom-op library (custom_ops/onnxruntime)

# MatMulNBits (stock variant): bits=2, code = t + 2 with the default zero point 2, every block of a row carries the
# channel's scale (exact). Block size by measurement (docs/FORMAT.md): 64 is the fastest prefill at Bonsai's shapes
# and within 10% of 128 in decode, and it halves the activation-quantization block; 32 is ~1.3x slower, 256 has no
# fast path. accuracy_level 4 = int8 activations per block (levels 0/1 are ~150x slower).
NBITS_BLOCK = 64
NBITS_ACCURACY_LEVEL = 4


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a.detach().float().numpy() if torch.is_tensor(a) else a, dtype=np.float32)


def nbits_pack(q: np.ndarray, bits: int, block: int, block_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed integer weights q[N, K] (|q| < 2**(bits-1)) -> MatMulNBits (B uint8 [N, n_blocks, block*bits/8],
    scales f32 [N * n_blocks]) with the default zero point 2**(bits-1): code = q + zero point.

    Element e of a block sits in byte e * bits // 8 at bit (e * bits) % 8; padding past K is the zero point
    (= weight 0). block_scales: [N, n_blocks] (or [N], repeated over the blocks)."""
    n, k = q.shape
    n_blocks, zp, per_byte = -(-k // block), 1 << (bits - 1), 8 // bits
    codes = np.full((n, n_blocks * block), zp, dtype=np.uint8)
    codes[:, :k] = (q.astype(np.int16) + zp).astype(np.uint8)
    lanes = codes.reshape(n, n_blocks, block // per_byte, per_byte)
    packed = np.zeros(lanes.shape[:3], dtype=np.uint8)
    for e in range(per_byte):
        packed |= lanes[..., e] << (bits * e)
    scales = f32(block_scales)
    if scales.ndim == 1:
        scales = np.repeat(scales[:, None], n_blocks, axis=1)
    return packed, np.ascontiguousarray(scales.reshape(-1))


class GraphBuilder:
    """Accumulates nodes and initializers; every op goes through node(), every ternary matmul through
    make_ternary_matmul()."""

    def __init__(self, ternary_op: str):
        if ternary_op not in TERNARY_OPS:
            raise BonsaiError(f"--ternary-op: expected one of {', '.join(TERNARY_OPS)}, got {ternary_op!r}")
        self.ternary_op = ternary_op
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}

    # ---- primitives ----
    def node(self, op: str, inputs: list[str], name: str, domain: str = "", n_out: int = 1, **attrs) -> list[str]:
        outs = [f"{name}/output_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def op(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.node(op, inputs, name, domain, **attrs)[0]

    def weight(self, name: str, array: np.ndarray) -> str:
        if name in self.inits:
            raise BonsaiError(f"internal: initializer {name} defined twice")
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = f"/model/constants/{arr.dtype.name}/{'_'.join(map(str, arr.ravel().tolist())) or 'empty'}"
        if arr.ndim:
            name += f"/{list(arr.shape)}"
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(arr, name)
        return name

    # ---- choke point of every ternary projection ----
    def make_ternary_matmul(self, name: str, x: str, linear: TernaryLinear, weight_name: str) -> str:
        """x f32 [..., K] -> y f32 [..., N] = ternary linear of `linear` (custom: bonsai::TernaryMatMul over the
        t2 buffers; stock: MatMulNBits bits=2 over the same values)."""
        k = linear.in_features
        if linear.scale_layout == formats.SCALE_LAYOUTS["block"]:
            return self.make_t2g_matmul(name, x, linear, weight_name)
        if self.ternary_op == "custom":
            packed = self.weight(f"{weight_name}.packed", linear.packed.numpy())
            scales = self.weight(f"{weight_name}.scales", f32(linear.scales))
            return self.op("TernaryMatMul", [x, packed, scales], f"{name}/TernaryMatMul", BONSAI_DOMAIN,
                           in_features=k, act_bits=linear.act_bits)
        q = formats.unpack(linear.packed.numpy(), k)
        return self.make_matmul_nbits(name, x, q, 2, NBITS_BLOCK, linear.scales.numpy(), weight_name)

    def make_matmul_nbits(self, name: str, x: str, q: np.ndarray, bits: int, block: int, scales, weight_name: str):
        b, s = nbits_pack(q, bits, block, scales)
        return self.op("MatMulNBits", [x, self.weight(f"{weight_name}.qweight", b),
                                       self.weight(f"{weight_name}.scales", s)],
                       f"{name}/MatMulNBits", MS_DOMAIN, K=q.shape[1], N=q.shape[0], bits=bits, block_size=block,
                       accuracy_level=NBITS_ACCURACY_LEVEL)


    # ---- block-scaled t2g (Ternary-Bonsai): linears, a tied or untied head, the embedding ----
    def shared_weight(self, name: str, make) -> str:
        """An initializer that the embedding and a tied head both read: made once, by the first reader."""
        return name if name in self.inits else self.weight(name, make())

    def t2g_tensors(self, linear, weight_name: str, matmul: bool = True) -> tuple[str, ...]:
        """custom: (packed u8 [N, row_bytes], scales f16 [N, blocks]); stock: MatMulNBits' (B u8 [N, blocks, 32],
        scales f32 [N * blocks], and for a matmul (not the embedding's gather) zero_points u8
        [N, ceil(blocks / 4)]) from formats.matmul_nbits_weights."""
        packed, scales = linear.packed.numpy(), linear.scales.numpy()
        if self.ternary_op == "custom":
            return (self.shared_weight(f"{weight_name}.packed", lambda: packed),
                    self.shared_weight(f"{weight_name}.scales", lambda: scales))
        names = (f"{weight_name}.qweight", f"{weight_name}.scales", f"{weight_name}.zero_points")[:3 if matmul else 2]
        if any(n not in self.inits for n in names):
            for n, a in zip(names, formats.matmul_nbits_weights(packed, scales, linear.in_features)):
                self.shared_weight(n, lambda: a)
        return names

    def make_t2g_matmul(self, name: str, x: str, linear: BlockTernaryLinear, weight_name: str) -> str:
        k, n = linear.in_features, linear.out_features
        if self.ternary_op == "custom":
            return self.op("TernaryMatMul", [x, *self.t2g_tensors(linear, weight_name)], f"{name}/TernaryMatMul",
                           BONSAI_DOMAIN, in_features=k, act_bits=linear.act_bits, scale_layout=linear.scale_layout)
        return self.op("MatMulNBits", [x, *self.t2g_tensors(linear, weight_name)], f"{name}/MatMulNBits",
                       MS_DOMAIN, K=k, N=n, bits=formats.NBITS_BITS, block_size=formats.BLOCK_K,
                       accuracy_level=NBITS_ACCURACY_LEVEL)

    def make_t2g_embedding(self, module: BlockTernaryEmbedding, input_ids: str) -> str:
        """Rows of the packed table the head's matmul reads (custom: t2; stock: MatMulNBits' B), unpacked by a
        [256, 4] byte -> trits table, times their widened block scales; no float copy of the table is stored:

            input_ids ─ Gather(packed) ─ Cast ─ Gather(byte trits) ─ Reshape [B, S, blocks, 128] ─┐   (t2: Transpose
                      └ Gather(scales [V, blocks]) ─ Cast ─ Unsqueeze ─────────────────────────── Mul ─ Reshape ─> h
                                                                                       planes to K order first)
        """
        p, nb = "/model/embed_tokens", formats.num_blocks(module.dim)
        table = BlockTernaryLinear(module.dim, module.packed.shape[0], act_bits=0)
        table.packed, table.scales = module.packed, module.scales
        names = self.t2g_tensors(table, "model.embed_tokens", matmul=False)
        rows = self.op("Cast", [self.op("Gather", [names[0], input_ids], f"{p}/Gather")], f"{p}/CastRows",
                       to=TensorProto.INT32)
        custom = self.ternary_op == "custom"
        byte_trits = formats.byte_trits(formats.CODE_OFFSET if custom else formats.NBITS_ZERO_POINT)
        trits = self.op("Gather", [self.weight("model.embed_tokens.byte_trits", byte_trits), rows],
                        f"{p}/GatherTrits")  # [B, S, row_bytes (or blocks, 32), 4]
        trits = self.op("Reshape", [trits, self.const([0, 0, nb, formats.LANES, 4])], f"{p}/ReshapeTrits")
        if custom:  # t2: byte j holds weight 32 i + j in plane i
            trits = self.op("Transpose", [trits], f"{p}/Transpose", perm=[0, 1, 2, 4, 3])
        trits = self.op("Reshape", [trits, self.const([0, 0, nb, formats.BLOCK_K])], f"{p}/ReshapeBlocks")
        scales = names[1] if custom else self.op("Reshape", [names[1], self.const([-1, nb])], f"{p}/ReshapeScales")
        s = self.op("Cast", [self.op("Gather", [scales, input_ids], f"{p}/GatherScales")], f"{p}/CastScales",
                    to=TensorProto.FLOAT)
        s = self.op("Unsqueeze", [s, self.const([-1])], f"{p}/Unsqueeze")
        rows = self.op("Reshape", [self.op("Mul", [trits, s], f"{p}/Mul"), self.const([0, 0, nb * formats.BLOCK_K])],
                       f"{p}/Reshape")
        if nb * formats.BLOCK_K == module.dim:
            return rows
        return self.op("Slice", [rows, self.const([0]), self.const([module.dim]), self.const([-1])], f"{p}/Slice")

    def make_qk_norm(self, name: str, x: str, norm, heads: int, head_dim: int) -> str:
        """Qwen3's per-head RMSNorm of q or k [B, S, heads * head_dim] over head_dim, before RoPE."""
        x = self.op("Reshape", [x, self.const([0, 0, heads, head_dim])], f"{name}/Reshape")
        x = self.make_rms_norm(name, x, norm)
        return self.op("Reshape", [x, self.const([0, 0, heads * head_dim])], f"{name}/ReshapeBack")

    # ---- dense parts ----
    def make_embedding(self, module, input_ids: str) -> str:
        """input_ids [B, S] -> h f32 [B, S, dim]."""
        if isinstance(module, BlockTernaryEmbedding):
            return self.make_t2g_embedding(module, input_ids)
        if isinstance(module, Bf16Embedding):
            rows = self.op("Gather", [self.weight("model.embed_tokens.weight", to_bf16_array(module.weight)),
                                      input_ids], "/model/embed_tokens/Gather")
            return self.op("Cast", [rows], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
        if isinstance(module, Int8Embedding):
            return self.make_int8_embedding(module, input_ids)
        raise BonsaiError(f"--format onnx: embedding module {type(module).__name__} is not supported")

    def make_int8_embedding(self, module: Int8Embedding, input_ids: str) -> str:
        """The int8 rows widened by their group scales (docs/FORMAT.md, "Dense weights"):

            input_ids ─ Gather(qweight int8 [V, D]) ─ Cast ────────────────────────────────┐
                      └ Gather(scales bf16 [V, G]) ─ Cast ─ Gather(column_group, axis -1) ─ Mul ─> h [B, S, D]
        """
        p = "/model/embed_tokens"
        q = self.op("Gather", [self.weight("model.embed_tokens.qweight", module.qweight.numpy()), input_ids],
                    f"{p}/Gather")
        s = self.op("Gather", [self.weight("model.embed_tokens.scales", to_bf16_array(module.scales)), input_ids],
                    f"{p}/GatherScales")
        s = self.op("Cast", [s], f"{p}/CastScales", to=TensorProto.FLOAT)  # [B, S, G]
        groups = self.weight("model.embed_tokens.column_group", module.column_group.numpy())  # int64 [D]
        s = self.op("Gather", [s, groups], f"{p}/SpreadScales", axis=-1)
        return self.op("Mul", [self.op("Cast", [q], f"{p}/Cast", to=TensorProto.FLOAT), s], f"{p}/Mul")

    def make_head(self, head: DenseLinear, x: str, tied: bool = False) -> str:
        """x f32 [B, S, dim] -> logits f32 [B, S, vocab] (weight-only formats, float activations).

        custom: one bonsai::DenseMatMul node over the DenseLinear buffers (bf16, or int8 / int4 codes with bf16
                group scales).
        stock:  bf16 -> Cast(W^T bf16 -> f32) + MatMul (exact); int8 -> MatMulNBits bits=8 with blocks of
                DENSE_GROUP, the same codes (+ the default zero point) and the group scales widened to f32: the
                custom op's weights exactly; int4 -> make_int4_stock_head, the custom op's weights within a
                float rounding. MatMulNBits quantizes activations to int8 per block (accuracy_level 4), which the
                custom op does not."""
        if isinstance(head, BlockTernaryLinear):  # Ternary-Bonsai: the t2g table, shared with a tied embedding
            return self.make_t2g_matmul("/lm_head", x, head, "model.embed_tokens" if tied else "lm_head")
        k, bits, w = head.in_features, head.bits, head.weight
        if self.ternary_op == "custom":
            weight = to_bf16_array(w) if bits == 16 else w.numpy()
            scales = f32(head.scales) if bits == 16 else to_bf16_array(head.scales)
            inputs = [x, self.weight("lm_head.weight", weight), self.weight("lm_head.scales", scales)]
            act = {"act_bits": head.act_bits} if head.act_bits else {}  # absent: float, as before the attribute
            return self.op("DenseMatMul", inputs, "/lm_head/DenseMatMul", BONSAI_DOMAIN, in_features=k,
                           weight_bits=bits, **act)
        if bits == 16:
            if not bool((head.scales == 1).all()):
                raise BonsaiError("internal: a bf16 head must have unit scales")
            wt = self.weight("lm_head.weight_t", np.ascontiguousarray(to_bf16_array(w).T))  # bf16 [K, vocab]
            return self.op("MatMul", [x, self.op("Cast", [wt], "/lm_head/CastWeight", to=TensorProto.FLOAT)],
                           "/lm_head/MatMul")
        if bits == 8:
            return self.make_matmul_nbits("/lm_head", x, w.numpy(), 8, formats.DENSE_GROUP, f32(head.scales),
                                          "lm_head")
        return self.make_int4_stock_head(head, x)

    def make_int4_stock_head(self, head: DenseLinear, x: str) -> str:
        """The int4 head (W = q * s + o per group) on stock ops, as W x = s (q - 8) x + (o + 8 s) * (sum of x over
        the group): MatMulNBits bits=4 over the codes with its default zero point 8 (its fast path; float zero
        points -o / s would be one node but measured 13x slower), plus the offsets through the group sums.

            x ─┬─ MatMulNBits(q, s) ──────────────────────────────────────────┐
               └─ MatMul(group indicator [K, G]) ─ MatMul(o + 8 s [G, vocab]) ─ Add ─> logits
        """
        k, g = head.in_features, -(-head.in_features // formats.DENSE_GROUP)
        pairs = head.scales.double()  # [vocab, G, 2]
        codes = ops.unpack_int4(head.weight, k).numpy().astype(np.int16) - 8  # nbits_pack adds 8 back
        y = self.make_matmul_nbits("/lm_head", x, codes, 4, formats.DENSE_GROUP, f32(pairs[..., 0]), "lm_head")
        indicator = np.zeros((k, g), np.float32)
        indicator[np.arange(k), np.arange(k) // formats.DENSE_GROUP] = 1
        sums = self.op("MatMul", [x, self.weight("lm_head.group_indicator", indicator)], "/lm_head/GroupSums/MatMul")
        offsets = f32((pairs[..., 1] + 8 * pairs[..., 0]).T)  # [G, vocab]
        bias = self.op("MatMul", [sums, self.weight("lm_head.group_offsets", offsets)], "/lm_head/Offsets/MatMul")
        return self.op("Add", [y, bias], "/lm_head/Add")

    def make_rms_norm(self, name: str, x: str, norm) -> str:
        w = self.weight(f"{name.strip('/').replace('/', '.')}.weight", f32(norm.weight))
        return self.op("RMSNormalization", [x, w], f"{name}/RMSNormalization", axis=-1, epsilon=norm.eps,
                       stash_type=1)


def to_bf16_array(weight: torch.Tensor) -> np.ndarray:
    """bf16 tensor -> numpy array numpy_helper stores as BFLOAT16 (via ml_dtypes, which onnx depends on)."""
    import ml_dtypes

    return weight.to(torch.bfloat16).view(torch.int16).numpy().view(ml_dtypes.bfloat16)


# ---- decoder layers ----
