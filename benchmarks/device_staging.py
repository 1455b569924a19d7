"""Per-request latency of an engine at batch 1, by where the request's tokens start.

    PYTHONPATH=src python benchmarks/device_staging.py ENGINE_DIR OUT.json

For each sequence length: the wall time of ``engine.qa_logits`` plus the copy of its logits to
the host (what a server pays for one request), with the batch already on the GPU and with the
batch on the host (staged into the CUDA graph's inputs in one copy, graphs.py), and the LoadGen
backend's whole ``run`` from int32 token arrays. p50 / p90 over 300 calls after 30 warm-up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# BERTRT_SRC: time another checkout's source (e.g. an older commit's, for a before/after in one run).
sys.path.insert(0, os.environ.get("BERTRT_SRC", str(Path(__file__).resolve().parents[1] / "src")))
from bertrt.engine import Engine  # noqa: E402
from bertrt.harness.loadgen.backends import PackedBackend  # noqa: E402
from bertrt.harness.perf import environment  # noqa: E402
from bertrt.packed import pack_sequences  # noqa: E402


def timed(fn, calls: int = 300, warmup: int = 30) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    p50, p90 = np.percentile(times, [50, 90])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4)}


def main(engine_dir: str, out: str) -> None:
    engine = Engine.load(engine_dir)
    backend = PackedBackend(engine, engine.device, "bertrt-engine")
    rng = np.random.default_rng(0)
    rows = []
    for seq in (128, 272, 384):
        ids = rng.integers(1000, 20000, seq).astype(np.int32)
        types = np.zeros(seq, dtype=np.int32)
        host = pack_sequences([ids.tolist()], [types.tolist()])
        device = host.to(engine.device)
        rows.append({
            "seq": seq,
            "device_batch": timed(lambda: engine.qa_logits(device).cpu()),
            "host_batch": timed(lambda: engine.qa_logits(host).cpu()),
            "loadgen_backend_run": timed(lambda: backend.run([ids], [types])),
        })
        print(json.dumps(rows[-1]), flush=True)
    Path(out).write_text(json.dumps({"environment": environment(engine.device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
