"""A projection on e4m3 operands: ``epilogue(x_scale * w_scale * x_q @ W_q.T + bias)``, fp32 accumulation.

On a GPU of compute capability >= 8.9 this is one cuBLASLt call (``_cublaslt.matmul_fp8``) with the
per-tensor scales read from device memory, the bias (and optionally the GELU) in its epilogue, and
the result written in fp16/bf16 or, for the FFN up-projection whose output feeds another fp8 GEMM,
rounded to e4m3 in the same epilogue (``out_inv_scale``): no pass of its own for that quantisation.
cuBLASLt's GELU epilogue is the tanh form (see ``linear_gelu_tanh``), and so is the reference's.

Elsewhere (the CPU, tensors cuBLASLt cannot take) ``linear_fp8_ref`` computes the same function:
operands dequantised to fp32, product in fp32, output rounded as the kernel rounds it. That is how
a CPU run of an fp8 engine simulates its numerics.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from bertrt.ops import _cublaslt
from bertrt.quant.numerics import dequantize_ref, quantize_ref

_REFUSED: set[tuple] = set()  # problems cuBLASLt refused: computed by the reference's math instead


def linear_fp8_ref(x_q: torch.Tensor, weight_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None = None, *, gelu: bool = False, out_dtype: torch.dtype = torch.float16,
                   out_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``linear_fp8``."""
    y = F.linear(dequantize_ref(x_q, x_scale), dequantize_ref(weight_q, w_scale))
    if bias is not None:
        y = y + bias.float()
    if gelu:
        y = F.gelu(y, approximate="tanh")
    if out_dtype == torch.float8_e4m3fn:
        return quantize_ref(y, out_inv_scale, "fp8")
    return y.to(out_dtype)


def linear_fp8(x_q: torch.Tensor, weight_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None, *, gelu: bool = False, out_dtype: torch.dtype = torch.float16,
               out_inv_scale: torch.Tensor | None = None, fast_accum: bool = False) -> torch.Tensor:
    """The projection of an e4m3 input by an e4m3 weight.

    Args:
        x_q: (T, K) float8_e4m3fn input; its real value is ``x_q * x_scale``.
        weight_q: (N, K) float8_e4m3fn weight (nn.Linear layout); real value ``weight_q * w_scale``.
        x_scale, w_scale: () fp32 scales, on x_q's device (a (N,) per-channel w_scale runs the
            reference's math).
        bias: optional (N,) fp16/bf16 bias (the activation dtype).
        gelu: apply GELU (tanh form) after the bias.
        out_dtype: fp16, bf16 or fp32 for a real-valued output, or float8_e4m3fn for one rounded
            at ``out_inv_scale`` (() fp32: q = y * out_inv_scale).
        fast_accum: let the tensor cores keep their partial sums unpromoted (faster, less exact).

    Returns:
        (T, N) of ``out_dtype``.
    """
    if (out_dtype == torch.float8_e4m3fn) != (out_inv_scale is not None):
        raise ValueError("an e4m3 output needs out_inv_scale, and only it")
    epilogue = (_cublaslt.EPILOGUE_GELU_BIAS if gelu else _cublaslt.EPILOGUE_BIAS) if bias is not None else (
        None if gelu else _cublaslt.EPILOGUE_DEFAULT)
    key = (x_q.shape[0], x_q.shape[1], weight_q.shape[0], gelu, bias is not None, out_dtype)
    if (epilogue is not None and key not in _REFUSED and _cublaslt.supported_fp8(x_q, weight_q, bias)
            and w_scale.numel() == 1  # cuBLASLt's scale pointers are per tensor here
            and out_dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn)):
        out = torch.empty(x_q.shape[0], weight_q.shape[0], dtype=out_dtype, device=x_q.device)
        try:
            return _cublaslt.matmul_fp8(x_q, weight_q, x_scale, w_scale, bias, epilogue, out,
                                        out_inv_scale=out_inv_scale, fast_accum=fast_accum,
                                        dtype=bias.dtype if bias is not None else torch.float16)
        except _cublaslt.CublasLtError as exc:
            if torch.cuda.is_current_stream_capturing():
                raise
            _REFUSED.add(key)
            warnings.warn(f"cuBLASLt refused an fp8 product ({exc}); computing it unfused", RuntimeWarning,
                          stacklevel=2)
    if out_dtype == torch.float8_e4m3fn and x_q.is_cuda:
        # An e4m3 output cuBLASLt would not write: its fp16 product, rounded by a second pass.
        y = linear_fp8(x_q, weight_q, x_scale, w_scale, bias, gelu=gelu, out_dtype=torch.float16, fast_accum=fast_accum)
        return quantize_ref(y, out_inv_scale, "fp8")
    return linear_fp8_ref(x_q, weight_q, x_scale, w_scale, bias, gelu=gelu, out_dtype=out_dtype,
                          out_inv_scale=out_inv_scale)
