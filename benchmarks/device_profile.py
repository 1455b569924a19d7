"""Where the engine's time goes: a kernel-level profile of a random-weight fp16 engine on the lent GPU.

    PYTHONPATH=src python3 benchmarks/device_profile.py $OUT [--config base --shapes 32x128 --hf]

For each shape (default b1 s384 and b128 s384 of BERT-Large): latency with graphs (CUDA events), the
host time of one call, and a torch.profiler breakdown of the eager pass by kernel category (GEMM,
attention, LayerNorm, GELU, embedding, copies, other), with the GEMMs' achieved TFLOP/s (cuBLAS,
split-K and the fused up-projection together), and the SM clock and power nvidia-smi reports while
the graphs are timed. ``--hf`` profiles the Hugging Face peer (SDPA, same weights) the same way, so
the two breakdowns can be set side by side. Writes $OUT/profile_<config>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bertrt.config import STANDARD_CONFIGS
from bertrt.engine import Engine, build
from bertrt.harness.peers import hf_model, peer_runner
from bertrt.harness.perf import environment
from bertrt.packed import pack_sequences
from bertrt.weights import random_checkpoint

CATEGORIES = [
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("embed_layernorm", ("embed_layernorm",)),
    ("bias_residual_layernorm", ("residual_layernorm",)),
    ("gemm_gelu", ("linear_bias_gelu",)),  # the fused up-projection: a GEMM, before bias_gelu matches it
    ("bias_gelu", ("bias_gelu",)),
    ("qa_head", ("qa_head",)),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "sm90", "cublas", "ampere_", "s16816", "_mm_", "linear_splitk",
              "linear_int8")),
    ("quantize", ("quantize",)),
    ("copy", ("memcpy", "memset", "copy", "fill", "index", "gather", "scatter", "cat")),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


class GpuTelemetry:
    """SM clock, power and temperature sampled by ``nvidia-smi`` every 100 ms until ``stop``: whether
    the GPU holds its clocks under a long back-to-back run (microbenchmarks run cooler)."""

    QUERY = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu"

    def __init__(self):
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            text = self.proc.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            text = self.proc.communicate()[0]
        rows = []
        for line in text.splitlines():
            try:
                rows.append([float(x) for x in line.split(",")])
            except ValueError:  # "[N/A]" fields
                continue
        rows = [r for r in rows if len(r) == 4]
        if not rows:
            return {"samples": 0}
        clocks, max_clock, power, temp = zip(*rows)
        return {"samples": len(rows), "sm_clock_mhz_min": min(clocks), "sm_clock_mhz_median": sorted(clocks)[len(rows) // 2],
                "sm_clock_mhz_max_supported": max(max_clock), "power_w_max": max(power), "temperature_c_max": max(temp)}


def gemm_flops(tokens: int, config) -> float:
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2.0 * tokens * layers * (3 * h * h + h * h + 2 * h * i)


def profile_shape(engine: Engine, batch: int, seq: int) -> dict:
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, engine.config.vocab_size, (batch, seq), generator=gen).tolist()
    packed = pack_sequences(ids, [[0] * seq] * batch).to(engine.device)
    result: dict = {"batch": batch, "seq": seq, "tokens": batch * seq}
    for graphs in (True, False):
        engine.graphs = graphs
        for _ in range(10):
            engine.qa_logits(packed)
        torch.cuda.synchronize()
        times, host = [], []
        telemetry = GpuTelemetry() if graphs else None
        for _ in range(50):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            engine.qa_logits(packed)
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        result["graphs" if graphs else "eager"] = {"p50_ms": times[len(times) // 2],
                                                   "host_call_p50_ms": sorted(host)[len(host) // 2]}
        if telemetry is not None:
            result["gpu_while_timing_graphs"] = telemetry.stop()
    engine.graphs = False
    result.update(kernel_breakdown(lambda: engine.qa_logits(packed), batch * seq, engine.config))
    engine.graphs = True
    return result


def kernel_breakdown(fn, tokens: int, config, passes: int = 5) -> dict:
    """torch.profiler's CUDA time of ``passes`` calls of ``fn``, per pass, by category and kernel."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(passes):
            fn()
        torch.cuda.synchronize()
    per_cat: dict[str, float] = collections.defaultdict(float)
    per_kernel: dict[str, float] = collections.defaultdict(float)
    for evt in prof.key_averages():
        cuda_us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if cuda_us and evt.key and not evt.key.startswith("aten::"):
            per_cat[category(evt.key)] += cuda_us / passes / 1e3
            per_kernel[evt.key[:120]] += cuda_us / passes / 1e3
    result = {"kernel_ms_per_pass": {k: round(v, 4) for k, v in sorted(per_cat.items(), key=lambda x: -x[1])},
              "kernel_total_ms": round(sum(per_cat.values()), 4),
              "top_kernels_ms": dict(sorted(per_kernel.items(), key=lambda x: -x[1])[:20])}
    gemm_ms = per_cat.get("gemm", 0.0) + per_cat.get("gemm_gelu", 0.0)
    if gemm_ms:  # every GEMM's FLOPs over cuBLAS', split-K's and the fused up-projection's time
        result["gemm_tflops"] = round(gemm_flops(tokens, config) / (gemm_ms * 1e-3) / 1e12, 1)
    return result


def profile_hf(engine: Engine, batch: int, seq: int) -> dict:
    """The Hugging Face peer at (batch, seq): its graph-replayed latency and its eager kernels."""
    model = hf_model(engine)
    ids = torch.randint(1000, engine.config.vocab_size, (batch, seq), device=engine.device)
    types = torch.zeros_like(ids)
    result: dict = {"batch": batch, "seq": seq, "system": "hf"}
    with torch.inference_mode():
        replay, keep = peer_runner("hf-graph", model, ids, types)
        for _ in range(10):
            replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            replay()
        end.record()
        end.synchronize()
        result["graph_ms"] = start.elapsed_time(end) / 50
        eager, _ = peer_runner("hf", model, ids, types)
        result.update(kernel_breakdown(eager, batch * seq, engine.config))
    del keep, model
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("."))
    parser.add_argument("--config", choices=sorted(STANDARD_CONFIGS), default="large")
    parser.add_argument("--shapes", default="1x384,128x384", help="comma-separated BATCHxSEQ")
    parser.add_argument("--hf", action="store_true", help="profile the Hugging Face peer too")
    parser.add_argument("--commit", default=None, help="the commit measured (the device's .git is stale)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(torch.device("cuda")), "commit": args.commit, "shapes": [], "hf": []}
    with tempfile.TemporaryDirectory() as tmp:
        build(random_checkpoint(STANDARD_CONFIGS[args.config], heads=("qa",)), Path(tmp) / args.config,
              precision="fp16")
        engine = Engine.load(Path(tmp) / args.config, device="cuda")
        for batch, seq in shapes:
            for key, fn in (("shapes", profile_shape), ("hf", profile_hf)):
                if key == "hf" and not args.hf:
                    continue
                try:
                    report[key].append(fn(engine, batch, seq))
                except Exception as exc:  # keep what the other shapes measured
                    report[key].append({"batch": batch, "seq": seq, "error": f"{type(exc).__name__}: {exc}"})
                print(json.dumps(report[key][-1], indent=1), flush=True)
    (args.out / f"profile_{args.config}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
