"""ctypes binding of the native kernels (libbonsai_kernels.so, built from custom_ops/): packed-ternary linear,
dense weight-only linear (the output head) and KV-cache attention.

The library is looked up at $BONSAI_KERNELS_LIB (the .so file or the folder holding it), else at
bonsai_export/_native/libbonsai_kernels.so, where `pip install .` puts it. Layout and semantics are those of
bonsai_export.formats (docs/FORMAT.md); the C ABI is custom_ops/core/include/bonsai/kernels.h.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from bonsai_export import formats

LIB_NAME = "libbonsai_kernels.so"
ENV_LIB = "BONSAI_KERNELS_LIB"
ENV_FORCE_ISA = "BONSAI_FORCE_ISA"

# bonsai_status codes (kernels.h) that mean the caller passed bad arguments.
_ARGUMENT_ERRORS = {1, 2, 3, 7}

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_pools: dict[int, tuple[ctypes.c_void_p, threading.Lock]] = {}


class _Parallel(ctypes.Structure):
    """bonsai_parallel (parallel.h)."""

    _fields_ = [("parallel_for", ctypes.c_void_p), ("runtime_ctx", ctypes.c_void_p), ("num_threads", ctypes.c_int32)]


def library_path() -> Path:
    """Where the native library is expected (it may not exist)."""
    env = os.environ.get(ENV_LIB)
    if env:
        path = Path(env)
        return path / LIB_NAME if path.is_dir() else path
    return Path(__file__).resolve().parent / "_native" / LIB_NAME


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, vp = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    par = ctypes.POINTER(_Parallel)
    signatures = {
        "bonsai_last_error": (ctypes.c_char_p, []),
        "bonsai_isa_name": (ctypes.c_char_p, []),
        "bonsai_set_isa": (ctypes.c_int, [ctypes.c_char_p]),
        "bonsai_isa_supported": (ctypes.c_int, [ctypes.c_char_p]),
        "bonsai_isa_names": (ctypes.c_char_p, []),
        "bonsai_row_bytes": (i64, [i64]),
        "bonsai_ternary_linear": (ctypes.c_int, [vp, i64, i64, vp, i64, vp, i64, i32, vp, par]),
        "bonsai_ternary_linear_ex": (ctypes.c_int, [vp, i64, i64, vp, i64, vp, i32, i64, i32, vp, par]),
        "bonsai_int8_accumulate": (ctypes.c_int, [vp, i64, i64, vp, i64, i64, vp, par]),
        "bonsai_ternary_gather": (ctypes.c_int, [vp, i64, i64, i64, vp, i32, vp, i64, vp]),
        "bonsai_quantize_activations": (ctypes.c_int, [vp, i64, i64, vp, vp]),
        "bonsai_dense_linear": (ctypes.c_int, [vp, i64, i64, vp, i32, vp, i64, i32, vp, par]),
        "bonsai_attention": (ctypes.c_int, [vp, i64, i64, i64, vp, vp, i64, i64, i64, vp, par]),
        "bonsai_attention_f16": (ctypes.c_int, [vp, i64, i64, i64, vp, vp, i64, i64, i64, vp, par]),
        "bonsai_threadpool_create": (vp, [i32]),
        "bonsai_threadpool_destroy": (None, [vp]),
        "bonsai_threadpool_parallel": (_Parallel, [vp]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def _load() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            path = library_path()
            if not path.is_file():
                raise OSError(
                    f"native kernels not found at {path}; build them with `pip install .` or "
                    f"`cmake -S . -B build && cmake --build build` and set {ENV_LIB}=build/custom_ops"
                )
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            _lib = lib
        return _lib


def available() -> bool:
    """Whether the native library can be loaded."""
    try:
        _load()
    except OSError:
        return False
    return True


def isa() -> str:
    """Name of the kernel table in use: ref, avx2, avx512, neon, dotprod (or 'unavailable' if forced wrongly)."""
    return _load().bonsai_isa_name().decode()


def isa_names() -> tuple[str, ...]:
    """Every kernel table, best first (the native registry's order), supported here or not."""
    return tuple(_load().bonsai_isa_names().decode().split(","))


def isa_supported(name: str) -> bool:
    """Whether this CPU can run the named kernel table."""
    return bool(_load().bonsai_isa_supported(name.encode()))


def set_isa(name: str) -> None:
    """Switch the kernel table for this process ('auto' = best supported); raises ValueError if unusable."""
    lib = _load()
    if lib.bonsai_set_isa(name.encode()) != 0:
        raise ValueError(lib.bonsai_last_error().decode())


def _check(status: int) -> None:
    if status == 0:
        return
    message = _load().bonsai_last_error().decode()
    raise (ValueError if status in _ARGUMENT_ERRORS else RuntimeError)(message)


def _pool(threads: int | None) -> tuple[_Parallel | None, threading.Lock | None]:
    """A cached thread pool of `threads` threads (None: all usable cores), with the lock that serialises it."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"expected threads >= 1 or None, got {threads!r}")
    if threads == 1:
        return None, None
    lib = _load()
    with _lib_lock:
        if threads not in _pools:
            handle = lib.bonsai_threadpool_create(threads)
            if not handle:
                raise RuntimeError(lib.bonsai_last_error().decode())
            _pools[threads] = (handle, threading.Lock())
        handle, lock = _pools[threads]
    return lib.bonsai_threadpool_parallel(handle), lock


def _require(array: np.ndarray, name: str, dtype: type, ndim: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected {name} to be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype or array.ndim != ndim:
        raise ValueError(f"expected {name} {np.dtype(dtype).name} with {ndim} dims, got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array)


def _check_weights(packed: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"expected K > 0, got {k!r}")
    packed = _require(packed, "packed", np.uint8, 2)
    if packed.shape[1] != formats.row_bytes(int(k)) or packed.shape[0] == 0:
        raise ValueError(f"expected packed uint8 [N>0, {formats.row_bytes(int(k))}] for K={k}, got {list(packed.shape)}")
    return packed


def _call(fn, args: list, threads: int | None) -> None:
    parallel, lock = _pool(threads)
    if parallel is None:
        _check(fn(*args, None))
        return
    with lock:
        _check(fn(*args, ctypes.byref(parallel)))


def _check_scales(scales, n: int, k: int, scale_layout: int) -> np.ndarray:
    if scale_layout == formats.SCALE_LAYOUTS["block"]:
        return np.ascontiguousarray(formats.check_block_scales(scales, n, k))
    if scale_layout != formats.SCALE_LAYOUTS["channel"]:
        raise ValueError(f"expected scale_layout in {sorted(formats.SCALE_LAYOUTS.values())}, got {scale_layout!r}")
    scales = _require(scales, "scales", np.float32, 1)
    if scales.shape[0] != n:
        raise ValueError(f"expected scales float32 [{n}], got {list(scales.shape)}")
    return scales


def ternary_linear(
    x: np.ndarray, packed: np.ndarray, scales: np.ndarray, k: int, act_bits: int, threads: int | None = None,
    scale_layout: int = 0,
) -> np.ndarray:
    """y float32 [M, N] = ternary linear of x float32 [M, K] (see formats.matmul; act_bits 8 is bit-exact).
    scale_layout 0: scales float32 [N]; 1: float16 block scales [N, num_blocks(K)] (formats.matmul_blocks)."""
    packed = _check_weights(packed, k)
    x = _require(x, "x", np.float32, 2)
    n = packed.shape[0]
    if x.shape[1] != k or x.shape[0] == 0:
        raise ValueError(f"expected x float32 [M>0, {k}], got {list(x.shape)}")
    scales = _check_scales(scales, n, int(k), scale_layout)
    if act_bits not in formats.ACT_MODES.values():
        raise ValueError(f"expected act_bits in {sorted(formats.ACT_MODES.values())}, got {act_bits!r}")
    m = x.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    lib = _load()
    args = [x.ctypes.data, m, int(k), packed.ctypes.data, packed.shape[1], scales.ctypes.data, scale_layout, n,
            act_bits, y.ctypes.data]
    _call(lib.bonsai_ternary_linear_ex, args, threads)
    return y


def ternary_gather(packed: np.ndarray, scales: np.ndarray, k: int, ids, scale_layout: int = 0) -> np.ndarray:
    """Rows `ids` of a packed ternary table [N, K] as float32 [len(ids), K], W = scale * T (the embedding lookup of
    a ternary embedding; formats.gather_rows, exact)."""
    packed = _check_weights(packed, k)
    scales = _check_scales(scales, packed.shape[0], int(k), scale_layout)
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if ids.size == 0:
        raise ValueError("expected at least one id")
    out = np.empty((ids.size, int(k)), dtype=np.float32)
    _check(_load().bonsai_ternary_gather(packed.ctypes.data, packed.shape[0], int(k), packed.shape[1],
                                         scales.ctypes.data, scale_layout, ids.ctypes.data, ids.size, out.ctypes.data))
    return out


def int8_accumulate(q: np.ndarray, packed: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """Exact int32 acc [M, N] = q int8 [M, K] @ T.T, the integer core of act_bits=8."""
    packed = _check_weights(packed, k)
    q = _require(q, "q", np.int8, 2)
    if q.shape[1] != k or q.shape[0] == 0:
        raise ValueError(f"expected q int8 [M>0, {k}], got {list(q.shape)}")
    m, n = q.shape[0], packed.shape[0]
    acc = np.empty((m, n), dtype=np.int32)
    lib = _load()
    args = [q.ctypes.data, m, int(k), packed.ctypes.data, packed.shape[1], n, acc.ctypes.data]
    _call(lib.bonsai_int8_accumulate, args, threads)
    return acc


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Native per-token absmax int8 quantization: x float32 [M, K] -> (q int8 [M, K], d float32 [M])."""
    x = _require(x, "x", np.float32, 2)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected x float32 [M>0, K>0], got {list(x.shape)}")
    q = np.empty(x.shape, dtype=np.int8)
    d = np.empty(x.shape[0], dtype=np.float32)
    _check(_load().bonsai_quantize_activations(x.ctypes.data, x.shape[0], x.shape[1], q.ctypes.data, d.ctypes.data))
    return q, d


# weight_bits -> (stored dtype, weight columns for K): bf16 travels as its raw 16 bits (numpy has no bfloat16).
_RAW_BF16 = (np.uint16, np.int16)
_DENSE_WEIGHTS = {16: _RAW_BF16, 8: (np.int8,), 4: (np.uint8,)}


def _dense_scales(scales, n: int, k: int, bits: int) -> np.ndarray:
    """bits 16: float32 [N]; 8: raw bf16 bits [N, G] (scales); 4: [N, G, 2] (scale, offset);
    G = formats.dense_groups(K)."""
    groups = formats.dense_groups(k)
    want = {16: [n], 8: [n, groups], 4: [n, groups, 2]}[bits]
    dtypes = (np.float32,) if bits == 16 else _RAW_BF16
    if not isinstance(scales, np.ndarray) or scales.dtype not in dtypes or list(scales.shape) != want:
        raise ValueError(f"expected scales {'float32' if bits == 16 else 'raw bf16 uint16/int16'} {want}, got "
                         f"{getattr(scales, 'dtype', type(scales).__name__)} {list(getattr(scales, 'shape', []))}")
    return np.ascontiguousarray(scales)


def dense_linear(
    x: np.ndarray, weight: np.ndarray, scales: np.ndarray, k: int, bits: int, threads: int | None = None,
    act_bits: int = 0,
) -> np.ndarray:
    """y float32 [M, N] = x float32 [M, K] @ W.T with W in a dense_linear format (kernels.h): bits 16: raw bf16
    bits uint16/int16 [N, K], scales float32 [N]; 8: int8 [N, K], raw bf16 scales [N, G]; 4: uint8
    nibbles [N, 16 G], raw bf16 (scale, offset) [N, G, 2], G = formats.dense_groups(K). act_bits 8 (bits 8 or
    4): x quantized per group (formats.dense_matmul_i8). Float32 accumulation in a kernel-specific order."""
    if bits not in _DENSE_WEIGHTS:
        raise ValueError(f"expected bits in {sorted(_DENSE_WEIGHTS)}, got {bits!r}")
    if act_bits not in (0, 8) or (act_bits == 8 and bits == 16):
        raise ValueError(f"expected act_bits 0, or 8 with bits 8 or 4, got act_bits={act_bits!r} bits={bits}")
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"expected K > 0, got {k!r}")
    k = int(k)
    dtypes, cols = _DENSE_WEIGHTS[bits], formats.dense_row_elements(bits, k)
    if not isinstance(weight, np.ndarray) or weight.dtype not in dtypes or weight.ndim != 2:
        raise ValueError(f"expected weight {'/'.join(np.dtype(d).name for d in dtypes)} with 2 dims for bits={bits}, "
                         f"got {getattr(weight, 'dtype', type(weight).__name__)} {list(getattr(weight, 'shape', []))}")
    weight = np.ascontiguousarray(weight)
    n = weight.shape[0]
    if n == 0 or weight.shape[1] != cols:
        raise ValueError(f"expected weight [N>0, {cols}] for K={k} and bits={bits}, got {list(weight.shape)}")
    x = _require(x, "x", np.float32, 2)
    if x.shape[1] != k or x.shape[0] == 0:
        raise ValueError(f"expected x float32 [M>0, {k}], got {list(x.shape)}")
    scales = _dense_scales(scales, n, k, bits)
    m = x.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    lib = _load()
    args = [x.ctypes.data, m, k, weight.ctypes.data, bits, scales.ctypes.data, n, act_bits, y.ctypes.data]
    _call(lib.bonsai_dense_linear, args, threads)
    return y


def attention(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, threads: int | None = None
) -> np.ndarray:
    """Causal GQA of q float32 [T, H, D] (positions pos..pos+T-1) over caches [Hkv, S, D], both float32 or both
    float16, reading only the prefix [0, pos + T): out float32 [T, H, D] (kernels.h, bonsai_attention and
    bonsai_attention_f16)."""
    q = _require(q, "q", np.float32, 3)
    cache_type = np.float16 if getattr(k_cache, "dtype", None) == np.float16 else np.float32
    k_cache = _require(k_cache, "k_cache", cache_type, 3)
    v_cache = _require(v_cache, "v_cache", cache_type, 3)
    t, h, d = q.shape
    hkv, s, dk = k_cache.shape
    if v_cache.shape != k_cache.shape or dk != d:
        raise ValueError(f"expected caches [Hkv, S, {d}] of one shape, got {list(k_cache.shape)} and "
                         f"{list(v_cache.shape)}")
    if t == 0 or h == 0 or d == 0 or hkv == 0 or h % hkv:
        raise ValueError(f"expected T, H, D, Hkv > 0 and H a multiple of Hkv, got q {list(q.shape)}, "
                         f"caches {list(k_cache.shape)}")
    if not isinstance(pos, (int, np.integer)) or pos < 0 or pos + t > s:
        raise ValueError(f"expected 0 <= pos and pos + T <= {s}, got pos={pos!r}, T={t}")
    out = np.empty_like(q)
    lib = _load()
    args = [q.ctypes.data, t, h, d, k_cache.ctypes.data, v_cache.ctypes.data, hkv, s, int(pos), out.ctypes.data]
    _call(lib.bonsai_attention_f16 if cache_type == np.float16 else lib.bonsai_attention, args, threads)
    return out
