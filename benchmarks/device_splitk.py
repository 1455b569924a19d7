"""Split-K output projections against cuBLAS on the lent GPU, timed as the engine runs them.

    PYTHONPATH=src python benchmarks/device_splitk.py $OUT/splitk.json
    PYTHONPATH=src python benchmarks/device_splitk.py /tmp/splitk.json --dry-run   # no GPU: the script's logic

BERT-Large fp16: M = 128 .. 3072 tokens, (K, N) = (1024, 1024) (attention output) and (4096, 1024)
(FFN down). Each candidate is the projection followed by bias + residual + LayerNorm:

- ``cublas``: ``bias_residual_layernorm(F.linear(x, W), ...)``, the engine's default;
- ``splitk{S}_{tiling}``: ``bias_residual_layernorm(linear_splitk(x, W, S, config=tiling), ...)``
  for S in 2, 3, 4, 6 and a few tilings (``default`` is the one ``config_for(M)`` picks).

Every candidate is checked first (max abs error against an fp32 computation, next to cuBLAS' own),
then timed as CUDA-graph replays by ``bertrt.engine.build.graph_time_ms``, the engine build's timer; its
GEMM alone is timed too, to show what the LayerNorm's extra reads cost. A configuration that fails
records its error and the others run on; the JSON is rewritten after each shape.

``--dry-run`` runs the same loop on the CPU at tiny shapes (the ops take their plain-PyTorch refs,
wall-clock timing), to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bertrt.harness.perf import environment  # noqa: E402

EPS = 1e-12
SPLITS = (2, 3, 4, 6)
TOKENS = (128, 384, 768, 1536, 3072)
SHAPES = {"attn_out": (1024, 1024), "ffn_out": (4096, 1024)}  # op: (K, N)
DRY_TOKENS, DRY_SHAPES = (3, 37), {"attn_out": (80, 96), "ffn_out": (200, 96)}


def tilings(m: int) -> dict:
    from bertrt.ops._triton import GemmConfig
    from bertrt.ops.linear_splitk import LARGE_M, MEDIUM_M, SMALL_M, config_for

    named = {"64x64": SMALL_M, "64x128": MEDIUM_M, "128x128": LARGE_M,
             "128x64": GemmConfig(128, 64, 64, num_warps=4, num_stages=4)}
    return {"default": config_for(m)} | {name: cfg for name, cfg in named.items() if cfg != config_for(m)}


def wall_ms(fn: Callable[[], object], reps: int = 3) -> float:
    """--dry-run's stand-in for the GPU timer."""
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def measure(m: int, k: int, n: int, *, device: str, timer: Callable[[Callable[[], object]], float]) -> dict:
    """One shape: the cuBLAS row and a row per split count and tiling."""
    from bertrt.ops.linear_splitk import linear_splitk
    from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref

    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(device, torch.float16)

    x, w = randn(m, k), randn(n, k, scale=1.5 / math.sqrt(k))
    bias, residual = randn(n, scale=0.5), randn(m, n, scale=2.0)
    gamma, beta = randn(n, scale=0.5) + 1, randn(n, scale=0.1)
    exact = bias_residual_layernorm_ref(F.linear(x.float(), w.float()), bias, residual.float(), gamma, beta, EPS)

    def norm(product):
        return bias_residual_layernorm(product, bias, residual, gamma, beta, EPS)

    def row(gemm: Callable[[], torch.Tensor]) -> dict:
        err = (norm(gemm()).float() - exact).abs().max().item()
        return {"max_err": err, "ms": timer(lambda: norm(gemm())), "gemm_ms": timer(gemm)}

    result = {"M": m, "K": k, "N": n, "flop": 2 * m * n * k}
    result["cublas"] = row(lambda: F.linear(x, w))
    cublas = result["cublas"]
    result["splitk"] = {}
    for splits in SPLITS:
        for name, cfg in tilings(m).items():
            label = f"splitk{splits}_{name}"
            try:
                r = row(lambda splits=splits, cfg=cfg: linear_splitk(x, w, splits, config=cfg))
                r |= {"config": dataclasses.asdict(cfg), "ok": r["max_err"] <= 2 * cublas["max_err"] + 1e-3,
                      "speedup": cublas["ms"] / r["ms"]}
            except Exception as exc:  # noqa: BLE001  (one failing configuration must not stop the rest)
                r = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            result["splitk"][label] = r
    best = min((c for c in result["splitk"].items() if c[1].get("ok")), key=lambda c: c[1]["ms"], default=None)
    result["best"] = best[0] if best else None
    result["best_speedup"] = best[1]["speedup"] if best else None
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(os.environ.get("OUT", ".")) / "splitk.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, refs and wall-clock timing")
    args = parser.parse_args(argv[1:])
    os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels (dry run: the refs)
    if args.dry_run:
        device, timer, tokens, shapes = "cpu", wall_ms, DRY_TOKENS, DRY_SHAPES
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        from bertrt.engine.build import graph_time_ms

        device, timer, tokens, shapes = "cuda", graph_time_ms, TOKENS, SHAPES
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"kind": "bertrt-device-splitk", "dry_run": args.dry_run, "dtype": "float16",
              "environment": environment(torch.device(device)), "rows": {}}
    start = time.perf_counter()
    for op, (k, n) in shapes.items():
        for m in tokens:
            key = f"{op}_M{m}"
            try:
                with torch.inference_mode():
                    r = measure(m, k, n, device=device, timer=timer)
                report["rows"][key] = r
                print(f"{key}: cublas {r['cublas']['ms']:.4f} ms; best {r['best']} "
                      f"x{r['best_speedup'] or float('nan'):.2f}", flush=True)
            except Exception as exc:  # noqa: BLE001
                report["rows"][key] = {"error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-3000:]}
                print(f"!! {key}: {type(exc).__name__}: {exc}", flush=True)
            args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
