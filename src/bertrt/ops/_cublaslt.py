"""A minimal ctypes binding of cuBLASLt's matmul with an epilogue, for what PyTorch's public API lacks.

PyTorch runs cuBLASLt with a bias epilogue for ``F.linear`` but exposes no GEMM + GELU in one call.
cuBLASLt's GELU_BIAS epilogue runs inside cuBLAS' own Hopper GEMM kernels (``nvjet_sm90_..._gelubias``
in a profile) at close to their speed, where the fused Triton GEMM's epilogue costs main-loop time:
at 49,152 x 4096 x 1024 on an H200, 646 us against 777 for the Triton GEMM and 574 for cuBLAS
without any epilogue (benchmarks/results/session6/call1/explore.json).

The library is the cuBLASLt that torch's CUDA build has already loaded (found in the process's
memory map), so there is one copy in the process; it is opened on first use, never on import.
Enum values and struct layouts are those of ``cublasLt.h`` (stable across CUDA 11-13).

Only what ``linear_gelu_tanh`` needs: row-major ``out = epilogue(x @ W.T + b)`` for fp16/bf16,
fp32 accumulation. Plans (descriptors + the heuristic's algorithm) are cached per shape; the bias
pointer is set per call, which is host-only work and safe inside CUDA graph capture.
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
_CUDA_R_32F = 0
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
EPILOGUE_BIAS, EPILOGUE_GELU_BIAS = 4, 36  # cublasLtEpilogue_t
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
    """``out = epilogue(x @ W.T + bias)`` for one (M, N, K, dtype, epilogue) on one GPU."""

    def __init__(self, device: torch.device, m: int, n: int, k: int, dtype: torch.dtype, epilogue: int,
                 bias: torch.Tensor):
        lib = library()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _DEVICES:
            _DEVICES[index] = _Device(torch.device("cuda", index))
        self.device = _DEVICES[index]
        cuda_type = _CUDA_DTYPES[dtype]
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _CUDA_R_32F),
               "cublasLtMatmulDescCreate")
        # Row-major out (M, N) is column-major (N, M): out^T = W @ x^T, so A = W (stored (N, K)
        # row-major = (K, N) column-major, transposed) and B = x ((K, M) column-major, as is).
        for attr, value in ((_DESC_TRANSA, _OP_T), (_DESC_TRANSB, _OP_N), (_DESC_EPILOGUE, epilogue)):
            self._set(attr, ctypes.c_int32(value))
        self.set_bias(bias)
        self.layouts = []
        for rows, cols in ((k, n), (k, m), (n, m)):  # A, B, C = D
            layout = ctypes.c_void_p()
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), cuda_type, rows, cols, rows),
                   "cublasLtMatrixLayoutCreate")
            self.layouts.append(layout)
        preference = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
        limit = ctypes.c_uint64(WORKSPACE_BYTES)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(preference, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit),
                                                        ctypes.sizeof(limit)), "cublasLtMatmulPreferenceSetAttribute")
        self.heuristic, found = _HeuristicResult(), ctypes.c_int(0)
        a, b, c = self.layouts
        try:
            _check(lib.cublasLtMatmulAlgoGetHeuristic(self.device.handle, self.desc, a, b, c, c, preference, 1,
                                                      ctypes.byref(self.heuristic), ctypes.byref(found)),
                   "cublasLtMatmulAlgoGetHeuristic")
        finally:
            lib.cublasLtMatmulPreferenceDestroy(preference)
        if found.value < 1:
            raise CublasLtError(f"cuBLASLt has no algorithm for M={m} N={n} K={k} {dtype} epilogue {epilogue}")
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

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

    def run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
        a, b, c = self.layouts
        stream = torch.cuda.current_stream(x.device).cuda_stream
        self.set_bias(bias)
        _check(library().cublasLtMatmul(
            self.device.handle, self.desc, ctypes.byref(self.alpha), weight.data_ptr(), a, x.data_ptr(), b,
            ctypes.byref(self.beta), out.data_ptr(), c, out.data_ptr(), c, ctypes.byref(self.heuristic.algo),
            self.device.workspace.data_ptr(), WORKSPACE_BYTES, stream), "cublasLtMatmul")


# Plans by shape, least recently used first. Eager batches (LoadGen's large ones) come with any
# token count, so the cache is bounded; a plan costs one heuristic query (host work) to remake.
_PLANS: collections.OrderedDict[tuple, Plan] = collections.OrderedDict()
MAX_PLANS = 256


def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether ``matmul`` can take these tensors: one CUDA device, fp16/bf16 alike, contiguous,
    16-byte aligned (pointers and rows)."""
    tensors = (x, weight, bias)
    return (x.is_cuda and x.dim() == 2 and weight.dim() == 2 and bias.dim() == 1
            and x.dtype in _CUDA_DTYPES and all(t.dtype == x.dtype and t.device == x.device for t in tensors)
            and all(t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0 for t in tensors)
            and weight.shape[1] == x.shape[1] and bias.shape[0] == weight.shape[0]
            and (x.shape[1] * x.element_size()) % ALIGNMENT == 0
            and (weight.shape[0] * x.element_size()) % ALIGNMENT == 0)


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, epilogue: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``epilogue(x @ weight.T + bias)`` through cuBLASLt; the tensors must pass ``supported``.

    Raises:
        CublasLtError: cuBLASLt is missing or refused the problem.
    """
    m, k = x.shape
    n = weight.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    key = (x.device, m, n, k, x.dtype, epilogue)
    with _LOCK:
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = Plan(x.device, m, n, k, x.dtype, epilogue, bias)
            if len(_PLANS) > MAX_PLANS:
                _PLANS.popitem(last=False)[1].destroy()
        _PLANS.move_to_end(key)
        plan.run(x, weight, bias, out)
    return out
