"""Kernel exploration on the lent GPU: which tilings and backends to choose, before wiring them in.

    PYTHONPATH=src python benchmarks/device_explore.py $OUT/explore.json

BERT-Large fp16 shapes throughout. Sections (each caught on its own; the JSON is rewritten after each):

1. attention: PyTorch varlen flash (and FA3 when ``activate_flash_attention_impl`` offers it) against
   the Triton kernel at several tilings, for batches of equal lengths and a SQuAD-like ragged batch;
   every Triton result is checked against PyTorch's before it is timed.
2. gemm: the four projections at M = 384 .. 49152 tokens: cuBLAS (F.linear; the FFN up-projection
   followed by bias_gelu as the engine runs it) against the Triton GEMM (pointer and TMA-persistent
   tilings; the up-projection with GELU in its epilogue), each result checked first.
3. hf_graph: why our "Hugging Face + CUDA graph" peer is slower than eager: the same model timed eager,
   captured under inference_mode and under no_grad, with and without an attention mask, and the top
   kernels of each captured graph.
4. engine: random BERT-Large engines with the default choices and with every Triton choice forced,
   timed at b1 s384 and b128 s384, with a per-kernel profile of b1 s384.
5. levers: ceilings of this card, the up-projection's epilogue options (cuBLASLt's GELU epilogue
   among them) and PyTorch's SDPA backends against the Triton attention (``section_levers``).
6. algorithms: every algorithm cuBLASLt's heuristic suggests for each projection at M = 384 .. 49,152,
   timed against the engine's call (none was faster in a chained pass, session 7), and 7. floors:
   BERT-Large's and -Base's GEMMs alone, chained as in one pass, at every cell's token count: what
   the GEMMs cost whatever else the engine does (``section_algorithms``, ``section_floors``).
8. sustained: the 8192^3 fp16 matmul ceiling over 0.05 s and over 4 s (``section_sustained``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
# BERTRT_SRC: explore another checkout's source (an older commit's, for a before/after in one call).
sys.path.insert(0, os.environ.get("BERTRT_SRC", str(REPO / "src")))

from bertrt.harness.perf import environment  # noqa: E402

DTYPE = torch.float16
HEADS, HEAD_DIM, HIDDEN, INTER = 16, 64, 1024, 4096


def bench(fn) -> float:
    """ms per call of a whole model call as a user makes it (launches included)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def bench_kernel(fn) -> float:
    """ms per call of kernels, replayed from a CUDA graph as the engine runs them (the build's timer).

    Session 2 timed kernels here with ``bench``: launch overhead, most of a small kernel's time at a
    few hundred tokens, made the fused GEMM + GELU look faster at 384 tokens and Triton attention
    faster everywhere, where the build's graph replays found otherwise."""
    from bertrt.engine.build import graph_time_ms

    return graph_time_ms(fn)


def cu_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")


def attention_shapes() -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(0)
    squad_like = (torch.randint(100, 385, (256,), generator=g)).tolist()  # ~ the dev set's 178 +/- spread
    shapes = {f"b{b}_s{s}": [s] * b for b in (1, 8, 32, 128) for s in (128, 384)}
    shapes["squad_like_256"] = squad_like
    if os.environ.get("ATTN_SHAPES"):  # a comma-separated subset
        shapes = {k: shapes[k] for k in os.environ["ATTN_SHAPES"].split(",")}
    return shapes


def attention_configs():
    from bertrt.ops.attention_triton import AttentionConfig

    out = {}
    if os.environ.get("ATTN_CONFIGS"):  # e.g. "128x64_w8_s3,64x64_w4_s3"
        return {name: AttentionConfig(*map(int, re.fullmatch(r"(\d+)x(\d+)_w(\d+)_s(\d+)", name).groups()))
                for name in os.environ["ATTN_CONFIGS"].split(",")}
    for bm, bn, w, st in [(16, 64, 2, 2), (32, 64, 4, 2), (32, 128, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3),
                          (64, 128, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2),
                          (64, 32, 4, 2), (128, 32, 4, 2)]:
        out[f"{bm}x{bn}_w{w}_s{st}"] = AttentionConfig(bm, bn, w, st)
    return out


def section_attention() -> dict:
    from bertrt.ops.attention import varlen_attention
    from bertrt.ops.attention_triton import varlen_attention_triton

    rows = {}
    fa3 = None
    try:
        from torch.nn.attention import activate_flash_attention_impl, list_flash_attention_impls

        fa3 = {"impls": list(list_flash_attention_impls())}
    except Exception as exc:  # noqa: BLE001
        fa3 = {"error": f"{type(exc).__name__}: {exc}"}
    for name, lengths in attention_shapes().items():
        torch.manual_seed(0)
        tokens = sum(lengths)
        qkv = torch.randn(tokens, 3, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        q, k, v = qkv.unbind(1)
        cu, seq = cu_of(lengths), max(lengths)
        flops = sum(4 * n * n * HEAD_DIM * HEADS for n in lengths)
        expected = varlen_attention(q, k, v, cu, seq)
        row = {"tokens": tokens, "sequences": len(lengths), "max_seqlen": seq, "gflop": flops / 1e9}
        ms = bench_kernel(lambda: varlen_attention(q, k, v, cu, seq))
        row["torch"] = {"ms": ms, "tflops": flops / ms / 1e9}
        if "impls" in fa3 and "FA3" in fa3["impls"]:
            try:
                from torch.nn.attention import activate_flash_attention_impl, restore_flash_attention_impl

                activate_flash_attention_impl("FA3")
                got = varlen_attention(q, k, v, cu, seq)
                err = (got.float() - expected.float()).abs().max().item()
                ms = bench_kernel(lambda: varlen_attention(q, k, v, cu, seq))
                row["torch_fa3"] = {"ms": ms, "tflops": flops / ms / 1e9, "max_err": err}
                restore_flash_attention_impl()
            except Exception as exc:  # noqa: BLE001
                row["torch_fa3"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        row["triton"] = {}
        for cname, cfg in attention_configs().items():
            try:
                got = varlen_attention_triton(q, k, v, cu, seq, config=cfg)
                err = (got.float() - expected.float()).abs().max().item()
                ms = bench_kernel(lambda cfg=cfg: varlen_attention_triton(q, k, v, cu, seq, config=cfg))
                row["triton"][cname] = {"ms": ms, "tflops": flops / ms / 1e9, "max_err": err, "ok": err < 5e-3}
            except Exception as exc:  # noqa: BLE001
                row["triton"][cname] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        best = min((c for c in row["triton"].items() if c[1].get("ok")), key=lambda c: c[1]["ms"], default=None)
        row["best_triton"] = best[0] if best else None
        rows[name] = row
        print(f"attention {name}: torch {row['torch']['ms']:.4f} ms; best triton {best[0] if best else None} "
              f"{best[1]['ms'] if best else float('nan'):.4f} ms", flush=True)
    return {"fa3": fa3, "rows": rows}


GEMM_SHAPES = {"qkv": (3 * HIDDEN, HIDDEN), "out": (HIDDEN, HIDDEN), "ffn_in_gelu": (INTER, HIDDEN),
               "ffn_out": (HIDDEN, INTER)}


def gemm_configs():
    """Pointer and TMA tilings (session 2), and TMA variants for the fused up-projection (session 4:
    two programs per SM, ``_p2``). Session 4 also timed a split epilogue and warp specialization
    (explore_h100_s4.json); neither won, and the kernel no longer has them."""
    from bertrt.ops.linear_gelu import GemmConfig

    out = {}
    if os.environ.get("GEMM_CONFIGS", "epilogue") == "all":
        for bm, bn, bk, w, st, tma in [(64, 64, 64, 4, 4, False), (64, 128, 64, 4, 4, False),
                                       (128, 64, 64, 4, 4, False), (128, 128, 64, 8, 4, False),
                                       (128, 256, 64, 8, 3, False), (64, 64, 64, 4, 4, True),
                                       (64, 128, 64, 4, 4, True), (128, 128, 64, 4, 4, True),
                                       (128, 128, 64, 8, 4, True), (128, 256, 64, 8, 3, True),
                                       (128, 256, 64, 8, 4, True)]:
            out[f"{'tma_' if tma else ''}{bm}x{bn}x{bk}_w{w}_s{st}"] = GemmConfig(bm, bn, bk, 8, w, st, tma)
        return out
    # Session 4: 128x128 w8 s4 best up to ~2k tokens, 128x256 w8 s3 above; two programs per SM,
    # 256x128 and 4-stage 128x256 lost everywhere.
    for bm, bn, w, st, per_sm in [(128, 128, 8, 4, 1), (128, 256, 8, 3, 1), (128, 128, 8, 3, 1),
                                  (128, 64, 4, 4, 1), (128, 128, 4, 2, 2)]:
        name = f"tma_{bm}x{bn}x64_w{w}_s{st}" + ("_p2" if per_sm == 2 else "")
        out[name] = GemmConfig(bm, bn, 64, 8, w, st, True, programs_per_sm=per_sm)
    return out


def section_gemm() -> dict:
    from bertrt.ops.bias_gelu import bias_gelu
    from bertrt.ops.linear_gelu import _launch

    rows = {}
    ops = os.environ.get("GEMM_OPS", ",".join(GEMM_SHAPES)).split(",")
    for m in (int(v) for v in os.environ.get("GEMM_M", "384,1536,3072,12288,49152").split(",")):
        for op, (n, k) in ((op, GEMM_SHAPES[op]) for op in ops):
            torch.manual_seed(0)
            x = torch.randn(m, k, device="cuda").to(DTYPE)
            w = (torch.randn(n, k, device="cuda") * (1.5 / math.sqrt(k))).to(DTYPE)
            b = (torch.randn(n, device="cuda") * 0.5).to(DTYPE)
            gelu = op == "ffn_in_gelu"
            flops = 2 * m * n * k
            if gelu:
                def cublas():
                    up = F.linear(x, w)
                    return bias_gelu(up, b, out=up)
                expected = F.gelu(F.linear(x, w, b))
            elif op == "qkv":
                cublas = lambda: F.linear(x, w, b)  # noqa: E731
                expected = cublas()
            else:
                cublas = lambda: F.linear(x, w)  # noqa: E731  (the engine adds this bias in the LN kernel)
                expected = F.linear(x, w, b)
            ms = bench_kernel(cublas)
            row = {"M": m, "N": n, "K": k, "cublas": {"ms": ms, "tflops": flops / ms / 1e9}, "triton": {}}
            if gelu:  # what a GEMM epilogue at cuBLAS speed would cost
                ms = bench_kernel(lambda: F.linear(x, w))
                row["cublas_gemm_only"] = {"ms": ms, "tflops": flops / ms / 1e9}
            scale = expected.float().abs().max().item()
            for cname, cfg in gemm_configs().items():
                try:
                    out = torch.empty(m, n, device="cuda", dtype=DTYPE)
                    _launch(x, w, b, out, cfg, gelu=gelu)
                    err = (out.float() - expected.float()).abs().max().item() / scale
                    ms = bench_kernel(lambda cfg=cfg, out=out: _launch(x, w, b, out, cfg, gelu=gelu))
                    row["triton"][cname] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err": err, "ok": err < 1e-2}
                except Exception as exc:  # noqa: BLE001
                    row["triton"][cname] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            best = min((c for c in row["triton"].items() if c[1].get("ok")), key=lambda c: c[1]["ms"], default=None)
            row["best_triton"] = best[0] if best else None
            rows[f"{op}_M{m}"] = row
            print(f"gemm {op} M={m}: cublas {row['cublas']['ms']:.4f} ms ({row['cublas']['tflops']:.0f}); best "
                  f"{best[0] if best else None} {best[1]['ms'] if best else float('nan'):.4f} ms "
                  f"({best[1]['tflops'] if best else 0:.0f})", flush=True)
            del x, w, b, expected
        torch.cuda.empty_cache()
    return {"rows": rows}


def section_levers() -> dict:
    """Session 6: what the next changes could buy, measured before wiring anything else in.

    - ceilings: fp16 8192^3 matmul and a device-to-device copy on this card (the H200 replaced the
      H100 that ANCHORS.md's ceilings come from);
    - the FFN up-projection at M = 384 .. 49,152: cuBLAS without any epilogue, cuBLAS + bias_gelu,
      the fused Triton GEMM (erf), and cuBLASLt's GELU_BIAS epilogue through bertrt's binding
      (linear_bias_gelu_tanh), each with its max error against fp64 erf-GELU;
    - attention on the packed layout (bertrt's Triton kernel, PyTorch's varlen flash kernel) and,
      for equal lengths, PyTorch's SDPA backends on the padded layout. Session 6 also ran cuDNN on
      the packed tokens through jagged tensors (SDPA on torch.nested views over cu_seqlens): 63-74
      ms per call on an H200 and not capturable in a CUDA graph (session6/call2/explore.json), so
      it is gone again.
    """
    from bertrt.ops.attention_triton import varlen_attention_triton
    from bertrt.ops.bias_gelu import bias_gelu
    from bertrt.ops.linear_gelu import linear_bias_gelu
    from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh

    result: dict = {"ceilings": {}, "ffn_in": {}, "attention": {}}
    a = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    b = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    ms = bench_kernel(lambda: a @ b)
    result["ceilings"]["fp16_matmul_8192_tflops"] = 2 * 8192 ** 3 / ms / 1e9
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = bench_kernel(lambda: dst.copy_(src))
    result["ceilings"]["copy_tb_s"] = 2 * src.numel() / ms / 1e9
    del a, b, src, dst
    print(f"ceilings: {result['ceilings']}", flush=True)
    torch.cuda.empty_cache()

    n, k = INTER, HIDDEN
    w = (torch.randn(n, k, device="cuda") * (1.5 / math.sqrt(k))).to(DTYPE)
    bias = (torch.randn(n, device="cuda") * 0.5).to(DTYPE)
    for m in (384, 3072, 12288, 49152):
        torch.manual_seed(m)
        x = torch.randn(m, k, device="cuda").to(DTYPE)
        exact = F.gelu(F.linear(x.double(), w.double(), bias.double()))
        scale = exact.abs().max().item()

        def unfused(x=x):
            up = F.linear(x, w)
            return bias_gelu(up, bias, out=up)

        variants = {"cublas_no_epilogue": lambda x=x: F.linear(x, w), "cublas_bias_gelu": unfused,
                    "triton_fused_erf": lambda x=x: linear_bias_gelu(x, w, bias),
                    "cublaslt_gelu_tanh": lambda x=x: linear_bias_gelu_tanh(x, w, bias)}
        row = {}
        for name, fn in variants.items():
            try:
                got = fn()
                ms = bench_kernel(fn)
                row[name] = {"ms": ms, "tflops": 2 * m * n * k / ms / 1e9}
                if name != "cublas_no_epilogue":
                    row[name]["max_err_vs_fp64_erf"] = (got.double() - exact).abs().max().item() / scale
            except Exception as exc:  # noqa: BLE001
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        result["ffn_in"][f"M{m}"] = row
        print(f"ffn_in M={m}: " + ", ".join(f"{k_}={v.get('ms', float('nan')) * 1000:.1f}us"
                                            f"/{v.get('max_err_vs_fp64_erf', 0):.1e}" for k_, v in row.items()),
              flush=True)
        del x, exact
        torch.cuda.empty_cache()

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bertrt.ops.attention import varlen_attention

    shapes = {"b8_s384": [384] * 8, "b32_s384": [384] * 32, "b128_s384": [384] * 128,
              "squad_like_256": attention_shapes()["squad_like_256"]}
    for label, lengths in shapes.items():
        torch.manual_seed(len(lengths))
        batch, seq, tokens = len(lengths), max(lengths), sum(lengths)
        qkv = torch.randn(tokens, 3, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        q, k_, v = qkv.unbind(1)
        cu = cu_of(lengths)
        flops = sum(4 * n * n * HEAD_DIM * HEADS for n in lengths)
        expected = varlen_attention_triton(q, k_, v, cu, seq)
        row = {"triton_packed": {"ms": bench_kernel(lambda: varlen_attention_triton(q, k_, v, cu, seq))}}
        for name, fn in (("flash_packed", varlen_attention),):
            try:
                err = (fn(q, k_, v, cu, seq).float() - expected.float()).abs().max().item()
                row[name] = {"ms": bench_kernel(lambda fn=fn: fn(q, k_, v, cu, seq)), "max_err_vs_triton": err}
            except Exception as exc:  # noqa: BLE001
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        equal = len(set(lengths)) == 1
        padded = [t.view(batch, seq, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k_, v)] if equal else []
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)) if equal else ():
            try:
                def fn(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(*padded)
                got = fn().transpose(1, 2).reshape(tokens, HEADS, HEAD_DIM)
                err = (got.float() - expected.float()).abs().max().item()
                row[name] = {"ms": bench_kernel(fn), "max_err_vs_triton": err}
            except Exception as exc:  # noqa: BLE001
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        for r in row.values():
            if "ms" in r:
                r["tflops"] = flops / r["ms"] / 1e9
        result["attention"][label] = row
        print(f"attention {label}: " + ", ".join(f"{k_}={v.get('ms', float('nan')) * 1000:.1f}us"
                                                         for k_, v in row.items()), flush=True)
    return result


# The engine's four projections (N, K, cuBLASLt epilogue constant in ops/_cublaslt.py, accumulate
# into the residual).
PROJECTIONS = {"qkv": (3 * HIDDEN, HIDDEN, "EPILOGUE_BIAS", False),
               "attn_out": (HIDDEN, HIDDEN, "EPILOGUE_DEFAULT", True),
               "ffn_in": (INTER, HIDDEN, "EPILOGUE_GELU_BIAS", False),
               "ffn_out": (HIDDEN, INTER, "EPILOGUE_DEFAULT", True)}


def _projection_call(op: str, x, w, b, out, algorithm: int | None):
    """One projection as the engine runs it (algorithm None: its PyTorch / bertrt call), or through
    cuBLASLt with the ``algorithm``-th suggestion."""
    from bertrt.ops import _cublaslt

    if algorithm is None:
        return _engine_projection(op, x, w, b, out)
    _, _, epilogue, accumulate = PROJECTIONS[op]
    bias = None if epilogue == "EPILOGUE_DEFAULT" else b
    return lambda: _cublaslt.matmul(x, w, bias, getattr(_cublaslt, epilogue), out=out, accumulate=accumulate,
                                    algorithm=algorithm)


def _projection_tensors(op: str, m: int, seed: int = 0):
    n, k, _, _ = PROJECTIONS[op]
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).to(DTYPE)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(DTYPE)
    b = (torch.randn(n, device="cuda", generator=g) * 0.02).to(DTYPE)
    out = torch.randn(m, n, device="cuda", generator=g).to(DTYPE)
    return x, w, b, out


ALGORITHM_TOKENS = (384, 1536, 3072, 12288, 49152)


def section_algorithms() -> dict:
    """Each of cuBLASLt's suggested algorithms (up to 16) for the four projections, checked against
    the engine's call and timed as the build times (graph replays). Accumulating calls are checked
    on a fresh copy of the residual and timed adding into one buffer again and again."""
    from bertrt.ops import _cublaslt

    result = {}
    for op, (n, k, epilogue, accumulate) in PROJECTIONS.items():
        for m in ALGORITHM_TOKENS:
            x, w, b, residual = _projection_tensors(op, m)
            flops = 2 * m * n * k

            def checked(algorithm):
                out = residual.clone()
                return _projection_call(op, x, w, b, out, algorithm)()

            expected = checked(None).float()
            scale = expected.abs().max().item()
            out = residual.clone()
            engine_ms = bench_kernel(_projection_call(op, x, w, b, out, None))
            count = _cublaslt.heuristic_count(x, w, getattr(_cublaslt, epilogue), accumulate=accumulate)
            algos = []
            for i in range(count):
                try:
                    err = (checked(i).float() - expected).abs().max().item() / scale
                    ms = bench_kernel(_projection_call(op, x, w, b, out, i))
                    algos.append({"index": i, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": err})
                except Exception as exc:  # noqa: BLE001
                    algos.append({"index": i, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            ok = [a for a in algos if "ms" in a and a["rel_err"] <= 1e-2]
            best = min(ok, key=lambda a: a["ms"]) if ok else None
            row = {"engine_ms": engine_ms, "engine_tflops": flops / engine_ms / 1e9, "suggested": count,
                   "algorithms": algos, "best_index": best and best["index"],
                   "best_ms": best and best["ms"], "best_vs_engine": best and engine_ms / best["ms"],
                   "first_vs_engine": algos and "ms" in algos[0] and engine_ms / algos[0]["ms"]}
            result[f"{op}_M{m}"] = row
            print(f"{op} M={m}: engine {engine_ms * 1000:.1f}us, {count} algorithms, best #{row['best_index']} "
                  f"{(best or {}).get('ms', float('nan')) * 1000:.1f}us", flush=True)
            del x, w, b, residual, out
    torch.cuda.empty_cache()
    return result


def section_floors() -> dict:
    """The GEMMs of BERT-Large and BERT-Base alone: every layer's four projections, as the engine
    calls them, each layer with its own weights (activations shared, as the engine reuses its
    buffers), captured in one graph and replayed back to back, at the token count of every cell of
    issue 3's table (batch 1, 8, 32, 128 x 128 and 384 tokens). No implementation that runs these
    products in fp16 through cuBLAS can take less; nor less than "no_epilogue", the same products
    without bias, GELU or residual. And one layer's attention by the fastest backend that runs here
    (``_fastest_attention``). BERT-Large also in fp8 (e4m3, per-tensor scales, torch._scaled_mm to
    fp16, no epilogues) for comparison. With nvidia-smi's SM clock and power."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from device_profile import GpuTelemetry

    models = {"large": (1024, 4096, 24), "base": (768, 3072, 12)}
    counts = sorted({b * s for b in (1, 8, 32, 128) for s in (128, 384)})
    result = {}
    for model, (hidden, inter, layers) in models.items():
        shapes = {"qkv": (3 * hidden, hidden), "attn_out": (hidden, hidden), "ffn_in": (inter, hidden),
                  "ffn_out": (hidden, inter)}
        g = torch.Generator(device="cuda").manual_seed(0)
        weights = {op: [((torch.randn(n, k, device="cuda", generator=g) * 0.02).to(DTYPE),
                         (torch.randn(n, device="cuda", generator=g) * 0.02).to(DTYPE)) for _ in range(layers)]
                   for op, (n, k) in shapes.items()}
        for m in counts:
            acts = {op: (torch.randn(m, k, device="cuda", generator=g).to(DTYPE),
                         torch.randn(m, n, device="cuda", generator=g).to(DTYPE)) for op, (n, k) in shapes.items()}
            flops = 2 * m * layers * sum(n * k for n, k in shapes.values())
            replays = max(10, min(400, int(300 * 4e11 / flops)))  # ~0.3 s at 400 TFLOP/s
            calls = []
            for i in range(layers):
                for op in shapes:
                    (x, out), (w, b) = acts[op], weights[op][i]
                    calls.append(_engine_projection(op, x, w, b, out))
            row = {"tokens": m, "engine_calls": _time_chain(calls, replays, flops, GpuTelemetry)}
            # The products alone (no bias, GELU or residual in any epilogue): below any BERT.
            bare = [lambda x=acts[op][0], w=weights[op][i][0]: F.linear(x, w) for i in range(layers) for op in shapes]
            row["no_epilogue"] = _time_chain(bare, replays, flops, GpuTelemetry)
            row["attention_ms_per_layer"] = _fastest_attention(m, hidden // 64)
            if model == "large":
                try:
                    one = torch.ones((), device="cuda")
                    x8 = {op: acts[op][0].to(torch.float8_e4m3fn) for op in shapes}
                    w8 = {op: [(w * 50).to(torch.float8_e4m3fn) for w, _ in weights[op]] for op in shapes}
                    fp8 = [lambda x=x8[op], w=w8[op][i]: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one,
                                                                          out_dtype=DTYPE)
                           for i in range(layers) for op in shapes]
                    row["fp8_no_epilogue"] = _time_chain(fp8, replays, flops, GpuTelemetry)
                except Exception as exc:  # noqa: BLE001
                    row["fp8_no_epilogue"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            result[f"{model}_T{m}"] = row
            attention = row["attention_ms_per_layer"]
            print(f"floors {model} T={m}: " + ", ".join(f"{k_}={v['ms_per_pass']:.3f}ms" for k_, v in row.items()
                                                      if isinstance(v, dict) and "ms_per_pass" in v)
                  + f", attention {attention['fastest']} {attention['fastest_ms'] * 1000:.1f}us/layer", flush=True)
            del acts
            torch.cuda.empty_cache()
        del weights
    return result


def _fastest_attention(tokens: int, heads: int) -> dict:
    """One layer's attention at ``tokens`` tokens of equal sequences (batch x 128 or 384, as the
    table's cells), by every backend that runs here: bertrt's Triton kernel (each tiling), PyTorch's
    varlen flash kernel on the packed tokens, and SDPA's flash and cuDNN kernels on the padded
    layout; ms per call (graph replays), and the fastest."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bertrt.ops.attention import varlen_attention
    from bertrt.ops.attention_triton import TILINGS, varlen_attention_triton

    seq = 128 if tokens in (128, 1024, 4096, 16384) else 384
    batch = tokens // seq
    qkv = torch.randn(tokens, 3, heads, HEAD_DIM, device="cuda", dtype=DTYPE)
    q, k, v = qkv.unbind(1)
    cu = cu_of([seq] * batch)
    padded = [t.reshape(batch, seq, heads, HEAD_DIM).transpose(1, 2) for t in (q, k, v)]

    def sdpa(backend):
        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*padded)
        return fn

    candidates = {"triton": lambda: varlen_attention_triton(q, k, v, cu, seq),
                  **{name: lambda cfg=cfg: varlen_attention_triton(q, k, v, cu, seq, config=cfg)
                     for name, cfg in TILINGS.items()},
                  "torch_varlen": lambda: varlen_attention(q, k, v, cu, seq),
                  "sdpa_flash_padded": sdpa(SDPBackend.FLASH_ATTENTION),
                  "sdpa_cudnn_padded": sdpa(SDPBackend.CUDNN_ATTENTION)}
    times = {}
    for name, fn in candidates.items():
        try:
            times[name] = bench_kernel(fn)
        except Exception as exc:  # noqa: BLE001
            times[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    measured = {k_: v_ for k_, v_ in times.items() if isinstance(v_, float)}
    best = min(measured, key=measured.get)
    return {"batch": batch, "seq": seq, "by_backend": times, "fastest": best, "fastest_ms": measured[best]}


def section_sustained() -> dict:
    """The fp16 matmul ceiling short and sustained: an 8192^3 product replayed from a graph for about
    0.05 s (what ANCHORS.md's 718 TFLOP/s and a microbenchmark see) and for about 4 s (what a
    long batch or a LoadGen run sees, once the 700 W cap has pulled the clock down)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from device_profile import GpuTelemetry

    a = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    b = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    flops = 2 * 8192 ** 3
    result = {}
    for label, replays in (("short", 30), ("sustained", 2500)):
        torch.cuda.synchronize()
        time.sleep(2)  # let the card cool back to its idle clock between the two
        result[label] = _time_chain([lambda: a @ b], replays, flops, GpuTelemetry)
        print(f"8192^3 {label}: {result[label]['tflops']:.0f} TFLOP/s, {result[label]['gpu']}", flush=True)
    return result

def _engine_projection(op: str, x, w, b, out):
    """A projection as the engine's runtime calls it, at any width."""
    from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh

    if op == "qkv":
        return lambda: F.linear(x, w, b)
    if op == "ffn_in":
        return lambda: linear_bias_gelu_tanh(x, w, b)
    return lambda: out.addmm_(x, w.t())


def _time_chain(calls, replays: int, flops: float, telemetry) -> dict:
    for call in calls:
        call()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    probe = telemetry()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / replays
    return {"ms_per_pass": ms, "tflops": flops / ms / 1e9, "gpu": probe.stop()}


def top_kernels(fn, n=12) -> list:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    stats = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0):
            stats[e.key] = getattr(e, "self_device_time_total", 0) / 3 / 1000
    return sorted(([k[:120], round(v, 4)] for k, v in stats.items() if v > 0), key=lambda r: -r[1])[:n]


def section_hf_graph() -> dict:
    import transformers

    from bertrt.config import STANDARD_CONFIGS
    from bertrt.harness.perf import _graphed, synthetic_inputs

    config = STANDARD_CONFIGS["large"]
    hf_config = transformers.BertConfig(**config.to_hf_dict("BertForQuestionAnswering"))
    with torch.device("cuda"):
        model = transformers.BertForQuestionAnswering(hf_config).to(DTYPE).eval()
    result = {"attn_implementation": getattr(model.config, "_attn_implementation", None)}
    for batch, seq in ((1, 384), (8, 384), (32, 128)):
        ids, types = synthetic_inputs(batch, seq, config.vocab_size, device=torch.device("cuda"))
        mask = torch.ones_like(ids)
        row = {}
        with torch.inference_mode():
            row["eager_ms"] = bench(lambda: model(input_ids=ids, token_type_ids=types))
            row["eager_mask_ms"] = bench(lambda: model(input_ids=ids, token_type_ids=types, attention_mask=mask))
        variants = {
            "graph_inference_mode": lambda: _graphed(lambda: model(input_ids=ids, token_type_ids=types),
                                                     torch.device("cuda")),
            "graph_inference_mode_mask": lambda: _graphed(
                lambda: model(input_ids=ids, token_type_ids=types, attention_mask=mask), torch.device("cuda")),
        }

        def graphed_no_grad(with_mask):
            def fn():
                return model(input_ids=ids, token_type_ids=types, attention_mask=mask if with_mask else None)

            with torch.no_grad():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        fn()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = fn()
            return graph.replay, (graph, out)

        variants["graph_no_grad"] = lambda: graphed_no_grad(False)
        variants["graph_no_grad_mask"] = lambda: graphed_no_grad(True)
        for vname, make in variants.items():
            try:
                replay, keep = make()
                row[vname + "_ms"] = bench(replay)
                if (batch, seq) == (8, 384):
                    row[vname + "_top"] = top_kernels(replay)
                del keep
            except Exception as exc:  # noqa: BLE001
                row[vname + "_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            torch.cuda.empty_cache()
        if (batch, seq) == (8, 384):
            with torch.inference_mode():
                row["eager_top"] = top_kernels(lambda: model(input_ids=ids, token_type_ids=types))
        result[f"b{batch}_s{seq}"] = row
        print(f"hf b{batch} s{seq}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_ms")),
              flush=True)
    return result


def section_engine() -> dict:
    from bertrt.config import STANDARD_CONFIGS
    from bertrt.engine import Engine
    from bertrt.packed import pack_sequences
    from bertrt.weights import random_checkpoint

    checkpoint = random_checkpoint(STANDARD_CONFIGS["large"], seed=0)
    result = {}
    all_triton = {"ffn_in_gelu": {49152: "triton"}, "attention": {49152: "triton"}}
    for label, choices in (("default", {}), ("all_triton", all_triton), ("tuned", None)):
        t0 = time.perf_counter()
        engine = Engine.from_checkpoint(checkpoint, precision="fp16", device="cuda", gemm_choices=choices)
        row = {"build_s": time.perf_counter() - t0, "gemm_choices": {k: {str(a): b for a, b in v.items()}
                                                                      for k, v in engine.spec.gemm_choices.items()}}
        for batch, seq in ((1, 384), (1, 128), (8, 384), (128, 384)):
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(1000, 30000, (batch, seq), generator=g).tolist()
            packed = pack_sequences(ids, [[0] * seq] * batch).to("cuda")
            row[f"b{batch}_s{seq}_ms"] = bench(lambda packed=packed: engine.qa_logits(packed))
            if (batch, seq) == (1, 384):
                row["b1_s384_top"] = top_kernels(lambda packed=packed: engine.qa_logits(packed), n=20)
                engine.graphs = False
                row["b1_s384_top_eager"] = top_kernels(lambda packed=packed: engine.qa_logits(packed), n=20)
                engine.graphs = True
        result[label] = row
        print(f"engine {label}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_ms")), flush=True)
        del engine
        torch.cuda.empty_cache()
    return result


def main(argv: list[str]) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    out = Path(argv[1]) if len(argv) > 1 else Path(os.environ.get("OUT", ".")) / "explore.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    only = set(argv[2].split(",")) if len(argv) > 2 else None
    report = {"kind": "bertrt-device-explore", "environment": environment(torch.device("cuda")), "sections": {}}
    start = time.perf_counter()
    for name, fn in (("attention", section_attention), ("gemm", section_gemm), ("hf_graph", section_hf_graph),
                     ("engine", section_engine), ("levers", section_levers), ("algorithms", section_algorithms),
                     ("floors", section_floors), ("sustained", section_sustained)):
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"\n== {name} (t={t0 - start:.0f}s)", flush=True)
        try:
            report["sections"][name] = {"ok": True, "result": fn()}
        except Exception as exc:  # noqa: BLE001
            report["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc()[-3000:]}
            print(f"!! {name}: {type(exc).__name__}: {exc}", flush=True)
        report["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
