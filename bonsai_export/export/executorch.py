"""Lower the export-ready model to an ExecuTorch program (.pte).

Stages: torch.export (dynamic prompt length) -> edge dialect with XNNPACK delegating everything but
bonsai::ternary_linear -> ExecuTorch program with the LLM runner's metadata as constant methods.
KV caches are plain buffers updated with index_copy_ (no llama::update_cache / custom_sdpa), so the .pte runs
on the bare runtime (libexecutorch.so + our op library), with no libtorch: a phone runner needs nothing more.
"""

from __future__ import annotations

import logging

import torch
from torch.export import Dim, export

from .. import artifact as A
from ..metadata import PteMetadata
from ..model import Transformer
from .stages import stage

log = logging.getLogger(__name__)


# Most tokens one forward call takes (PteMetadata.call_tokens); longer prompts are fed in calls of this size. The
# memory planner sizes every activation, the logits among them, for the longest call: at Bonsai's size and
# max_seq_len 2048 a call of up to 2048 tokens planned 877 MB, which a runtime that allocates planned memory up
# front (ExecuTorch's Python and Java bindings) makes resident. Prefill speed is flat above ~64 tokens per call.
MAX_CALL_TOKENS = 256
# File offset alignment of every constant (and segment) of the .pte: a page. Weights that started 0x180 bytes
# past a 512-byte boundary, as ExecuTorch's default 16-byte alignment happened to place all of Ternary-Bonsai-1.7B's,
# decoded ~15% slower on an AVX-512 Xeon than the same weights at a page boundary.
PTE_TENSOR_ALIGNMENT = 4096


def call_tokens(model: Transformer) -> int:
    return min(MAX_CALL_TOKENS, model.max_seq_len)


def metadata(model: Transformer, cfg: A.ExportConfig) -> PteMetadata:
    a = model.args
    return PteMetadata(call_tokens=call_tokens(model), max_seq_len=model.max_seq_len, vocab_size=a.vocab_size,
                         n_layers=a.n_layers, bos_id=a.bos_id, eos_ids=tuple(a.eos_ids), options=cfg)


def to_pte(model: Transformer, cfg: A.ExportConfig) -> bytes:
    """The program, with the runner metadata and `cfg` (the options it was exported with) as constant methods."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    # Example sizes >= 2 and different from each other, else torch.export specialises or unifies the dynamic dims.
    example = (torch.tensor([[model.args.bos_id] * 3]), torch.tensor([0, 1]))
    seq = Dim("seq", min=1, max=call_tokens(model))
    n_logits = Dim("n_logits", min=1, max=call_tokens(model))
    with stage("export (torch.export)"), torch.no_grad():
        program = export(model, example, dynamic_shapes=({1: seq}, {0: n_logits}), strict=False)
    with stage("lower (XNNPACK, our ops)"):
        edge = to_edge_transform_and_lower(
            program, partitioner=[XnnpackPartitioner()], constant_methods=metadata(model, cfg).methods(),
            compile_config=EdgeCompileConfig(_check_ir_validity=False))
    # The caches get no initial state: bonsai::attention reads only positions [0, input_pos + T), all written by
    # the sequence itself, and memory the runtime never initializes is never touched, so the resident memory of
    # the caches grows with the context instead of holding max_seq_len positions from load on (192 MiB at 2048).
    # The reinplace pass keeps index_copy_ in place.
    # Every constant starts on a page (PTE_TENSOR_ALIGNMENT): the runners load the file page-aligned, so the
    # weights keep that alignment in memory, and the decode GEMV streams them measurably faster from there.
    with stage("serialize (.pte)"):
        config = ExecutorchBackendConfig(run_reinplace_pass=True, segment_alignment=PTE_TENSOR_ALIGNMENT,
                                         constant_tensor_alignment=PTE_TENSOR_ALIGNMENT)
        return edge.to_executorch(config).buffer
