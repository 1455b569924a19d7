"""Where the engine's time goes: a kernel-level profile of random BERT-Large fp16 on the lent GPU.

    PYTHONPATH=src python3 benchmarks/device_profile.py $OUT

For b1 s384 and b128 s384: latency with graphs (CUDA events), the host time of one call, and a
torch.profiler breakdown of the eager pass by kernel category (GEMM, attention, LayerNorm, GELU,
embedding, copies, other), with the GEMMs' achieved TFLOP/s (cuBLAS, split-K and the fused
up-projection together), and the SM clock and power nvidia-smi reports while the graphs are timed.
Writes $OUT/profile_large.json.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bertrt.config import STANDARD_CONFIGS
from bertrt.engine import Engine, build
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
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.qa_logits(packed)
        torch.cuda.synchronize()
    per_cat: dict[str, float] = collections.defaultdict(float)
    per_kernel: dict[str, float] = collections.defaultdict(float)
    for evt in prof.key_averages():
        cuda_us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if cuda_us and evt.key and not evt.key.startswith("aten::"):
            per_cat[category(evt.key)] += cuda_us / 5 / 1e3
            per_kernel[evt.key[:120]] += cuda_us / 5 / 1e3
    total = sum(per_cat.values())
    result["kernel_ms_per_pass"] = {k: round(v, 4) for k, v in sorted(per_cat.items(), key=lambda x: -x[1])}
    result["kernel_total_ms"] = round(total, 4)
    result["top_kernels_ms"] = dict(sorted(per_kernel.items(), key=lambda x: -x[1])[:15])
    gemm_ms = per_cat.get("gemm", 0.0) + per_cat.get("gemm_gelu", 0.0)
    if gemm_ms:  # every GEMM's FLOPs over cuBLAS', split-K's and the fused up-projection's time
        result["gemm_tflops"] = round(gemm_flops(batch * seq, engine.config) / (gemm_ms * 1e-3) / 1e12, 1)
    engine.graphs = True
    return result


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(torch.device("cuda")), "shapes": []}
    with tempfile.TemporaryDirectory() as tmp:
        build(random_checkpoint(STANDARD_CONFIGS["large"], heads=("qa",)), Path(tmp) / "large", precision="fp16")
        engine = Engine.load(Path(tmp) / "large", device="cuda")
        for batch, seq in ((1, 384), (128, 384)):
            try:
                report["shapes"].append(profile_shape(engine, batch, seq))
            except Exception as exc:  # keep what the other shape measured
                report["shapes"].append({"batch": batch, "seq": seq, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(report["shapes"][-1], indent=1), flush=True)
    (out / "profile_large.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
