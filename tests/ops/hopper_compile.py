"""Compile every Triton kernel the engine launches for Hopper (sm_90), on a machine without a GPU.

    python tests/ops/hopper_compile.py        # prints one JSON line per compiled launch

The interpreter tests check what a kernel computes; this checks that it lowers: Triton compiles
to PTX and ptxas (shipped in Triton's wheel) to a cubin for compute capability 9.0, which needs no
GPU. Each op's public function is called on small CPU tensors with its kernel launch recorded
instead of run (the tensors' dtypes and the op's tiling choices make the signature), then each
recorded launch is compiled. Shapes are chosen to reach every tiling the engine uses, in fp16 and bf16,
except linear_gelu's TMA GEMM kernel, which the op takes only on a Hopper GPU (linear_int8's is
compiled: its ``tma_usable`` is stubbed here).

Run it in a process where Triton was imported without TRITON_INTERPRET (the test does).
Exit status 1 if any launch fails to compile.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from bertrt.ops import (_triton, attention_triton, bias_gelu, embed_layernorm, geglu, linear_gelu,  # noqa: E402
                        linear_int8, linear_splitk, qa_head, quantize, residual_layernorm, rotary)

MODULES = (attention_triton, bias_gelu, embed_layernorm, geglu, linear_gelu, linear_int8, linear_splitk, qa_head,
           quantize, residual_layernorm, rotary)
LAUNCH_OPTIONS = ("num_warps", "num_stages")
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
          torch.int64: "i64", torch.int8: "i8", torch.float8_e4m3fn: "fp8e4nv"}


class Recorder:
    """Stands in for ``_triton.jit`` in the op modules: returns launchers that record, not run."""

    def __init__(self):
        self.launches: list[tuple[object, tuple, dict]] = []

    def __call__(self, fn, helpers=None, *, per_request=()):
        kernel = _triton.jit(fn, helpers, per_request=per_request)
        recorder = self

        class Launcher:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.launches.append((kernel, args, kwargs))

        return Launcher()


def signature(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, options) for ``triton.compile`` from a recorded launch."""
    params = inspect.signature(kernel.fn).parameters
    names = list(params)
    values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
    sig, constexprs = {}, {}
    for index, name in enumerate(names):
        value = values[name]
        if "constexpr" in str(params[name].annotation):
            sig[name] = "constexpr"
            constexprs[(index,)] = value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + DTYPES[value.dtype]
        elif type(value).__name__ == "TensorDescriptor":  # triton.tools.tensor_descriptor's
            sig[name] = f"tensordesc<{DTYPES[value.base.dtype]}{list(value.block_shape)}>"
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i64" if abs(value) >= 2**31 else "i32"
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {name}={value!r}")
    options = {k: kwargs[k] for k in LAUNCH_OPTIONS if k in kwargs}
    return sig, constexprs, options


def record_engine_launches(dtypes=(torch.float16, torch.bfloat16)) -> list[tuple[object, tuple, dict]]:
    """Call every op as the engine does, in each engine dtype, at shapes that reach each tiling;
    return the launches."""
    recorder = Recorder()
    for module in MODULES:
        module.jit = recorder
        module.use_triton = lambda *tensors: True
    linear_int8.tma_usable = lambda *tensors: True  # its TMA kernel, which it takes on Hopper only
    for dtype in dtypes:
        _call_ops(dtype)
    return recorder.launches


def _call_ops(f16: torch.dtype) -> None:
    h = 64
    x = torch.randn(300, h, dtype=f16)
    bias, gamma, beta = (torch.randn(h, dtype=f16) for _ in range(3))
    ids = torch.zeros(300, dtype=torch.int32)
    table = torch.randn(500, h, dtype=f16)
    embed_layernorm.embed_layernorm(ids, ids, ids, table, table, table, gamma, beta, 1e-12)
    embed_layernorm.embed_layernorm(ids.long(), ids.long(), ids.long(), table, table, table, gamma, beta, 1e-12)
    residual_layernorm.bias_residual_layernorm(x, bias, x, gamma, beta, 1e-12)
    for splits in linear_splitk_splits():
        residual_layernorm.bias_residual_layernorm(torch.randn(splits, 300, h), bias, x, gamma, beta, 1e-12)
    residual_layernorm.bias_residual_layernorm(x, bias, None, gamma, beta, 1e-12)  # residual already in x
    wide = torch.randn(300, 4 * h, dtype=f16)
    bias_gelu.bias_gelu(wide, torch.randn(4 * h, dtype=f16))
    qa_head.qa_head(x, torch.randn(2, h, dtype=f16), torch.randn(2, dtype=f16))
    weight = torch.randn(4 * h, h, dtype=f16)
    for tokens in (100, 1500, 5000):  # linear_gelu.config_for's small / medium / large tilings
        linear_gelu.linear_bias_gelu(torch.randn(tokens, h, dtype=f16), weight, torch.randn(4 * h, dtype=f16))
    for tokens in (100, 1000, 5000):
        for splits in linear_splitk_splits():
            linear_splitk.linear_splitk(torch.randn(tokens, 4 * h, dtype=f16), torch.randn(h, 4 * h, dtype=f16),
                                        splits)
    _call_linear_int8(f16)
    _call_quantised_outputs(f16, x, bias, gamma, beta, ids, table)
    heads, head_dim = 2, 64
    for total, cu in ((384, [0, 384]), (3000, [0, 384, 1000, 3000])):
        q = torch.randn(total, heads, head_dim, dtype=f16)
        cu = torch.tensor(cu, dtype=torch.int32)
        configs = [None, *attention_triton.TILINGS.values()]
        for config in configs:
            attention_triton.varlen_attention_triton(q, q, q, cu, 384, config=config)
            if f16 == torch.float16:  # both products on e4m3 operands, with an e4m3 output too
                attention_triton.varlen_attention_triton(q, q, q, cu, 384, config=config, fp8=True)
                attention_triton.varlen_attention_triton(q, q, q, cu, 384, config=config, fp8=True,
                                                         out=torch.empty(q.shape, dtype=torch.float8_e4m3fn),
                                                         out_inv_scale=torch.ones(()))
    q48 = torch.randn(300, heads, 48, dtype=f16)
    attention_triton.varlen_attention_triton(q48, q48, q48, torch.tensor([0, 300], dtype=torch.int32), 300)
    _call_modernbert_ops(f16)


def _call_modernbert_ops(f16: torch.dtype) -> None:
    """ModernBERT's kernels as its engine runs them: rotary positions on the fused QKV (int32 staged
    positions in graphs, int64 eager), the gated activations, and sliding-window attention with
    every tiling (the local layers run the tiling recorded for attention)."""
    heads, head_dim, tokens = 2, 64, 300
    qkv = torch.randn(tokens, 3 * heads, head_dim, dtype=f16)
    cos, sin = rotary.rotary_tables(160000.0, head_dim, 512)
    for positions in (torch.zeros(tokens, dtype=torch.int32), torch.zeros(tokens, dtype=torch.int64)):
        rotary.rotary_(qkv[:, :2 * heads], positions, cos, sin)
    for act in geglu.GATED_ACTIVATIONS:
        geglu.gated_act(torch.randn(tokens, 2 * 1152, dtype=f16), act)
    q = torch.randn(3000, heads, head_dim, dtype=f16)
    cu = torch.tensor([0, 384, 1000, 3000], dtype=torch.int32)
    for config in [None, *attention_triton.TILINGS.values()]:
        attention_triton.varlen_attention_triton(q, q, q, cu, 2000, config=config, reach=64)


def _call_linear_int8(f16: torch.dtype) -> None:
    """Every tiling through both kernels, with the two epilogues an INT8 engine runs: per-channel
    scales with bias, GELU and residual to ``f16``; per-tensor scales with bias to int8. bf16 output
    only for the default tiling."""
    x, w = torch.zeros(300, 256, dtype=torch.int8), torch.zeros(512, 256, dtype=torch.int8)
    bias, residual = torch.zeros(512, dtype=f16), torch.zeros(300, 512, dtype=f16)
    per_channel, per_tensor = torch.ones(512), torch.ones(())
    configs = linear_int8.TILINGS.values() if f16 == torch.float16 else [linear_int8.config_for(300, 512, 256)]
    for config in configs:
        for tma in (True, False):
            cfg = dataclasses.replace(config, tma=tma)
            linear_int8.linear_int8(x, w, per_channel, bias, gelu=True, residual=residual, out_dtype=f16, config=cfg)
            linear_int8.linear_int8(x, w, per_tensor, bias, out_dtype=torch.int8, out_scale=per_tensor, config=cfg)
    linear_int8.quantize_int8(residual, per_tensor)


def _call_quantised_outputs(f16, x, bias, gamma, beta, ids, table) -> None:
    """The LayerNorms, attention and the rounding pass writing an e4m3 or int8 copy, as quantised
    engines run them."""
    inv = torch.ones(())
    q = torch.randn(384, 2, 64, dtype=f16)
    cu = torch.tensor([0, 384], dtype=torch.int32)
    for dtype in (torch.float8_e4m3fn, torch.int8):
        copy = torch.empty(x.shape, dtype=dtype)
        embed_layernorm.embed_layernorm(ids, ids, ids, table, table, table, gamma, beta, 1e-12, quant_out=copy,
                                        quant_inv_scale=inv)
        residual_layernorm.bias_residual_layernorm(x, bias, x, gamma, beta, 1e-12, quant_out=copy,
                                                   quant_inv_scale=inv)
        attention_triton.varlen_attention_triton(q, q, q, cu, 384, out=torch.empty(q.shape, dtype=dtype),
                                                 out_inv_scale=inv)
        quantize.quantize(x, inv, "fp8" if dtype == torch.float8_e4m3fn else "int8")


def linear_splitk_splits() -> tuple[int, ...]:
    from bertrt.engine.format import SPLITK_BACKENDS

    return tuple(SPLITK_BACKENDS.values())


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: this compiles for the GPU", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    seen, failures = set(), 0
    for kernel, args, kwargs in record_engine_launches():
        sig, constexprs, options = signature(kernel, args, kwargs)
        key = (kernel.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())),
               tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        row = {"kernel": kernel.fn.__name__, "pointers": sorted({t for t in sig.values() if t.startswith("*")}),
               "constexprs": {list(sig)[i[0]]: v for i, v in constexprs.items()}, **options}
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=target,
                                      options=options)
            row.update(ok=True, cubin_bytes=len(compiled.asm["cubin"]))
        except Exception as exc:  # noqa: BLE001 - report every failing launch, not just the first
            failures += 1
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
        row["seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(row), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
