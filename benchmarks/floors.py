"""What no fp16 engine can undercut on this GPU: each latency cell's GEMMs alone and its fastest attention.

    BERTRT_COMMIT=<sha> PYTHONPATH=src python benchmarks/floors.py OUT_DIR [--ceiling] [--no-fp8]

Writes ``OUT_DIR/floors.json`` (and with ``--ceiling`` ``OUT_DIR/matmul_ceiling.json``), the files
kept as ``benchmarks/results/<gpu>/floors.json`` and ``matmul_ceiling.json``; ``plot_floors.py``
sets them against the latency table.

For BERT-Large and BERT-Base at the token count of every cell of the latency table (batch 1, 8, 32,
128 x 128 and 384 tokens):

- ``engine_calls``: every layer's four projections as the engine calls them (bias and tanh-GELU in
  cuBLASLt's epilogues, the projections back to hidden width adding into the residual), each layer
  with its own weights, captured in one CUDA graph and replayed back to back;
- ``no_epilogue``: the same products without bias, GELU or residual: no BERT in fp16 on cuBLAS can
  take less;
- ``attention_ms_per_layer``: one layer's attention by every backend that runs here (bertrt's Triton
  kernel at each tiling, PyTorch's varlen flash kernel on packed tokens, SDPA flash and cuDNN on
  the padded layout), and the fastest;
- ``fp8_no_epilogue`` (BERT-Large, unless ``--no-fp8``): the bare products in e4m3 with per-tensor
  scales, through ``torch._scaled_mm`` (PyTorch's one fp8 GEMM entry point, private to it).

Each chain reports ms per pass, TFLOP/s, and the SM clock and power nvidia-smi sampled meanwhile.
``--ceiling`` adds an 8192^3 fp16 product replayed for about 0.05 s and for about 4 s: the short
rate a microbenchmark sees, and the rate under the power cap that a long run sees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

DTYPE = torch.float16
HEAD_DIM = 64
MODELS = {"large": (1024, 4096, 24), "base": (768, 3072, 12)}  # hidden, intermediate, layers
BATCHES, SEQS = (1, 8, 32, 128), (128, 384)


def cells() -> list[tuple[int, int, int]]:
    """(tokens, batch, seq) of every latency-table cell, one per distinct token count."""
    seen: dict[int, tuple[int, int, int]] = {}
    for seq in SEQS:
        for batch in BATCHES:
            seen.setdefault(batch * seq, (batch * seq, batch, seq))
    return sorted(seen.values())


def engine_projection(op: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> Callable:
    """A projection as the engine's runtime calls it, at any width."""
    from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh

    if op == "qkv":
        return lambda: F.linear(x, w, b)
    if op == "ffn_in":
        return lambda: linear_bias_gelu_tanh(x, w, b)
    return lambda: out.addmm_(x, w.t())


def time_chain(calls: list[Callable], replays: int, flops: float) -> dict:
    """Capture ``calls`` in one CUDA graph and time ``replays`` replays back to back."""
    from device_profile import GpuTelemetry

    for call in calls:
        call()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    probe = GpuTelemetry()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / replays
    return {"ms_per_pass": ms, "tflops": flops / ms / 1e9, "gpu": probe.stop()}


def fastest_attention(tokens: int, batch: int, seq: int, heads: int) -> dict:
    """One layer's attention over ``batch`` sequences of ``seq`` tokens by every backend that runs here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bertrt.engine.tuning import graph_time_ms
    from bertrt.ops.attention import varlen_attention
    from bertrt.ops.attention_triton import TILINGS, varlen_attention_triton
    from bertrt.packed import cu_seqlens_from_lengths

    q, k, v = torch.randn(tokens, 3, heads, HEAD_DIM, device="cuda", dtype=DTYPE).unbind(1)
    cu = cu_seqlens_from_lengths([seq] * batch, device="cuda")
    padded = [t.reshape(batch, seq, heads, HEAD_DIM).transpose(1, 2) for t in (q, k, v)]

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*padded)
        return run

    candidates = {"triton": lambda: varlen_attention_triton(q, k, v, cu, seq),
                  **{name: lambda cfg=cfg: varlen_attention_triton(q, k, v, cu, seq, config=cfg)
                     for name, cfg in TILINGS.items()},
                  "torch_varlen": lambda: varlen_attention(q, k, v, cu, seq),
                  "sdpa_flash_padded": sdpa(SDPBackend.FLASH_ATTENTION),
                  "sdpa_cudnn_padded": sdpa(SDPBackend.CUDNN_ATTENTION)}
    times: dict[str, float | str] = {}
    for name, run in candidates.items():
        try:
            times[name] = graph_time_ms(run)
        except Exception as exc:  # noqa: BLE001  (a backend that does not run here is recorded, not fatal)
            times[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    measured = {k_: v_ for k_, v_ in times.items() if isinstance(v_, float)}
    best = min(measured, key=measured.get)
    return {"batch": batch, "seq": seq, "by_backend": times, "fastest": best, "fastest_ms": measured[best]}


def floors(*, fp8: bool = True) -> dict:
    result = {}
    for model, (hidden, inter, layers) in MODELS.items():
        shapes = {"qkv": (3 * hidden, hidden), "attn_out": (hidden, hidden), "ffn_in": (inter, hidden),
                  "ffn_out": (hidden, inter)}
        g = torch.Generator(device="cuda").manual_seed(0)
        weights = {op: [((torch.randn(n, k, device="cuda", generator=g) * 0.02).to(DTYPE),
                         (torch.randn(n, device="cuda", generator=g) * 0.02).to(DTYPE)) for _ in range(layers)]
                   for op, (n, k) in shapes.items()}
        for tokens, batch, seq in cells():
            # Activations are shared between layers, as the engine reuses its buffers.
            acts = {op: (torch.randn(tokens, k, device="cuda", generator=g).to(DTYPE),
                         torch.randn(tokens, n, device="cuda", generator=g).to(DTYPE)) for op, (n, k) in shapes.items()}
            flops = 2 * tokens * layers * sum(n * k for n, k in shapes.values())
            replays = max(10, min(400, int(300 * 4e11 / flops)))  # ~0.3 s at 400 TFLOP/s
            calls = [engine_projection(op, acts[op][0], *weights[op][i], acts[op][1])
                     for i in range(layers) for op in shapes]
            row = {"tokens": tokens, "engine_calls": time_chain(calls, replays, flops)}
            bare = [lambda x=acts[op][0], w=weights[op][i][0]: F.linear(x, w) for i in range(layers) for op in shapes]
            row["no_epilogue"] = time_chain(bare, replays, flops)
            row["attention_ms_per_layer"] = fastest_attention(tokens, batch, seq, hidden // HEAD_DIM)
            if fp8 and model == "large":
                try:
                    one = torch.ones((), device="cuda")
                    x8 = {op: acts[op][0].to(torch.float8_e4m3fn) for op in shapes}
                    w8 = {op: [(w * 50).to(torch.float8_e4m3fn) for w, _ in weights[op]] for op in shapes}
                    chain = [lambda x=x8[op], w=w8[op][i]: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one,
                                                                            out_dtype=DTYPE)
                             for i in range(layers) for op in shapes]
                    row["fp8_no_epilogue"] = time_chain(chain, replays, flops)
                except Exception as exc:  # noqa: BLE001
                    row["fp8_no_epilogue"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            result[f"{model}_T{tokens}"] = row
            attention = row["attention_ms_per_layer"]
            print(f"{model} T={tokens}: " + ", ".join(f"{k_}={v['ms_per_pass']:.3f}ms" for k_, v in row.items()
                                                      if isinstance(v, dict) and "ms_per_pass" in v)
                  + f", attention {attention['fastest']} {attention['fastest_ms'] * 1000:.1f}us/layer", flush=True)
            del acts
            torch.cuda.empty_cache()
        del weights
    return result


def ceiling() -> dict:
    """An 8192^3 fp16 product replayed for about 0.05 s and for about 4 s."""
    a = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    b = torch.randn(8192, 8192, device="cuda", dtype=DTYPE)
    result = {}
    for label, replays in (("short", 30), ("sustained", 2500)):
        torch.cuda.synchronize()
        time.sleep(2)  # let the card cool back to its idle clock between the two
        result[label] = time_chain([lambda: a @ b], replays, 2 * 8192 ** 3)
        print(f"8192^3 {label}: {result[label]['tflops']:.0f} TFLOP/s, {result[label]['gpu']}", flush=True)
    return result


def _write(path: Path, name: str, fn: Callable[[], dict]) -> None:
    from bertrt.harness.perf import environment, write_json

    t0 = time.perf_counter()
    result = fn()
    write_json({"kind": "bertrt-floors", "environment": environment(torch.device("cuda")),
                "sections": {name: {"ok": True, "result": result, "seconds": round(time.perf_counter() - t0, 1)}}},
               path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for floors.json (and matmul_ceiling.json)")
    parser.add_argument("--ceiling", action="store_true", help="also the fp16 matmul ceiling, short and sustained")
    parser.add_argument("--no-fp8", action="store_true", help="skip the fp8 products")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("floors.py measures a GPU: no CUDA device is available here")
    os.environ.pop("TRITON_INTERPRET", None)
    _write(args.out / "floors.json", "floors", lambda: floors(fp8=not args.no_fp8))
    if args.ceiling:
        _write(args.out / "matmul_ceiling.json", "sustained", ceiling)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
