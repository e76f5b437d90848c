"""Runners: one interface over the eager model and every artifact, for `run`, `validate` and `bench`.

A runner maps (tokens[1, T] int64, input_pos[P] int64) -> logits[1, P, vocab] float32 and keeps its own KV cache,
as the model does: input_pos[0] is the position of tokens[:, 0]; [start] asks for the last position's logits only
(generation), positions(start, T) for every position (scoring).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from . import artifact as A
from . import metadata as M
from . import options
from .errors import BonsaiError
from .native import ET_OPS_LIB, native_dir

_loaded_et_ops: ctypes.CDLL | None = None


def load_et_ops() -> ctypes.CDLL:
    """Register our ExecuTorch kernels with the runtime the Python bindings use (once per process)."""
    global _loaded_et_ops
    if _loaded_et_ops is None:
        path = native_dir() / ET_OPS_LIB
        if not path.is_file():
            raise BonsaiError(f"{path}: missing; the ExecuTorch op library is built by `pip install .` "
                              f"(or set BONSAI_NATIVE_DIR to a build folder holding {ET_OPS_LIB})")
        import executorch.runtime  # noqa: F401  (loads libexecutorch.so, which our library links to)

        try:
            _loaded_et_ops = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # built for another CPU or another executorch: dlopen's reason, one line
            raise BonsaiError(f"{path}: cannot be loaded ({exc}); reinstall bonsai-export on this machine "
                              f"(`pip install --force-reinstall .`)") from None
        _loaded_et_ops.bonsai_last_error.restype = ctypes.c_char_p
    return _loaded_et_ops


def et_kernel_error() -> str:
    """Why our ExecuTorch kernel refused its last call on this thread ("" if it did not): ExecuTorch itself
    reports only an error code, the kernel's message goes to its log."""
    return load_et_ops().bonsai_last_error().decode(errors="replace")


def positions(start: int, t: int) -> torch.Tensor:
    """input_pos asking for the logits of all `t` tokens that start at `start`."""
    return torch.arange(start, start + t)


def in_calls(call, tokens: torch.Tensor, input_pos: torch.Tensor, call_tokens: int) -> torch.Tensor:
    """Feeds tokens to call(tokens, input_pos) in calls of at most call_tokens tokens, in order; returns the logits
    input_pos asks for (every position, or the last one)."""
    t, pos = tokens.shape[1], int(input_pos[0])
    every = input_pos.shape[0] == t
    logits = [call(tokens[:, c:c + call_tokens], positions(pos + c, min(call_tokens, t - c)) if every
                   else torch.tensor([pos + c])) for c in range(0, t, call_tokens)]
    return torch.cat(logits, dim=1) if every else logits[-1]


def check_fits(pos: int, t: int, max_seq_len: int) -> None:
    if pos + t > max_seq_len:
        raise BonsaiError(f"positions {pos}..{pos + t - 1} exceed the artifact's max_seq_len {max_seq_len}; "
                          f"re-export with a larger --max-seq-len")


class Runner:
    name = "runner"
    max_seq_len: int
    vocab_size: int
    bos_id: int
    eos_ids: tuple[int, ...]
    tokenizer_dir: Path

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the cache (the next call starts at position 0)."""


class EagerRunner(Runner):
    name = "eager"

    def __init__(self, model, tokenizer_dir: Path):
        self.model, self.tokenizer_dir = model, Path(tokenizer_dir)
        self.max_seq_len, self.bos_id, self.eos_ids = model.max_seq_len, model.args.bos_id, model.args.eos_ids

    def __call__(self, tokens, input_pos):
        with torch.no_grad():
            return self.model(tokens, input_pos)

    def reset(self):
        self.model.reset_cache()


class PteRunner(Runner):
    name = "pte"

    def __init__(self, folder: Path, threads: int = 0, manifest: A.Manifest | None = None):
        load_et_ops()
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.tokenizer_dir, path = Path(folder), Path(folder) / A.PTE_FILE
        if threads:
            portable_lib._unsafe_reset_threadpool(threads)
        try:
            self.program = Runtime.get().load_program(str(path))
            meta = M.PteMetadata.read(lambda name: self.program.load_method(name).execute([]), str(path))
        except (RuntimeError, ValueError) as exc:
            raise BonsaiError(f"{path}: ExecuTorch cannot load it ({exc}); run `bonsai-export verify {folder}`, or "
                              f"re-export") from None
        M.check_embedded(meta.options, manifest or A.read_manifest(folder), str(path))
        self.max_seq_len, self.call_tokens = meta.max_seq_len, meta.call_tokens
        self.bos_id, self.vocab_size, self.eos_ids = meta.bos_id, meta.vocab_size, meta.eos_ids
        self.method = self.program.load_method("forward")

    def __call__(self, tokens, input_pos):
        check_fits(int(input_pos[0]), tokens.shape[1], self.max_seq_len)
        try:
            return in_calls(lambda x, p: self.method.execute([x, p])[0], tokens, input_pos, self.call_tokens)
        except RuntimeError as exc:  # a kernel refused its inputs
            if why := et_kernel_error():
                raise BonsaiError(f"{self.tokenizer_dir / A.PTE_FILE}: {why}") from None
            raise BonsaiError(f"{self.tokenizer_dir / A.PTE_FILE}: the ExecuTorch runtime failed running it ({exc}); "
                              f"re-export the folder with this bonsai-export (its kernels may differ from the "
                              f"ones it was exported for)") from None

    # reset(): nothing to do. Attention reads only cache positions [0, input_pos + T), all written by this
    # sequence's calls, so a new sequence simply starts again at input_pos 0.


def onnx_session(model: Path, op_library: Path | None, threads: int = 0):
    """An ONNX Runtime session for an exported model; `op_library` registers our custom ops (None: stock ORT).

    A model with bonsai:: nodes opened without the library fails with our message, not ORT's bare
    "not a registered function/op"."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if op_library is not None:
        if not Path(op_library).is_file():
            raise BonsaiError(f"{op_library}: missing; this model needs our ONNX Runtime op library "
                              f"({A.ORT_OPS_LIB}, built by `pip install .` and copied into the export folder)")
        try:
            opts.register_custom_ops_library(str(op_library))
        except Exception as exc:  # dlopen failure: built for another CPU, or a damaged file
            raise BonsaiError(f"{op_library}: ONNX Runtime cannot load it ({str(exc).strip()}); re-export the "
                              f"folder with a bonsai-export installed on this machine, or use --ternary-op stock") \
                from None
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        if "bonsai" in str(exc) and op_library is None:
            raise BonsaiError(f"{model}: uses bonsai::TernaryMatMul / bonsai::DenseMatMul, custom ops of "
                              f"{A.ORT_OPS_LIB}; register it (SessionOptions.register_custom_ops_library, or "
                              f"session_options.custom_ops_library in genai_config.json), or re-export with "
                              f"--ternary-op stock for unmodified ONNX Runtime") from None
        raise BonsaiError(f"{model}: ONNX Runtime cannot load it: {exc}") from None


# The ONNX type of a cache input per --kv-cache
ONNX_CACHE_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)"}


def _check_onnx_io(session, manifest: A.Manifest, model: Path) -> int:
    """The graph's cache inputs and logits against the manifest's shape and cache type (the caches are allocated
    from the manifest's numbers); returns the graph's vocabulary size."""
    shape = manifest.model
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    want = [shape.n_kv_heads, shape.head_dim]
    if len(past) != 2 * shape.n_layers or any([p.shape[1], p.shape[3]] != want for p in past):
        raise BonsaiError(f"{model}: its caches do not have the manifest's shape ({shape.n_layers} layers, "
                          f"[kv heads, head dim] {want}); re-export the folder")
    cache_type = ONNX_CACHE_TYPES[manifest.options.kv_cache]
    if any(p.type != cache_type for p in past):
        raise BonsaiError(f"{model}: its caches are {past[0].type}, the manifest says --kv-cache "
                          f"{manifest.options.kv_cache} ({cache_type}); re-export the folder")
    vocab = session.get_outputs()[0].shape[-1]
    if not isinstance(vocab, int):
        raise BonsaiError(f"{model}: logits have no fixed vocabulary size; re-export the folder")
    return vocab


class OnnxRunner(Runner):
    """Runs model.onnx with ONNX Runtime over one preallocated KV cache per layer, [1, Hkv, max_seq_len, D], bound
    as both past_key_values.* and present.* (GroupQueryAttention's shared-buffer mode, as onnxruntime-genai runs
    it): each call writes only its new positions in place, instead of copying the whole past into a new present
    per layer and token (decode 39.5 -> 55 tokens/s at 2 threads, full size). The cost: GroupQueryAttention makes
    much of the full-length caches resident from the first call (peak RSS +89 MB over the copying runner on a
    128 + 128-token run at max_seq_len 2048), where the copying runner's grow with the context and hold past and
    present, twice the context, at each call."""

    name = "onnx"

    def __init__(self, folder: Path, manifest: A.Manifest, threads: int = 0):
        import numpy as np

        entry, shape = manifest.artifact("onnx"), manifest.model
        self.tokenizer_dir, self.name = Path(folder), f"onnx-{entry.ternary_op}"
        self.max_seq_len, self.bos_id, self.eos_ids = shape.max_seq_len, shape.bos_id, shape.eos_ids
        library = Path(folder) / entry.op_library if entry.op_library else None
        self.model = Path(folder) / entry.file
        self.session = onnx_session(self.model, library, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        M.check_embedded(M.onnx_options(props, str(self.model)), manifest, str(self.model))
        self.vocab_size = _check_onnx_io(self.session, manifest, self.model)
        self.cache_dtype = {"f32": np.float32, "f16": np.float16}[manifest.options.kv_cache]
        self._np, self.filled = np, 0
        self.binding = self.session.io_binding()
        self.binding.bind_output("logits")  # first: get_outputs() lists outputs in binding order
        self._caches = self._bind_caches(shape)  # keeps the arrays alive while ORT points into them

    def _bind_caches(self, shape: A.ModelShape) -> list:
        import onnxruntime as ort

        caches = []
        for i in range(shape.n_layers):
            for kv in ("key", "value"):
                cache = self._np.zeros((1, shape.n_kv_heads, self.max_seq_len, shape.head_dim), dtype=self.cache_dtype)
                value = ort.OrtValue.ortvalue_from_numpy(cache)
                self.binding.bind_ortvalue_input(f"past_key_values.{i}.{kv}", value)
                self.binding.bind_ortvalue_output(f"present.{i}.{kv}", value)
                caches.append((cache, value))
        return caches

    def reset(self):
        self.filled = 0

    def __call__(self, tokens, input_pos):
        pos = int(input_pos[0])
        check_fits(pos, tokens.shape[1], self.max_seq_len)
        if pos > self.filled:
            raise BonsaiError(f"input_pos {pos}: the cache holds only {self.filled} positions (call in order)")
        # pos < filled rewinds: attention reads positions [0, pos + t), and this call rewrites [pos, pos + t).
        np, t = self._np, tokens.shape[1]
        self.binding.bind_cpu_input("input_ids", tokens.numpy().astype(np.int64))
        self.binding.bind_cpu_input("attention_mask", np.ones((1, pos + t), dtype=np.int64))
        self.binding.bind_cpu_input("position_ids", np.arange(pos, pos + t, dtype=np.int64)[None])
        self.binding.bind_output("logits")  # unallocated again: its shape follows T
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as exc:  # onnxruntime's Fail: a kernel refused its inputs; keep the kernel's own words
            why = str(exc).split("Status Message: ")[-1].strip()
            raise BonsaiError(f"{self.model}: ONNX Runtime failed running it: {why}") from None
        self.filled = pos + t
        logits = self.binding.get_outputs()[0].numpy()
        return torch.from_numpy(logits[:, t - input_pos.shape[0]:])  # the graph gives all T; keep the last P


def _open_artifact(folder: Path, threads: int, backend: str | None) -> Runner:
    manifest = A.read_manifest(folder)
    A.check_files(folder, manifest)
    kinds = manifest.kinds
    if backend is not None and backend not in kinds:
        raise BonsaiError(f"{folder}: holds {', '.join(kinds)}, not {backend}; export with --format {backend}")
    if "pte" in kinds and backend in (None, "pte"):
        runner = PteRunner(folder, threads, manifest)
    elif "onnx" in kinds:
        runner = OnnxRunner(folder, manifest, threads)
    elif "gguf" in kinds:
        raise BonsaiError(f"{folder}: holds a GGUF file ({A.GGUF_FILE}), which bonsai-export does not run; run it "
                          f"with llama.cpp (llama-cli -m {Path(folder) / A.GGUF_FILE}), or export --format pte or "
                          f"onnx to run and validate here")
    else:
        raise BonsaiError(f"{folder}: holds {', '.join(kinds) or 'no artifact'}; this version runs pte and onnx")
    _check_against_manifest(runner, manifest.model, folder)
    return runner


def _check_against_manifest(runner: Runner, shape: A.ModelShape, folder: Path) -> None:
    """The ids and sizes the manifest and the tokenizer carry must be the model's own before any is used."""
    from .tokenizer import Tokenizer

    for key in ("vocab_size", "max_seq_len", "bos_id", "eos_ids"):
        said, model = getattr(shape, key), getattr(runner, key)
        if said != model:
            show = (lambda v: list(v)) if key == "eos_ids" else (lambda v: v)
            raise BonsaiError(f"{folder / A.MANIFEST}: {key} {show(said)} but the model says {show(model)}; "
                              f"re-export the folder")
    if not all(0 <= i < runner.vocab_size for i in (runner.bos_id, *runner.eos_ids)):
        raise BonsaiError(f"{folder}: BOS/EOS ids {[runner.bos_id, *runner.eos_ids]} are outside the model's "
                          f"vocabulary of {runner.vocab_size}; re-export the folder")
    pieces = Tokenizer(folder).vocab_size
    if pieces > runner.vocab_size:
        raise BonsaiError(f"{folder}: the tokenizer has {pieces} tokens but the model's vocab_size is "
                          f"{runner.vocab_size} (tokenizer of another model?); re-export the folder")


def open_runner(path: str | Path, act_quant: str | None = None, max_seq_len: int | None = None,
                threads: int = 0, backend: str | None = None) -> Runner:
    """An artifact folder opens its runtime (`backend` pte or onnx picks one in a folder holding both); anything
    else is a checkpoint run by the eager model (`act_quant` None: the mode its own model computes, int8 for BitNet
    formats, else none). `threads`: the runtime's threads on this machine (0: its default)."""
    threads = options.threads(threads)
    if A.is_artifact(path):
        return _open_artifact(Path(path), threads, backend)
    from . import checkpoint
    from .model import from_checkpoint

    ckpt = checkpoint.load(path)
    return EagerRunner(from_checkpoint(ckpt, act_quant=act_quant, max_seq_len=max_seq_len), ckpt.folder)
