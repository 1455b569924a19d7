"""A sub-layer's pieces as the runtime and the build-time timing both run them: the attention
kernel a recorded choice names, and a projection back to hidden width with its bias, residual and
LayerNorm (``end_sublayer``)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from bertrt.engine.format import SPLITK_BACKENDS
from bertrt.ops.attention import varlen_attention
from bertrt.ops.attention_triton import TILINGS as ATTENTION_TILINGS
from bertrt.ops.attention_triton import varlen_attention_triton
from bertrt.ops.linear_splitk import linear_splitk
from bertrt.ops.residual_layernorm import bias_residual_layernorm


def attention_for(choice: str, *, windowed: bool = False, triton_only: bool = False):
    """The attention function a recorded choice names (format.OP_BACKENDS["attention"]).

    ``windowed``: for sliding-window layers (called with ``reach=``), and ``triton_only``: for
    options of bertrt's kernel (fp8 products); only bertrt's kernel runs those, so a recorded
    "torch" means its default tiling there."""
    if choice == "torch" and not (windowed or triton_only):
        return varlen_attention
    tiling = ATTENTION_TILINGS.get(choice)  # None: attention_config_for's
    return varlen_attention_triton if tiling is None else functools.partial(varlen_attention_triton, config=tiling)


def end_sublayer(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                 gamma: torch.Tensor, beta: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    """LayerNorm(inputs @ weight.T + bias + residual): a sub-layer's projection back to hidden
    width and its end, the projection run by ``backend`` (format.OP_BACKENDS "attn_out").

    With "cublas-accumulate" the result is written over ``residual`` (the sub-layer's input,
    which nothing reads afterwards); the other backends leave it as it is."""
    if backend == "cublas-accumulate":
        # cuBLAS adds the product into the residual (beta = 1), which is consumed here anyway.
        summed = residual.addmm_(inputs, weight.t())
        return bias_residual_layernorm(summed, bias, None, gamma, beta, eps, out=summed)
    splits = SPLITK_BACKENDS.get(backend)
    product = F.linear(inputs, weight) if splits is None else linear_splitk(inputs, weight, splits)
    return bias_residual_layernorm(product, bias, residual, gamma, beta, eps)
