"""Check and time the fused FFN up-projection (linear_bias_gelu) against cuBLAS + bias_gelu.

Usage: python benchmarks/device_linear_gelu.py [out.json]   (default: $OUT/linear_gelu.json, else ./)

BERT-Large shapes, fp16: M tokens in {384, 3072, 49152}, K=1024, N=4096. For each M: cuBLAS alone
(F.linear, bias-free: the floor the fusion competes with), the engine's unfused path (F.linear then
bias_gelu in place), and linear_bias_gelu with each candidate tiling (the one ``config_for`` picks is
marked). Every Triton result is checked against float64 (at most 2x PyTorch's fp16 error, plus
1e-3) before it is timed; a tiling that fails to compile or run is recorded and the rest still run.
Last, what ``tune_gemm_choices`` (the build step) would record for an engine of 49152 tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

M_VALUES, K, N = (384, 3072, 49152), 1024, 4096
DTYPE, ATOL = torch.float16, 1e-3


def candidates():
    from bertrt.ops.linear_gelu import LARGE_M, MEDIUM_M, SMALL_M, GemmConfig

    return {
        "64x128x64_w4_s4": SMALL_M,
        "128x128x64_w8_s4": MEDIUM_M,
        "128x256x64_w8_s3": LARGE_M,
        "128x256x64_w8_s4": dataclasses.replace(LARGE_M, num_stages=4),
        "256x128x64_w8_s3": GemmConfig(256, 128, 64, group_m=8, num_warps=8, num_stages=3),
        "128x128x64_w4_s4": GemmConfig(128, 128, 64, group_m=8, num_warps=4, num_stages=4),
    }


def run_m(m: int) -> dict:
    from triton.testing import do_bench

    from bertrt.ops.bias_gelu import bias_gelu
    from bertrt.ops.linear_gelu import config_for, linear_bias_gelu

    torch.manual_seed(0)
    x = torch.randn(m, K, device="cuda").to(DTYPE)
    w = (torch.randn(N, K, device="cuda") * (1.5 / math.sqrt(K))).to(DTYPE)
    b = (torch.randn(N, device="cuda") * 0.5).to(DTYPE)
    flops = 2 * m * K * N

    def unfused():
        up = F.linear(x, w)
        return bias_gelu(up, b, out=up)

    exact = F.gelu(F.linear(x.double(), w.double(), b.double()))
    torch_err = (F.gelu(F.linear(x, w, b)).double() - exact).abs().max().item()
    row = {"M": m, "K": K, "N": N, "torch_fp16_err": torch_err,
           "ms_cublas_linear_only": do_bench(lambda: F.linear(x, w), return_mode="median"),
           "ms_cublas_plus_bias_gelu": do_bench(unfused, return_mode="median"), "triton": {}}
    default = config_for(m)
    for name, cfg in candidates().items():
        try:
            got = linear_bias_gelu(x, w, b, config=cfg)
            torch.cuda.synchronize()
            err = (got.double() - exact).abs().max().item()
            del got
            ms = do_bench(lambda cfg=cfg: linear_bias_gelu(x, w, b, config=cfg), return_mode="median")
            row["triton"][name] = {
                "ok": bool(math.isfinite(err) and err <= 2 * torch_err + ATOL), "max_err": err, "ms": ms,
                "tflops": flops / ms / 1e9, "speedup_vs_unfused": row["ms_cublas_plus_bias_gelu"] / ms,
                "default": cfg == default}
        except Exception as e:  # noqa: BLE001  (a tiling that does not fit must not stop the rest)
            row["triton"][name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}",
                                   "default": cfg == default}
    row["tflops_cublas_linear_only"] = flops / row["ms_cublas_linear_only"] / 1e9
    return row


def tuned_choices() -> dict:
    from bertrt.engine.build import tune_gemm_choices

    torch.manual_seed(0)
    tensors = {"layers.0.ffn.in.weight": (torch.randn(N, K, device="cuda") * 0.02).to(DTYPE),
               "layers.0.ffn.in.bias": torch.zeros(N, device="cuda", dtype=DTYPE)}
    return tune_gemm_choices(tensors, max_tokens=M_VALUES[-1])


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    out = Path(argv[1]) if len(argv) > 1 else Path(os.environ.get("OUT", ".")) / "linear_gelu.json"
    import triton

    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "dtype": str(DTYPE), "rows": []}
    for m in M_VALUES:
        try:
            report["rows"].append(run_m(m))
        except Exception as e:  # noqa: BLE001  (recorded; the other shapes still run)
            report["rows"].append({"M": m, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        torch.cuda.empty_cache()
    try:
        report["tuned_gemm_choices"] = tuned_choices()
    except Exception as e:  # noqa: BLE001
        report["tuned_gemm_choices"] = {"error": f"{type(e).__name__}: {e}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print(f"{report['device']}  torch {report['torch']}  triton {report['triton']}  fp16, K={K}, N={N}")
    for r in report["rows"]:
        if "error" in r:
            print(f"M={r['M']}: ERROR {r['error'][:100]}")
            continue
        print(f"M={r['M']}: cuBLAS linear {r['ms_cublas_linear_only']:.4f} ms ({r['tflops_cublas_linear_only']:.0f} "
              f"TFLOP/s), + bias_gelu {r['ms_cublas_plus_bias_gelu']:.4f} ms")
        for name, t in r["triton"].items():
            mark = "*" if t["default"] else " "
            if "error" in t:
                print(f"  {mark}{name:20s} ERROR {t['error'][:90]}")
            else:
                print(f"  {mark}{name:20s} ok={t['ok']!s:5s} err {t['max_err']:.2e}  {t['ms']:.4f} ms  "
                      f"{t['tflops']:5.0f} TFLOP/s  x{t['speedup_vs_unfused']:.2f} vs unfused")
    print(f"tune_gemm_choices (max_tokens {M_VALUES[-1]}): {report['tuned_gemm_choices']}")
    print(f"wrote {out}   (* = the tiling config_for picks)")
    rows_ok = all("error" not in r and all(t.get("ok") for t in r["triton"].values() if t["default"])
                  for r in report["rows"])
    return 0 if rows_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
