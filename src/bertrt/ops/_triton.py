"""Small shared helpers of the Triton kernels: optional lazy import, dispatch, jit per mode.

Triton is an optional extra and is imported only when a kernel is about to run, never when
``bertrt`` is imported. Kernels are plain module-level functions whose bodies name ``tl``; ``jit``
binds ``tl`` in their module and applies ``triton.jit`` on first use, once per mode.

Interpreter mode: ``TRITON_INTERPRET`` is read at call time. Triton (3.x) decides compile vs.
interpret when ``triton.jit`` is applied, also for its own standard library (``tl.sum``...) at
the moment ``triton`` is first imported. So the variable must already be set when triton is first
imported in the process; since bertrt imports triton lazily, setting it any time before the first
kernel call is enough. ``jit`` raises a clear error when the two disagree.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

# Kernels compute in fp32 and store in the input dtype; anything else (fp64, ints) takes the ref.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One tiling of a GEMM kernel (linear_gelu, linear_splitk): a (block_m x block_n) output tile per program, K in block_k steps;
    ``group_m`` row-tiles share their column-tiles of W while those stay in L2."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    # Persistent grid (one program per SM walking tiles) loading through Hopper's tensor-memory
    # accelerator (TMA descriptors); needs compute capability >= 9 and 16-byte aligned rows.
    tma: bool = False


_JITTED: dict[tuple[Callable, bool], Any] = {}
tl = None  # triton.language, bound by jit() when a device function below is first jitted


@functools.cache
def triton_installed() -> bool:
    """Whether triton can be imported, found without importing it."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # blocked by an import hook, or a broken entry in sys.modules
        return False


def interpret_requested() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernel may run on these tensors: Triton is installed, the floating-point
    tensors are fp32/fp16/bf16, and they are all on CUDA or the interpreter was asked for."""
    if any(t.is_floating_point() and t.dtype not in KERNEL_DTYPES for t in tensors):
        return False
    if not (interpret_requested() or all(t.is_cuda for t in tensors)):
        return False
    return triton_installed()


def triton_interprets() -> bool:
    """Whether the imported Triton runs its standard library in interpreter mode."""
    import triton.language as tl

    return type(tl.sum).__name__ == "InterpretedFunction"


def jit(fn: Callable, helpers: dict[str, Callable] | None = None, *, per_request: tuple[str, ...] = ()) -> Any:
    """``triton.jit(fn)`` for the current mode (compiled or interpreted), built once per mode.

    ``helpers``: name -> plain function for the device functions fn calls; each is jitted for the
    same mode and bound under that name in fn's module (and in each helper's, so that helpers may
    call one another), where Triton looks it up when compiling fn.
    ``per_request``: arguments that change with every batch: token and sequence counts, and
    pointers into staging buffers whose 16-byte alignment depends on the batch (cu_seqlens after a
    batch's ids). Triton would otherwise compile a kernel again when such a value is 1 or a
    multiple of 16, or such a pointer 16-byte aligned. Outside CUDA graphs (large batches run
    eagerly) that compile lands in a request's latency: a LoadGen Server batch on an H100 took
    510 ms instead of ~20 when the fused GEMM met its first token count divisible by 16. Kernels
    use these values only in masks, loop bounds and scalar loads."""
    interpret = interpret_requested()
    key = (fn, interpret)
    helpers = helpers or {}
    for name, helper in helpers.items():
        jitted = jit(helper)
        for user in (fn, *helpers.values()):  # helpers may call one another
            user.__globals__[name] = jitted
    if key not in _JITTED:
        import triton
        import triton.language as tl

        if triton_interprets() != interpret:
            raise RuntimeError(
                f"TRITON_INTERPRET is {'set' if interpret else 'unset'} now but was "
                f"{'set' if not interpret else 'unset'} when triton was first imported; Triton fixes "
                "interpreter mode at import, so set TRITON_INTERPRET before triton is imported")
        fn.__globals__["tl"] = tl  # the kernel's module never imports triton itself
        _JITTED[key] = triton.jit(fn, do_not_specialize=per_request)
    return _JITTED[key]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def num_warps_for(elements: int) -> int:
    """Warps for a program that holds ``elements`` values: about 256 values per warp, 1 to 8 warps."""
    return min(max(next_pow2(elements) // 256, 1), 8)


def row_tiles(n_tokens: int, width: int) -> tuple[int, int, tuple[int, int], int]:
    """(BLOCK_T, BLOCK_I, grid, num_warps) of an elementwise kernel over (n_tokens, width): blocks of
    up to 1,024 columns and about 4,096 values, a program per block."""
    block_i = min(next_pow2(width), 1024)
    block_t = max(1, 4096 // block_i)
    return block_t, block_i, (cdiv(n_tokens, block_t), cdiv(width, block_i)), num_warps_for(block_t * block_i)


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels index rows by stride(0) and need unit stride along the last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def check_out(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """A fresh output, or the caller's ``out`` once its shape, dtype, device and strides fit."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"out must be {tuple(shape)} {dtype} on {device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    if out.stride(-1) != 1:
        raise ValueError("out needs unit stride along its last dimension")
    return out


# --- device functions shared by kernels (bound into a kernel's module by jit(helpers=...)) ---------


def grouped_tile_impl(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of output tile number ``tile`` in grouped order: consecutive tiles
    walk GROUP_M row-tiles down one column of tiles, so a tile of W loaded for the first is still in
    L2 for the next GROUP_M - 1."""
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_rows, (tile % per_group) // group_rows


def layernorm_rows_impl(x, mask, h_offs, h_mask, hidden, gamma_ptr, beta_ptr, eps):
    """LayerNorm of each row of the fp32 (rows, BLOCK_H) block ``x`` over its first ``hidden``
    columns (``mask``: the valid elements), with gamma and beta loaded here."""
    mean = tl.sum(x, axis=1) / hidden
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding columns must not enter the variance
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / hidden + eps)
    gamma = tl.load(gamma_ptr + h_offs, mask=h_mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + h_offs, mask=h_mask, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * gamma[None, :] + beta[None, :]


# Quantised outputs (constexpr QUANT): 0 none, 1 e4m3, 2 int8; see bertrt.quant.numerics for the rounding.
QUANT_CODES = {"fp8": 1, "int8": 2}


def quant_code(t: torch.Tensor | None) -> int:
    """QUANT of an output tensor: 0 when None, else by its dtype (fp8 e4m3 or int8)."""
    if t is None:
        return 0
    from bertrt.quant.numerics import format_of

    return QUANT_CODES[format_of(t.dtype)]


def round_e4m3_impl(y):
    """fp32 ``y`` clamped to +-448 and rounded to the nearest e4m3 value (ties to even), in fp32.

    Rounds on the fp32 bits, so that a conversion to float8e4nv afterwards is exact whatever its
    own rounding (Triton's interpreter neither rounds to nearest nor saturates); below e4m3's
    smallest normal (2^-6) its step is 2^-9."""
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576
    return tl.where(tl.abs(y) < 0.015625, tl.floor(y * 512.0 + 0.5) / 512.0, bits.to(tl.float32, bitcast=True))


def quantize_e4m3_impl(y, inv_scale):
    """fp32 ``y * inv_scale`` clamped to +-448 and rounded to e4m3 (nearest even)."""
    return _round_e4m3(y * inv_scale).to(tl.float8e4nv)


def quantize_int8_impl(y, inv_scale):
    """fp32 ``y * inv_scale`` clamped to +-127 and rounded to int8, ties to even.

    12582912 = 1.5 * 2^23: fp32 numbers near it have no fraction bits, so adding it rounds the
    clamped value to an integer (IEEE round-to-nearest-even) and subtracting it again is exact;
    the interpreter has no libdevice ``rint``, and the compiled code keeps both operations."""
    y = tl.minimum(tl.maximum(y * inv_scale, -127.0), 127.0)
    return ((y + 12582912.0) - 12582912.0).to(tl.int8)


QUANT_HELPERS = {"_quantize_e4m3": quantize_e4m3_impl, "_round_e4m3": round_e4m3_impl, "_quantize_int8": quantize_int8_impl}
