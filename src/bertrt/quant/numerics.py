"""The rounding of fp8 (e4m3) and int8 values, in plain PyTorch: what the kernels compute, and the
CPU path of a quantised engine.

A value is quantised by multiplying by the inverse scale (``inv_scale = 1 / scale``, one fp32
tensor, so that kernels and this reference multiply by the same number), clamping to the format's
range, and rounding to nearest, ties to even (the hardware's conversion for e4m3, IEEE rounding for
int8). Dequantising multiplies by the scale.
"""

from __future__ import annotations

import torch

from bertrt.quant.recipe import QMAX

DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def format_of(dtype: torch.dtype) -> str:
    """"fp8" or "int8" for a quantised tensor's dtype."""
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"{dtype} is not a quantised dtype ({', '.join(map(str, DTYPES.values()))})")


def quantize_ref(x: torch.Tensor, inv_scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x * inv_scale`` clamped to +-QMAX and rounded, as ``fmt``'s dtype (``inv_scale``: fp32,
    a scalar or broadcastable along x's last dimension)."""
    y = (x.float() * inv_scale.float()).clamp(-QMAX[fmt], QMAX[fmt])
    if fmt == "int8":
        return torch.round(y).to(torch.int8)
    return y.to(torch.float8_e4m3fn)


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 real values of quantised ``q`` (``scale``: fp32 scalar or (N,) per row of q)."""
    scale = scale.float()
    return q.float() * (scale[:, None] if scale.dim() == 1 and q.dim() == 2 else scale)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` rounded to ``fmt`` at ``scale`` and back, in x's dtype."""
    return (dequantize_ref(quantize_ref(x, 1.0 / scale.float(), fmt), scale)).to(x.dtype)


def scale_for(amax: torch.Tensor | float, fmt: str) -> torch.Tensor:
    """fp32 scale of a clip value (an all-zero tensor gets scale 1: any scale represents it)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(amax > 0, amax / QMAX[fmt], torch.ones_like(amax))


def quantize_weight(weight: torch.Tensor, fmt: str, granularity: str,
                    amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantised (N, K) weight, fp32 scale: () per tensor or (N,) per output channel).

    ``amax``: clip values to use (a quantization-aware checkpoint's); default the weight's own
    largest magnitudes."""
    w = weight.float()
    if amax is None:
        amax = w.abs().amax(dim=1) if granularity == "per-channel" else w.abs().max()
    amax = torch.as_tensor(amax, dtype=torch.float32, device=w.device)
    scale = scale_for(amax, fmt)
    inv = 1.0 / scale
    q = quantize_ref(w, inv[:, None] if inv.dim() == 1 else inv, fmt)
    return q, scale
