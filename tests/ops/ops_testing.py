"""Helpers of the kernel tests (a plain module, imported by name from tests/ops).

Accuracy is judged the flash-attention way: against a float64 computation of the same maths, a
kernel may be at most twice as wrong as PyTorch computing the unfused sequence in the same low
precision, plus a small absolute slack per dtype.
"""

from __future__ import annotations

import importlib.util

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN, so that any element a kernel fails to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_like_torch(got: torch.Tensor, torch_lowp: torch.Tensor, exact: torch.Tensor,
                      dtype: torch.dtype) -> None:
    """``got`` is within 2x PyTorch's own low-precision error of ``exact``, plus ATOL[dtype]."""
    assert torch.isfinite(got).all(), "kernel left unwritten (NaN) or non-finite elements"
    err = (got.double() - exact.double()).abs().max().item()
    torch_err = (torch_lowp.double() - exact.double()).abs().max().item()
    assert err <= 2 * torch_err + ATOL[dtype], f"error {err:.3g} vs PyTorch's {torch_err:.3g} in {dtype}"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, generator, dtype=torch.float32, device="cpu", scale=1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * scale).to(device=device, dtype=dtype)


def linear_inputs(m, n, k, *, dtype=torch.float32, device="cpu", seed=0) -> list[torch.Tensor]:
    """x (m, k), W (n, k), b (n,) of a linear layer, W scaled like a trained layer's (x @ W.T of
    order 1, so an activation after it sees both its regimes)."""
    g = gen(seed)
    return [randn(m, k, generator=g, dtype=dtype, device=device),
            randn(n, k, generator=g, dtype=dtype, device=device, scale=1.5 / k ** 0.5),
            randn(n, generator=g, dtype=dtype, device=device, scale=0.5)]


# --- quantised outputs ---

FORMATS = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def inv_scale(amax: float, fmt: str, device="cpu") -> torch.Tensor:
    """The () fp32 inverse scale that clips at ``amax`` in ``fmt``."""
    from bertrt.quant.numerics import scale_for

    return (1.0 / scale_for(amax, fmt)).to(device)


def assert_same_quantised(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype
    mismatched = int((a.float() != b.float()).sum())
    assert mismatched == 0, f"{mismatched} of {a.numel()} quantised values differ"
