"""The INT8 GEMM's tilings against torch._int_mm and fp16 F.linear, at BERT-Large's four projections.

    PYTHONPATH=src python benchmarks/int8_gemm.py $OUT/int8_gemm.json --commit $(git rev-parse HEAD)
    PYTHONPATH=src python benchmarks/int8_gemm.py /tmp/int8_gemm.json --dry-run   # no GPU: the script's logic

Shapes: (N, K) = qkv (3072, 1024), attn_out (1024, 1024), ffn_in (4096, 1024), ffn_out (1024, 4096),
at M = 49,152 tokens (128 sequences of 384) and 384. Rows:

- ``fp16``: ``F.linear(x, W)`` in fp16 (cuBLAS), the fp16 engine's GEMM;
- ``int_mm``: ``torch._int_mm(x_q, W_q.T)``, int32 out, no epilogue;
- per tiling of ``linear_int8.TILINGS`` (and ``default``, the one ``config_for`` picks), three epilogues:
  ``gemm`` (per-channel scale, fp16 out), ``mode1`` (per-channel scale + bias, with GELU for ffn_in and
  the fp16 residual for attn_out / ffn_out, fp16 out), ``mode2`` (per-tensor scale + bias, GELU for
  ffn_in, int8 out).

Each candidate is checked against ``linear_int8_ref`` before it is timed (fp16: one ulp, int8: one
unit on at most 0.1% of the elements; ``int_mm`` exactly), then timed by
``bertrt.engine.tuning.graph_time_ms``, the engine build's timer (CUDA-graph replays, CUDA events,
median of rounds). TOP/s = 2 M N K / time. A candidate that fails records its error and the rest
run on; the JSON is rewritten after each shape.

``--dry-run`` runs the same loop on the CPU at tiny shapes, the kernels through Triton's
interpreter and wall-clock timing, to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
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

SHAPES = {"qkv": (3072, 1024), "attn_out": (1024, 1024), "ffn_in": (4096, 1024), "ffn_out": (1024, 4096)}
TOKENS = (49152, 384)
DRY_SHAPES, DRY_TOKENS = {"qkv": (96, 64), "ffn_out": (32, 128)}, (37,)
EPILOGUES = ("gemm", "mode1", "mode2")


def wall_ms(fn: Callable[[], object], reps: int = 2) -> float:
    """--dry-run's stand-in for the GPU timer."""
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def agrees(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, float]:
    """(within one rounding step of the output type, the max abs difference)."""
    diff = (got.double() - want.double()).abs()
    if got.dtype == torch.int8:
        return bool(diff.max() <= 1 and (diff > 0).double().mean() <= 1e-3), diff.max().item()
    step = torch.finfo(got.dtype).eps * want.double().abs() + 1e-5
    return bool((diff <= step).all()), diff.max().item()


def epilogue_args(op: str, epilogue: str, tensors: dict) -> dict:
    """linear_int8's arguments for one projection and epilogue (see the module docstring)."""
    if epilogue == "gemm":
        return dict(scale=tensors["channel_scale"])
    gelu, residual = op == "ffn_in", op in ("attn_out", "ffn_out")
    if epilogue == "mode1":
        return dict(scale=tensors["channel_scale"], bias=tensors["bias"], gelu=gelu,
                    residual=tensors["residual"] if residual else None)
    return dict(scale=tensors["tensor_scale"], bias=tensors["bias"], gelu=gelu, out_dtype=torch.int8,
                out_scale=tensors["out_scale"])


def measure(op: str, m: int, n: int, k: int, *, device: str, timer: Callable[[Callable[[], object]], float]) -> dict:
    from bertrt.ops.linear_int8 import TILINGS, config_for, linear_int8, linear_int8_ref

    g = torch.Generator(device=device).manual_seed(0)
    x_q = torch.randint(-127, 128, (m, k), generator=g, device=device, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (n, k), generator=g, device=device, dtype=torch.int8)
    acc_std = k ** 0.5 * 127 * 127 / 3
    tensors = {"channel_scale": (torch.rand(n, generator=g, device=device) + 0.5) * 2 / acc_std,
               "tensor_scale": torch.tensor(2 / acc_std, device=device),
               "out_scale": torch.tensor(0.03, device=device),
               "bias": torch.randn(n, generator=g, device=device).half(),
               "residual": torch.randn(m, n, generator=g, device=device).half()}
    ops = 2 * m * n * k

    def timed(fn: Callable[[], object]) -> dict:
        ms = timer(fn)
        return {"ms": ms, "tops": ops / ms / 1e9}

    result = {"M": m, "N": n, "K": k, "ops": ops}
    x16 = (x_q.float() / 64).half()
    w16 = (w_q.float() / (64 * k ** 0.5)).half()
    result["fp16"] = timed(lambda: F.linear(x16, w16))
    try:
        exact = torch.equal(torch._int_mm(x_q, w_q.T), (x_q.double() @ w_q.double().T).int())
        result["int_mm"] = {"ok": exact, **timed(lambda: torch._int_mm(x_q, w_q.T))}
    except RuntimeError as exc:  # shapes or devices it does not take
        result["int_mm"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    default = config_for(m, n, k)
    result["default"] = next((name for name, cfg in TILINGS.items() if cfg == default), None)
    result["tilings"] = {}
    calls = {e: epilogue_args(op, e, tensors) for e in EPILOGUES}
    wants = {e: linear_int8_ref(x_q, w_q, **kwargs) for e, kwargs in calls.items()}
    for name, cfg in {"default": default, **TILINGS}.items():
        rows = result["tilings"][name] = {"config": dataclasses.asdict(cfg)}
        for epilogue, kwargs in calls.items():
            try:
                ok, err = agrees(linear_int8(x_q, w_q, config=cfg, **kwargs), wants[epilogue])
                rows[epilogue] = {"ok": ok, "max_err": err, **timed(lambda: linear_int8(x_q, w_q, config=cfg, **kwargs))}
            except Exception as exc:  # noqa: BLE001  (one failing candidate must not stop the rest)
                rows[epilogue] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    timed_ok = [(name, r["mode1"]["tops"]) for name, r in result["tilings"].items()
                if name != "default" and r["mode1"].get("ok")]
    result["best_mode1"] = max(timed_ok, key=lambda t: t[1])[0] if timed_ok else None
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(os.environ.get("OUT", ".")) / "int8_gemm.json")
    parser.add_argument("--commit", default=None, help="the commit measured (recorded in the JSON)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton's interpreter, wall clock")
    args = parser.parse_args(argv[1:])
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (bertrt imports it lazily)
        device, timer, tokens, shapes = "cpu", wall_ms, DRY_TOKENS, DRY_SHAPES
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        from bertrt.engine.tuning import graph_time_ms

        device, timer, tokens, shapes = "cuda", graph_time_ms, TOKENS, SHAPES
    from bertrt.harness.perf import environment

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"kind": "bertrt-int8-gemm", "dry_run": args.dry_run, "commit": args.commit,
              "environment": environment(torch.device(device)), "rows": {}}
    start = time.perf_counter()
    for m in tokens:
        for op, (n, k) in shapes.items():
            key = f"{op}_M{m}"
            with torch.inference_mode():
                r = measure(op, m, n, k, device=device, timer=timer)
            report["rows"][key] = r
            tops = {name: t["mode1"].get("tops", float("nan")) for name, t in r["tilings"].items()}
            print(f"{key}: fp16 {r['fp16']['tops']:.0f} TFLOP/s, int_mm {r['int_mm'].get('tops', float('nan')):.0f} "
                  f"TOP/s; mode1 TOP/s by tiling: " + ", ".join(f"{name} {v:.0f}" for name, v in tops.items()),
                  flush=True)
            args.out.write_text(json.dumps(report, indent=1))
    failed = [f"{key}/{name}/{e}" for key, r in report["rows"].items() for name, t in r["tilings"].items()
              for e in EPILOGUES if not t[e].get("ok")]
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s; {len(failed)} failed: {failed[:8]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
