"""fp8 and int8 engines: quantising the weights at build time, and the forward pass that runs them.

Tensors of a quantised engine, beside the canonical ones (see ``bertrt.quant.recipe``):
``layers.{i}.{projection}.weight`` in float8_e4m3fn or int8, with ``.weight_scale`` (() or (N,)
fp32) and ``.input_scale`` (() fp32); int8 mode 2 adds ``.output_scale`` per projection and
``layers.{i}.{attn|ffn}.residual_scale``. Everything else stays in the engine's precision.

Per layer, on (T, H) packed tokens, with every projection quantised::

    x, xq = LayerNorm(...)                      the LayerNorm also writes its e4m3/int8 copy (xq)
    qkv   = Q(xq) @ Q(W_qkv).T + b              fp16 out (cuBLASLt fp8, or the int8 GEMM)
    ctxq  = attention(q, k, v)                  fp16 math (or fp8 products), the output written in e4m3/int8
    x, xq = LayerNorm(ctxq @ W_out.T + b + x)   the projection's fp16 out, bias + residual + LN + quantise
    upq   = GELU(xq @ W_in.T + b)               rounded to e4m3/int8 in the GEMM's epilogue (or, with
                                                ``epilogue_rounding=False``, fp8's default, by a pass)
    x, xq = LayerNorm(upq @ W_ffn_out.T + b + x)

so no other quantisation costs a pass of its own. A projection left out of the recipe runs in the
engine's precision, and its producer writes no quantised copy. Off the GPU every op runs its
plain-PyTorch reference, which rounds exactly as the kernels do: the CPU simulation of the engine.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from bertrt.engine.format import EngineError, gemm_choice
from bertrt.engine.sublayers import attention_for
from bertrt.ops.linear_fp8 import linear_fp8
from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh
from bertrt.ops.linear_int8 import linear_int8
from bertrt.ops.quantize import quantize
from bertrt.ops.residual_layernorm import bias_residual_layernorm
from bertrt.quant.calibration import Calibration
from bertrt.quant.numerics import DTYPES, fake_quantize, quantize_weight, scale_for
from bertrt.quant.recipe import RESIDUALS, QuantError, QuantRecipe, input_name, output_name, residual_name

SCALE_SUFFIXES = ("weight_scale", "input_scale", "output_scale", "residual_scale")


def is_scale(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in SCALE_SUFFIXES


def quantize_tensors(tensors: dict[str, torch.Tensor], fp32: dict[str, torch.Tensor], num_layers: int,
                     recipe: QuantRecipe, calibration: Calibration,
                     weight_amax: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The engine's tensors: ``tensors`` (already in the engine precision) with each quantised
    projection's weight replaced by its e4m3/int8 form (rounded from ``fp32``, the checkpoint's
    own values) and the scales added. ``weight_amax``: clip values of weights taken from a
    quantization-aware checkpoint instead of the weights' own maxima."""
    fmt = recipe.format
    calibration.require(recipe.calibrated_names(num_layers))
    out = dict(tensors)
    for i in range(num_layers):
        for p in recipe.projections:
            name = f"layers.{i}.{p}.weight"
            q, w_scale = quantize_weight(fp32[name], fmt, recipe.weights, amax=(weight_amax or {}).get(name))
            out[name] = q.contiguous()
            out[f"layers.{i}.{p}.weight_scale"] = w_scale.contiguous()
            out[f"layers.{i}.{p}.input_scale"] = scale_for(calibration.amax[input_name(i, p)], fmt)
            if recipe.mode2:
                out[f"layers.{i}.{p}.output_scale"] = scale_for(calibration.amax[output_name(i, p)], fmt)
        if recipe.mode2:
            for s in RESIDUALS:
                out[f"layers.{i}.{s}.residual_scale"] = scale_for(calibration.amax[residual_name(i, s)], fmt)
    return out


def check_quantized_tensors(tensors: dict[str, torch.Tensor], num_layers: int, recipe: QuantRecipe | None,
                            precision_dtype: torch.dtype, *, source: str) -> None:
    """Every tensor has the dtype the recipe says and every scale is there, finite and positive."""
    quantized = {f"layers.{i}.{p}.weight" for i in range(num_layers) for p in (recipe.projections if recipe else ())}
    expected_scales = set()
    if recipe:
        for i in range(num_layers):
            for p in recipe.projections:
                expected_scales |= {f"layers.{i}.{p}.weight_scale", f"layers.{i}.{p}.input_scale"}
                if recipe.mode2:
                    expected_scales.add(f"layers.{i}.{p}.output_scale")
            if recipe.mode2:
                expected_scales |= {f"layers.{i}.{s}.residual_scale" for s in RESIDUALS}
    scales = {k for k in tensors if is_scale(k)}
    if scales != expected_scales:
        odd = sorted(scales ^ expected_scales)
        raise EngineError(f"{source}: scale tensors do not match engine.json's quantization (e.g. {odd[0]}); "
                          "rebuild the engine")
    for name, t in tensors.items():
        want = (torch.float32 if name in scales else DTYPES[recipe.format] if name in quantized else precision_dtype)
        if t.dtype != want:
            said = str(want).removeprefix("torch.").replace("float", "fp").replace("fp8_e4m3fn", "fp8")
            raise EngineError(f"{source}: {name} is {t.dtype}, engine.json says {said}; rebuild the engine")
        if name in scales and not bool((torch.isfinite(t) & (t > 0)).all()):
            raise EngineError(f"{source}: {name} holds a scale that is not positive and finite; rebuild the engine")


@dataclasses.dataclass
class QuantProjection:
    """One quantised projection's weight and scales, ready for its kernel."""

    weight: torch.Tensor
    bias: torch.Tensor
    weight_scale: torch.Tensor
    input_scale: torch.Tensor
    input_inv: torch.Tensor  # 1 / input_scale: what producers multiply by
    scale: torch.Tensor  # int8: input_scale * weight_scale, per output channel or ()
    output_scale: torch.Tensor | None = None


def quant_projections(tensors: dict[str, torch.Tensor], num_layers: int,
                      recipe: QuantRecipe) -> list[dict[str, QuantProjection]]:
    layers = []
    for i in range(num_layers):
        layer = {}
        for p in recipe.projections:
            pre = f"layers.{i}.{p}."
            input_scale, weight_scale = tensors[pre + "input_scale"], tensors[pre + "weight_scale"]
            layer[p] = QuantProjection(
                weight=tensors[pre + "weight"], bias=tensors[pre + "bias"], weight_scale=weight_scale,
                input_scale=input_scale, input_inv=(1.0 / input_scale).contiguous(),
                scale=(input_scale * weight_scale).contiguous(), output_scale=tensors.get(pre + "output_scale"))
        layers.append(layer)
    return layers


def project(proj: QuantProjection, x_q: torch.Tensor, fmt: str, *, bias: bool = True, gelu: bool = False,
            out_dtype: torch.dtype, out_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x_q`` (quantised) through one quantised projection; the output rounded to ``fmt`` when
    ``out_inv_scale`` is given, else in ``out_dtype``."""
    quantized_out = out_inv_scale is not None
    if fmt == "fp8":
        return linear_fp8(x_q, proj.weight, proj.input_scale, proj.weight_scale, proj.bias if bias else None,
                          gelu=gelu, out_dtype=torch.float8_e4m3fn if quantized_out else out_dtype,
                          out_inv_scale=out_inv_scale)
    return linear_int8(x_q, proj.weight, proj.scale, proj.bias if bias else None, gelu=gelu,
                       out_dtype=torch.int8 if quantized_out else out_dtype,
                       out_scale=(1.0 / out_inv_scale) if quantized_out else None)


class QuantizedForward:
    """The encoder body of a quantised engine (see the module docstring); capturable in a CUDA graph."""

    def __init__(self, engine, recipe: QuantRecipe):
        self.engine, self.recipe = engine, recipe
        self.fmt = recipe.format
        self.qdtype = DTYPES[self.fmt]
        c = engine.config
        self.layers = quant_projections(engine._tensors, c.num_hidden_layers, recipe)
        t = engine._tensors
        self.residual_scales = [{s: t.get(f"layers.{i}.{s}.residual_scale") for s in RESIDUALS}
                                for i in range(c.num_hidden_layers)]

    def _input_inv(self, layer: int, projection: str) -> torch.Tensor | None:
        if layer >= len(self.layers):
            return None
        proj = self.layers[layer].get(projection)
        return proj.input_inv if proj is not None else None

    def _quant_buffer(self, inv, shape, device):
        return torch.empty(shape, dtype=self.qdtype, device=device) if inv is not None else None

    def _residual(self, x: torch.Tensor, layer: int, sublayer: str) -> torch.Tensor:
        scale = self.residual_scales[layer][sublayer]
        return x if scale is None else fake_quantize(x, scale, self.fmt)

    def hidden(self, input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen) -> torch.Tensor:

        e, c, t, fmt = self.engine, self.engine.config, self.engine._tensors, self.fmt
        eps, heads, head_dim, hidden = c.layer_norm_eps, c.num_attention_heads, c.head_dim, c.hidden_size
        tokens = input_ids.shape[0]
        dev, dtype = e.device, e.dtype
        fp8_attention = self.recipe.attention == "fp8"
        attend = attention_for(gemm_choice(e.spec.gemm_choices, "attention", tokens), triton_only=fp8_attention)
        if fp8_attention:
            attend = functools.partial(attend, fp8=True)
        inv = self._input_inv(0, "attn.qkv")
        xq = self._quant_buffer(inv, (tokens, hidden), dev)
        x = e.embed(input_ids, token_type_ids, position_ids, quant_out=xq, quant_inv_scale=inv)
        for i, q in enumerate(self.layers):
            p = f"layers.{i}."
            mode2 = self.recipe.mode2
            # --- attention sub-layer
            residual = self._residual(x, i, "attn")
            if "attn.qkv" in q:
                qkv = project(q["attn.qkv"], xq, fmt, out_dtype=dtype)
                if mode2:
                    qkv = fake_quantize(qkv, q["attn.qkv"].output_scale, fmt)
            else:
                qkv = F.linear(x, t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"])
            qh, kh, vh = qkv.view(tokens, 3, heads, head_dim).unbind(1)
            inv = self._input_inv(i, "attn.out")
            if inv is not None:
                ctx = torch.empty(tokens, heads, head_dim, dtype=self.qdtype, device=dev)
                attend(qh, kh, vh, cu_seqlens, max_seqlen, out=ctx, out_inv_scale=inv)
                out_proj = q["attn.out"]
                y = project(out_proj, ctx.view(tokens, hidden), fmt, bias=mode2, out_dtype=dtype)
                if mode2:
                    y = fake_quantize(y, out_proj.output_scale, fmt)
            else:
                y = F.linear(attend(qh, kh, vh, cu_seqlens, max_seqlen).reshape(tokens, hidden), t[p + "attn.out.weight"])
            inv = self._input_inv(i, "ffn.in")
            xq = self._quant_buffer(inv, (tokens, hidden), dev)
            bias = e.zero_bias if (mode2 and "attn.out" in q) else t[p + "attn.out.bias"]
            x = bias_residual_layernorm(y, bias, residual, t[p + "attn.ln.weight"], t[p + "attn.ln.bias"], eps,
                                        quant_out=xq, quant_inv_scale=inv)
            # --- feed-forward sub-layer
            residual = self._residual(x, i, "ffn")
            out_inv = self._input_inv(i, "ffn.out")
            if "ffn.in" in q and (out_inv is None or self.recipe.epilogue_rounding):
                up = project(q["ffn.in"], xq, fmt, gelu=True, out_dtype=dtype, out_inv_scale=out_inv)
            elif "ffn.in" in q:
                up = quantize(project(q["ffn.in"], xq, fmt, gelu=True, out_dtype=dtype), out_inv, fmt)
            else:
                up = linear_bias_gelu_tanh(x, t[p + "ffn.in.weight"], t[p + "ffn.in.bias"])
                if out_inv is not None:
                    up = quantize(up, out_inv, fmt)  # a pass of its own: ffn.in stays unquantised
            if out_inv is not None:
                out_proj = q["ffn.out"]
                y = project(out_proj, up, fmt, bias=mode2, out_dtype=dtype)
                if mode2:
                    y = fake_quantize(y, out_proj.output_scale, fmt)
            else:
                y = F.linear(up, t[p + "ffn.out.weight"])
            inv = self._input_inv(i + 1, "attn.qkv")
            xq = self._quant_buffer(inv, (tokens, hidden), dev)
            bias = e.zero_bias if (mode2 and "ffn.out" in q) else t[p + "ffn.out.bias"]
            x = bias_residual_layernorm(y, bias, residual, t[p + "ffn.ln.weight"], t[p + "ffn.ln.bias"], eps,
                                        quant_out=xq, quant_inv_scale=inv)
        return x


def require_fp8_device(device: torch.device) -> None:
    """fp8 tensor cores need compute capability >= 8.9 (Ada, Hopper and later)."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise QuantError(f"fp8 needs a GPU of compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} "
                         f"is {major}.{minor}: build with --precision int8 or fp16, or with --device cpu")
