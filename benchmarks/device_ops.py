"""Check and time every fused op at BERT-Large shapes on one GPU.

Usage: BERTRT_COMMIT=<sha> PYTHONPATH=src python benchmarks/device_ops.py [out.json]
       (default: $OUT/ops.json, else ./ops.json)

For each op: the fused kernel and the unfused PyTorch sequence, both in fp16, are compared with a
float64 computation of the same maths (the kernel may be at most 2x as wrong as PyTorch, plus a
small atol), then timed with ``triton.testing.do_bench`` (median ms). One op failing is recorded
in the JSON and the others still run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

TOKENS, HIDDEN, INTER, HEADS, SEQ = 384 * 8, 1024, 4096, 16, 384
VOCAB, POSITIONS, EPS = 30522, 512, 1e-12
DTYPE, ATOL = torch.float16, 1e-3


def _randn(*shape, scale=1.0, dtype=DTYPE):
    return (torch.randn(shape, device="cuda") * scale).to(dtype)


def case_embed_layernorm():
    from bertrt.ops.embed_layernorm import embed_layernorm

    ids = torch.randint(0, VOCAB, (TOKENS,), device="cuda")
    types = torch.randint(0, 2, (TOKENS,), device="cuda")
    pos = torch.arange(SEQ, device="cuda").repeat(TOKENS // SEQ)
    word, position, token_type = _randn(VOCAB, HIDDEN), _randn(POSITIONS, HIDDEN), _randn(2, HIDDEN)
    gamma, beta = _randn(HIDDEN, scale=0.5) + 1, _randn(HIDDEN, scale=0.1)

    def unfused(dtype=DTYPE):
        x = word.to(dtype)[ids] + position.to(dtype)[pos] + token_type.to(dtype)[types]
        return F.layer_norm(x, (HIDDEN,), gamma.to(dtype), beta.to(dtype), EPS)

    fused = lambda: embed_layernorm(ids, types, pos, word, position, token_type, gamma, beta, EPS)  # noqa: E731
    moved = TOKENS * (3 * HIDDEN * 2 + 3 * 8 + HIDDEN * 2)  # three gathered rows, ids, output
    return fused, unfused, moved


def case_bias_residual_layernorm():
    from bertrt.ops.residual_layernorm import bias_residual_layernorm

    x, residual = _randn(TOKENS, HIDDEN), _randn(TOKENS, HIDDEN, scale=2.0)
    bias, gamma, beta = _randn(HIDDEN, scale=0.5), _randn(HIDDEN, scale=0.5) + 1, _randn(HIDDEN, scale=0.1)

    def unfused(dtype=DTYPE):
        s = x.to(dtype) + bias.to(dtype) + residual.to(dtype)
        return F.layer_norm(s, (HIDDEN,), gamma.to(dtype), beta.to(dtype), EPS)

    fused = lambda: bias_residual_layernorm(x, bias, residual, gamma, beta, EPS)  # noqa: E731
    return fused, unfused, 3 * TOKENS * HIDDEN * 2


def case_bias_gelu():
    from bertrt.ops.bias_gelu import bias_gelu

    x, bias = _randn(TOKENS, INTER, scale=2.0), _randn(INTER)
    unfused = lambda dtype=DTYPE: F.gelu(x.to(dtype) + bias.to(dtype))  # noqa: E731
    fused = lambda: bias_gelu(x, bias)  # noqa: E731
    return fused, unfused, 2 * TOKENS * INTER * 2


def case_qa_head():
    from bertrt.ops.qa_head import qa_head

    hidden, weight, bias = _randn(TOKENS, HIDDEN), _randn(2, HIDDEN, scale=0.05), _randn(2)
    unfused = lambda dtype=DTYPE: F.linear(hidden.to(dtype), weight.to(dtype), bias.to(dtype)).float()  # noqa: E731
    fused = lambda: qa_head(hidden, weight, bias)  # noqa: E731
    return fused, unfused, TOKENS * HIDDEN * 2 + TOKENS * 2 * 4


def _attention_inputs():
    from bertrt.packed import cu_seqlens_from_lengths

    # Eight sequences of mixed lengths summing to TOKENS (packed, as the engine runs them).
    lengths = [384, 200, 333, 97, 384, 512, 150]
    lengths.append(TOKENS - sum(lengths))
    cu = cu_seqlens_from_lengths(lengths, device="cuda")
    q, k, v = (_randn(TOKENS, HEADS, HIDDEN // HEADS) for _ in range(3))
    return q, k, v, cu, max(lengths)


def _attention_case(kernel):
    from bertrt.ops.attention import varlen_attention_ref

    q, k, v, cu, max_len = _attention_inputs()
    scale = 1.0 / math.sqrt(q.shape[-1])
    unfused = lambda dtype=DTYPE: varlen_attention_ref(q.to(dtype), k.to(dtype), v.to(dtype), cu, max_len, scale)  # noqa: E731
    fused = lambda: kernel(q, k, v, cu, max_len, scale)  # noqa: E731
    return fused, unfused, 4 * TOKENS * HIDDEN * 2


def case_varlen_attention_torch_fused():
    import importlib.util

    from bertrt.ops.attention import varlen_attention

    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn is not available in this torch")
    return _attention_case(varlen_attention)


def case_varlen_attention_triton():
    from bertrt.ops.attention_triton import varlen_attention_triton

    return _attention_case(varlen_attention_triton)


CASES = {
    "embed_layernorm": case_embed_layernorm,
    "bias_residual_layernorm": case_bias_residual_layernorm,
    "bias_gelu": case_bias_gelu,
    "qa_head": case_qa_head,
    "varlen_attention_torch_fused": case_varlen_attention_torch_fused,
    "varlen_attention_triton": case_varlen_attention_triton,
}


def run_case(build) -> dict:
    from triton.testing import do_bench

    torch.manual_seed(0)
    fused, unfused, bytes_moved = build()
    exact = unfused(torch.float64).double()
    got = fused()
    torch.cuda.synchronize()
    err = (got.double() - exact).abs().max().item()
    torch_err = (unfused().double() - exact).abs().max().item()
    ms_fused = do_bench(fused, return_mode="median")
    ms_unfused = do_bench(unfused, return_mode="median")
    return {
        "ok": bool(math.isfinite(err) and err <= 2 * torch_err + ATOL),
        "max_err": err, "torch_fp16_err": torch_err,
        "ms_fused": ms_fused, "ms_unfused": ms_unfused, "speedup": ms_unfused / ms_fused,
        "fused_GBps": bytes_moved / ms_fused / 1e6,
    }


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    out = Path(argv[1]) if len(argv) > 1 else Path(os.environ.get("OUT", ".")) / "ops.json"
    import triton

    from bertrt.harness.perf import environment

    report = {
        "environment": environment(torch.device("cuda")),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "dtype": str(DTYPE), "shapes": {"tokens": TOKENS, "hidden": HIDDEN, "intermediate": INTER,
                                        "heads": HEADS, "seq": SEQ},
        "ops": {},
    }
    for name, build in CASES.items():
        try:
            report["ops"][name] = run_case(build)
        except Exception as e:  # record and go on: one broken op must not hide the others
            report["ops"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print(f"{report['device']}  torch {report['torch']}  triton {report['triton']}  fp16, T={TOKENS}")
    print(f"{'op':30s} {'ok':>5s} {'err':>9s} {'torch err':>9s} {'fused ms':>9s} {'torch ms':>9s} "
          f"{'speedup':>7s} {'GB/s':>7s}")
    for name, r in report["ops"].items():
        if "error" in r:
            print(f"{name:30s} {'ERROR':>5s} {r['error'][:80]}")
            continue
        print(f"{name:30s} {str(r['ok']):>5s} {r['max_err']:9.2e} {r['torch_fp16_err']:9.2e} "
              f"{r['ms_fused']:9.4f} {r['ms_unfused']:9.4f} {r['speedup']:7.2f} {r['fused_GBps']:7.0f}")
    print(f"wrote {out}")
    return 0 if all(r.get("ok") for r in report["ops"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
