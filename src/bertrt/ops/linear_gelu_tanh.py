"""The feed-forward up-projection with bias and tanh-approximated GELU in one cuBLASLt call.

``linear_bias_gelu_tanh(x, W, b) = gelu_tanh(x @ W.T + b)``, through cuBLASLt's GELU_BIAS epilogue,
which computes the tanh approximation of GELU. BERT was trained with the erf form
(``linear_gelu.linear_bias_gelu``); the two differ by at most 4.7e-4 (at |x| near 2.7). That is
about the absolute rounding error of fp16 activations of order 1 to 4 (spacing 9.8e-4 in [1, 2),
2.0e-3 in [2, 4)), and the GEMM after the activation sums thousands of them, so what it adds is of
the size of fp16's own error there (for negative inputs the activation is near 0 and the
difference is larger than its rounding). Builds offer it as one more backend of the
up-projection (``"cublaslt-gelu"``); like every backend it is recorded only where it is faster than
the default and agrees with it (``tuning._fastest``), and the engine's numerics are judged end to
end against the fp32 reference.

Where cuBLASLt cannot run (the CPU, fp32, unaligned or strided tensors) the same function is
computed by ``linear_bias_gelu_tanh_ref``'s math in the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops import _cublaslt


def linear_bias_gelu_tanh_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``linear_bias_gelu_tanh``."""
    return F.gelu(F.linear(x.float(), weight.float(), bias.float()), approximate="tanh").to(x.dtype)


def linear_bias_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """GELU (tanh form) of ``x @ weight.T + bias``, fp32 accumulation.

    Args:
        x: (T, K) fp16/bf16 activations (any float dtype off the fast path).
        weight: (N, K) of ``x``'s dtype, the nn.Linear layout.
        bias: (N,) of ``x``'s dtype.
        out: optional (T, N) contiguous tensor of ``x``'s dtype to write into.

    Returns:
        (T, N) in ``x``'s dtype.
    """
    if out is not None and (out.shape != (x.shape[0], weight.shape[0]) or out.dtype != x.dtype
                            or out.device != x.device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous ({x.shape[0]}, {weight.shape[0]}) {x.dtype} tensor on "
                         f"{x.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
    aligned_out = out is None or out.data_ptr() % _cublaslt.ALIGNMENT == 0
    if aligned_out and _cublaslt.supported(x, weight, bias):
        return _cublaslt.matmul(x, weight, bias, _cublaslt.EPILOGUE_GELU_BIAS, out=out)
    result = F.gelu(F.linear(x, weight, bias), approximate="tanh") if x.is_cuda else \
        linear_bias_gelu_tanh_ref(x, weight, bias)
    return result if out is None else out.copy_(result)
