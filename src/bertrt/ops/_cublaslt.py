"""A minimal ctypes binding of cuBLASLt's matmul with an epilogue, for what PyTorch's public API lacks.

PyTorch runs cuBLASLt with a bias epilogue for ``F.linear`` but exposes no GEMM + GELU in one call.
cuBLASLt's GELU_BIAS epilogue runs inside cuBLAS' own Hopper GEMM kernels (``nvjet_sm90_..._gelubias``
in a profile) at close to their speed, where the fused Triton GEMM's epilogue costs main-loop time:
at 49,152 x 4096 x 1024 on an H200, 646 us against 777 for the Triton GEMM and 574 for cuBLAS
without any epilogue (benchmarks/results/h200/ffn_up_projection.json).

The library is the cuBLASLt that torch's CUDA build has already loaded (found in the process's
memory map), so there is one copy in the process; it is opened on first use, never on import.
Enum values and struct layouts are those of ``cublasLt.h`` (stable across CUDA 11-13).

Row-major ``out = epilogue(x @ W.T + b)`` for fp16/bf16 with fp32 accumulation, optionally added
into ``out`` (beta = 1). Plans (descriptors + one of the heuristic's algorithms, its first by
default) are cached per problem; the bias pointer is set per call, which is host-only work and safe
inside CUDA graph capture. ``heuristic_count`` says how many algorithms the heuristic offers for a
problem, so that a tuner can time each (FasterTransformer's GEMM tuning).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import threading

import torch

_COMPUTE_32F = 68  # cublasComputeType_t CUBLAS_COMPUTE_32F
_CUDA_DTYPES = {torch.float16: 2, torch.bfloat16: 14}  # cudaDataType CUDA_R_16F, CUDA_R_16BF
_CUDA_R_8F_E4M3 = 28
_TYPE_CODES = {**_CUDA_DTYPES, torch.float8_e4m3fn: _CUDA_R_8F_E4M3}
_CUDA_R_32F = 0
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
# cublasLtMatmulDescAttributes_t of fp8 products: per-tensor scale pointers (device fp32), fast accumulation
# (no periodic promotion of the tensor cores' partial sums), the bias vector's type.
_DESC_A_SCALE_POINTER, _DESC_B_SCALE_POINTER, _DESC_D_SCALE_POINTER = 17, 18, 20
_DESC_FAST_ACCUM, _DESC_BIAS_DATA_TYPE = 25, 26
EPILOGUE_DEFAULT, EPILOGUE_BIAS, EPILOGUE_GELU_BIAS = 1, 4, 36  # cublasLtEpilogue_t
_BIAS_EPILOGUES = (EPILOGUE_BIAS, EPILOGUE_GELU_BIAS)
_PREF_MAX_WORKSPACE_BYTES = 1
WORKSPACE_BYTES = 32 << 20  # an upper bound offered to the heuristic; allocated once per GPU
ALIGNMENT = 16  # bytes: every pointer and row stride must be a multiple (the heuristic assumes it)


class CublasLtError(RuntimeError):
    """cuBLASLt is missing or refused a call; the message names the function and status."""


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def _loaded_library_path() -> str | None:
    """The path of the libcublasLt already mapped into this process (torch's), if any."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "/libcublasLt.so" in path:
                    return path
    except OSError:
        pass
    return None


@functools.cache
def library() -> ctypes.CDLL:
    """cuBLASLt, with the argument types of the functions used here.

    Raises:
        CublasLtError: no cuBLASLt in this process or on the library path (a CPU-only torch).
    """
    if not torch.cuda.is_available():
        raise CublasLtError("cuBLASLt needs a CUDA GPU and a CUDA build of torch")
    candidates = [_loaded_library_path(), ctypes.util.find_library("cublasLt"), "libcublasLt.so.13",
                  "libcublasLt.so.12"]
    for name in filter(None, candidates):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise CublasLtError("cannot find libcublasLt (looked in this process and on the library path)")
    p, i32, u64, i64, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "cublasLtCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulDescCreate": [ctypes.POINTER(p), i32, i32],
        "cublasLtMatmulDescSetAttribute": [p, i32, p, size],
        "cublasLtMatrixLayoutCreate": [ctypes.POINTER(p), i32, u64, u64, i64],
        "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulPreferenceSetAttribute": [p, i32, p, size],
        "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i32, ctypes.POINTER(_HeuristicResult),
                                           ctypes.POINTER(i32)],
        "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, p, p, size, p],
        "cublasLtMatmulDescDestroy": [p],
        "cublasLtMatrixLayoutDestroy": [p],
        "cublasLtMatmulPreferenceDestroy": [p],
    }
    for fn, argtypes in signatures.items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = i32
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"{what} returned cuBLAS status {status}")


class _Device:
    """One cuBLASLt handle and workspace per GPU."""

    def __init__(self, device: torch.device):
        if torch.cuda.is_current_stream_capturing():
            # The workspace would come from the graph's private memory pool.
            raise CublasLtError("the first cuBLASLt call on a GPU must run outside CUDA graph capture")
        lib = library()
        self.handle = ctypes.c_void_p()
        with torch.cuda.device(device):
            _check(lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        # Allocated here, outside any graph capture (plans are made on a first, eager call).
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)


_DEVICES: dict[int, _Device] = {}
_LOCK = threading.Lock()


class Plan:
    """``out = epilogue(x @ W.T + bias) [+ out]`` for one problem on one GPU, with the ``algorithm``-th
    of the heuristic's suggestions (0: its first choice)."""

    def __init__(self, device: torch.device, m: int, n: int, k: int, dtype: torch.dtype, epilogue: int,
                 bias: torch.Tensor | None, *, accumulate: bool = False, algorithm: int = 0,
                 operand_dtype: torch.dtype | None = None, out_dtype: torch.dtype | None = None,
                 fast_accum: bool = False):
        lib = library()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _DEVICES:
            _DEVICES[index] = _Device(torch.device("cuda", index))
        self.device = _DEVICES[index]
        self.epilogue = epilogue
        # dtype: of C and the bias; operands (x, W) and D may be fp8 (e4m3) with per-tensor scales.
        cuda_type = _CUDA_DTYPES[dtype]
        operand_type = _TYPE_CODES[operand_dtype or dtype]
        out_type = _TYPE_CODES[out_dtype or dtype]
        self.scaled = operand_type == _CUDA_R_8F_E4M3
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _CUDA_R_32F),
               "cublasLtMatmulDescCreate")
        # Row-major out (M, N) is column-major (N, M): out^T = W @ x^T, so A = W (stored (N, K)
        # row-major = (K, N) column-major, transposed) and B = x ((K, M) column-major, as is).
        for attr, value in ((_DESC_TRANSA, _OP_T), (_DESC_TRANSB, _OP_N), (_DESC_EPILOGUE, epilogue)):
            self._set(attr, ctypes.c_int32(value))
        if self.scaled:
            self._set(_DESC_FAST_ACCUM, ctypes.c_int8(1 if fast_accum else 0))
            if epilogue in _BIAS_EPILOGUES:
                self._set(_DESC_BIAS_DATA_TYPE, ctypes.c_int32(cuda_type))
        if bias is not None:
            self.set_bias(bias)
        self.layouts = []
        for rows, cols, type_ in ((k, n, operand_type), (k, m, operand_type), (n, m, cuda_type), (n, m, out_type)):
            layout = ctypes.c_void_p()  # A, B, C, D
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), type_, rows, cols, rows),
                   "cublasLtMatrixLayoutCreate")
            self.layouts.append(layout)
        results = _heuristic(self.device, self.desc, self.layouts, algorithm + 1)
        if len(results) <= algorithm:
            raise CublasLtError(f"cuBLASLt offers {len(results)} algorithms for M={m} N={n} K={k} {dtype} "
                                f"epilogue {epilogue}, not #{algorithm}")
        self.heuristic = results[algorithm]
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(1.0 if accumulate else 0.0)

    def destroy(self) -> None:
        """Free the descriptors (host memory only: graphs that captured this plan's launches keep
        working, since a captured launch no longer reads them)."""
        lib = library()
        for layout in self.layouts:
            lib.cublasLtMatrixLayoutDestroy(layout)
        lib.cublasLtMatmulDescDestroy(self.desc)
        self.layouts = []

    def _set(self, attr: int, value: ctypes._SimpleCData) -> None:
        _check(library().cublasLtMatmulDescSetAttribute(self.desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
               "cublasLtMatmulDescSetAttribute")

    def set_bias(self, bias: torch.Tensor) -> None:
        self._set(_DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))

    def set_scales(self, x_scale: torch.Tensor, w_scale: torch.Tensor, out_inv_scale: torch.Tensor | None) -> None:
        """Device pointers of the fp32 scales: D = out_inv_scale * (w_scale * x_scale * W x + bias)."""
        self._set(_DESC_A_SCALE_POINTER, ctypes.c_void_p(w_scale.data_ptr()))
        self._set(_DESC_B_SCALE_POINTER, ctypes.c_void_p(x_scale.data_ptr()))
        if out_inv_scale is not None:
            self._set(_DESC_D_SCALE_POINTER, ctypes.c_void_p(out_inv_scale.data_ptr()))

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
        a, b, c, d = self.layouts
        stream = torch.cuda.current_stream(x.device).cuda_stream
        if self.epilogue in _BIAS_EPILOGUES:
            self.set_bias(bias)
        # C is read only when accumulating (beta = 1, C = D). Otherwise an fp8 product gets no C at all:
        # cuBLASLt refuses C = D when their types differ (status 7, INVALID_VALUE, for an e4m3 D).
        c_ptr = out.data_ptr() if (self.beta.value != 0 or not self.scaled) else None
        _check(library().cublasLtMatmul(
            self.device.handle, self.desc, ctypes.byref(self.alpha), weight.data_ptr(), a, x.data_ptr(), b,
            ctypes.byref(self.beta), c_ptr, c, out.data_ptr(), d, ctypes.byref(self.heuristic.algo),
            self.device.workspace.data_ptr(), WORKSPACE_BYTES, stream), "cublasLtMatmul")


def _heuristic(device: _Device, desc: ctypes.c_void_p, layouts: list, count: int) -> list[_HeuristicResult]:
    """Up to ``count`` algorithms the heuristic suggests for a problem, best guess first."""
    lib = library()
    preference = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
    limit = ctypes.c_uint64(WORKSPACE_BYTES)
    results, found = (_HeuristicResult * count)(), ctypes.c_int(0)
    a, b, c, d = layouts
    try:
        _check(lib.cublasLtMatmulPreferenceSetAttribute(preference, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit),
                                                        ctypes.sizeof(limit)), "cublasLtMatmulPreferenceSetAttribute")
        _check(lib.cublasLtMatmulAlgoGetHeuristic(device.handle, desc, a, b, c, d, preference, count, results,
                                                  ctypes.byref(found)), "cublasLtMatmulAlgoGetHeuristic")
    finally:
        lib.cublasLtMatmulPreferenceDestroy(preference)
    return [results[i] for i in range(found.value) if results[i].state == 0]


def heuristic_count(x: torch.Tensor, weight: torch.Tensor, epilogue: int, *, accumulate: bool = False,
                    limit: int = 16) -> int:
    """How many algorithms (at most ``limit``) cuBLASLt suggests for this problem; each is
    ``matmul(..., algorithm=i)`` for i below it."""
    plan = Plan(x.device, x.shape[0], weight.shape[0], x.shape[1], x.dtype, epilogue, None,
                accumulate=accumulate)
    try:
        return len(_heuristic(plan.device, plan.desc, plan.layouts, limit))
    finally:
        plan.destroy()


# Plans by shape, least recently used first. Eager batches (LoadGen's large ones) come with any
# token count, so the cache is bounded; a plan costs one heuristic query (host work) to remake.
_PLANS: collections.OrderedDict[tuple, Plan] = collections.OrderedDict()
MAX_PLANS = 256


def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``matmul`` can take these tensors: one CUDA device, fp16/bf16 alike, contiguous,
    16-byte aligned (pointers and rows)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (x.is_cuda and x.dim() == 2 and weight.dim() == 2 and (bias is None or bias.dim() == 1)
            and x.dtype in _CUDA_DTYPES and all(t.dtype == x.dtype and t.device == x.device for t in tensors)
            and all(t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0 for t in tensors)
            and weight.shape[1] == x.shape[1] and (bias is None or bias.shape[0] == weight.shape[0])
            and (x.shape[1] * x.element_size()) % ALIGNMENT == 0
            and (weight.shape[0] * x.element_size()) % ALIGNMENT == 0)


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, epilogue: int,
           out: torch.Tensor | None = None, *, accumulate: bool = False, algorithm: int = 0) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)`` through cuBLASLt, added into ``out`` when ``accumulate``;
    the tensors (and ``out``) must pass ``supported``. ``bias`` is None with EPILOGUE_DEFAULT.

    Raises:
        CublasLtError: cuBLASLt is missing or refused the problem (or has no ``algorithm``-th algorithm).
    """
    m, k = x.shape
    n = weight.shape[0]
    if (bias is None) != (epilogue not in _BIAS_EPILOGUES):
        raise ValueError(f"epilogue {epilogue} and bias {None if bias is None else tuple(bias.shape)} disagree")
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs out (what the product is added to)")
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    key = (x.device, m, n, k, x.dtype, epilogue, accumulate, algorithm)
    with _LOCK:
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = Plan(x.device, m, n, k, x.dtype, epilogue, bias, accumulate=accumulate,
                                      algorithm=algorithm)
            if len(_PLANS) > MAX_PLANS:
                _PLANS.popitem(last=False)[1].destroy()
        _PLANS.move_to_end(key)
        plan.run(x, weight, bias, out)
    return out


def supported_fp8(x_q: torch.Tensor, weight_q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``matmul_fp8`` can take these: e4m3 operands on one CUDA device, contiguous, rows of a
    multiple of 16 bytes (cuBLASLt's fp8 kernels need K and N multiples of 16), an fp16/bf16 bias."""
    fp8 = torch.float8_e4m3fn
    return (x_q.is_cuda and x_q.dtype == fp8 and weight_q.dtype == fp8 and x_q.dim() == 2 and weight_q.dim() == 2
            and weight_q.device == x_q.device and x_q.is_contiguous() and weight_q.is_contiguous()
            and x_q.shape[1] == weight_q.shape[1] and x_q.shape[1] % 16 == 0 and weight_q.shape[0] % 16 == 0
            and x_q.data_ptr() % ALIGNMENT == 0 and weight_q.data_ptr() % ALIGNMENT == 0
            and (bias is None or (bias.dtype in _CUDA_DTYPES and bias.is_contiguous() and bias.device == x_q.device
                                  and bias.shape == (weight_q.shape[0],) and bias.data_ptr() % ALIGNMENT == 0)))


def matmul_fp8(x_q: torch.Tensor, weight_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None, epilogue: int, out: torch.Tensor, *,
               out_inv_scale: torch.Tensor | None = None, fast_accum: bool = False, algorithm: int = 0,
               dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """``epilogue(x_scale * w_scale * x_q @ weight_q.T + bias)`` into ``out`` (fp16/bf16, or e4m3
    multiplied by ``out_inv_scale``), fp32 accumulation; the scales are () fp32 device tensors.
    ``dtype``: of the bias (and of C). Tensors must pass ``supported_fp8``.

    Raises:
        CublasLtError: cuBLASLt refused the problem.
    """
    m, k = x_q.shape
    n = weight_q.shape[0]
    if (bias is None) != (epilogue not in _BIAS_EPILOGUES):
        raise ValueError(f"epilogue {epilogue} and bias {None if bias is None else tuple(bias.shape)} disagree")
    if (out.dtype == torch.float8_e4m3fn) != (out_inv_scale is not None):
        raise ValueError("an e4m3 output needs out_inv_scale, and only it")
    if m == 0:
        return out
    key = (x_q.device, m, n, k, dtype, epilogue, False, algorithm, x_q.dtype, out.dtype, fast_accum)
    with _LOCK:
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = Plan(x_q.device, m, n, k, dtype, epilogue, bias, algorithm=algorithm,
                                      operand_dtype=x_q.dtype, out_dtype=out.dtype, fast_accum=fast_accum)
            if len(_PLANS) > MAX_PLANS:
                _PLANS.popitem(last=False)[1].destroy()
        _PLANS.move_to_end(key)
        plan.set_scales(x_scale, w_scale, out_inv_scale)
        plan.run(x_q, weight_q, bias, out)
    return out

