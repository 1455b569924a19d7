"""BERT-Base A/B on the lent GPU: attention tilings, LayerNorm row tilings, the engine with each forced.

    PYTHONPATH=src python3 benchmarks/device_base_ab.py --out $OUT --commit SHA
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/device_base_ab.py --dry-run --out /tmp/ab

Writes $OUT/base_ab.json, again after each section, so that a failure or a time-out keeps the
sections done before it:

- ``attention``: ``varlen_attention_triton`` with every tiling of ``attention_triton.TILINGS`` and
  of ``EXTRA_TILINGS``, PyTorch's varlen flash kernel ("torch", the engine's other backend) and, for
  batches of equal lengths, ``scaled_dot_product_attention`` on the padded (B, heads, S, 64) per
  backend (cuDNN, flash, memory-efficient: what Hugging Face's SDPA runs). Cases: BERT-Base (12
  heads) at b32 s128 and b1 s128 laid out as the engine's CUDA graphs pass them (max_batch + 2
  offsets, the unused sequences empty, max_seqlen the engine's 384), at the 12,288 ragged tokens whose
  timing decides what the engine runs at 4,096 (``tuning.ragged_lengths``), and BERT-Large (16 heads)
  at b1 s384, b128 s384 and 49,152 SQuAD-like ragged tokens: whether a tiling that helps s128 hurts s384.
- ``layernorm``: ``bias_residual_layernorm`` on (4096, 768) and (128, 768) with each LayerNormConfig
  of ``LAYERNORM_TILINGS``, in the forms the engine calls it (``FORMS``: after cuBLAS, after cuBLAS
  accumulating into the residual, and summing split-K partials at 128 tokens), with the bytes moved
  per second.
- ``engine``: a random BERT-Base QA engine built as ``bertrt build`` builds it (its kernel choices
  timed on this GPU), its ``gemm_choices`` and what they run at 4,096 and 128 tokens; qa_logits at
  b32 s128 and b1 s128 through the engine's CUDA graphs (per call, staging included: "graphs_ms")
  and as the eager pass captured whole in one graph (the kernels and the gaps between them:
  "replay_ms"); then the same with each promising attention tiling forced at every token count,
  with the fastest LayerNorm tilings, and with both.

Every candidate is first checked against the default (relative max error <= 1e-2, the build's
test) and timed only if it agrees. Kernel timings are CUDA-graph replays (``tuning.graph_time_ms``:
the median over rounds of the mean of back-to-back calls). ``--dry-run`` runs every step on the CPU
under Triton's interpreter at toy sizes, with wall-clock timings that mean nothing: the plumbing only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from bertrt.config import STANDARD_CONFIGS, BertConfig
from bertrt.engine import Engine, build
from bertrt.engine.format import OP_BACKENDS, gemm_choice
from bertrt.engine.tuning import graph_time_ms, ragged_lengths
from bertrt.harness.perf import environment
from bertrt.ops.attention import varlen_attention
from bertrt.ops.attention_triton import TILINGS, AttentionConfig, default_config, varlen_attention_triton
from bertrt.ops.residual_layernorm import LayerNormConfig, bias_residual_layernorm
from bertrt.ops.residual_layernorm import default_config as layernorm_default
from bertrt.packed import pack_sequences
from bertrt.weights import random_checkpoint

TOLERANCE = 1e-2  # relative max error against the default, as tuning._fastest
MAX_BATCH = 128  # the engine's default: its graphs pass MAX_BATCH + 2 offsets
MAX_SEQ_LENGTH = 384  # the engine's default max_seq_length, what its graphs pass as max_seqlen
KERNEL_TIMING = {"reps": 20, "rounds": 7}
ENGINE_TIMING = {"reps": 10, "rounds": 5}


def _cfg(block_m: int, block_n: int, num_warps: int, num_stages: int) -> tuple[str, AttentionConfig]:
    name = f"ab-{block_m}x{block_n}-w{num_warps}-s{num_stages}"
    return name, AttentionConfig(block_m, block_n, num_warps, num_stages)


# Variants beside TILINGS: at s128 a 128-key block holds a whole sequence (one step, nothing to
# pipeline), 128 x 128 gives one program per sequence and head, and the warps and pipeline depth of
# the shapes TILINGS already has.
EXTRA_TILINGS = dict(_cfg(*c) for c in (
    (128, 128, 8, 1), (128, 128, 8, 2),
    (64, 128, 4, 1), (64, 128, 4, 3), (64, 128, 8, 1), (64, 128, 8, 2), (64, 128, 8, 3),
    (128, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2), (32, 128, 4, 2)))
EXTRA_TILINGS = {name: cfg for name, cfg in EXTRA_TILINGS.items() if cfg not in TILINGS.values()}

# (BLOCK_T rows a program, num_warps); the default for hidden 768 is (2, 8).
LAYERNORM_TILINGS = [LayerNormConfig(t, w) for t, w in (
    (1, 1), (1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 4), (4, 8), (4, 16), (8, 8), (8, 16))]
# How the engine calls the LayerNorm after each projection backend (format.OP_BACKENDS["attn_out"]):
# the form's inputs, and the bytes it moves per element of the (T, H) output.
FORMS = {"cublas": "residual", "cublas-accumulate": "accumulated", "splitk2": "splitk2", "splitk4": "splitk4"}
FORM_BYTES = {"residual": 6, "accumulated": 4, "splitk2": 12, "splitk4": 20}  # fp16 x/residual/out, fp32 partials


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    name: str
    heads: int
    lengths: tuple[int, ...]
    graph: bool = False  # laid out as the engine's CUDA graphs pass it


def attention_cases(dry_run: bool) -> list[AttentionCase]:
    if dry_run:  # toy sizes with the same structure
        return [AttentionCase("b32s128", 2, (24,) * 3, graph=True), AttentionCase("b1s128", 2, (24,), graph=True),
                AttentionCase("build12288", 2, tuple(ragged_lengths(120, 48))),
                AttentionCase("L-b1s384", 2, (40,)), AttentionCase("L-b128s384", 2, (40,) * 3),
                AttentionCase("L-squad49152", 2, tuple(ragged_lengths(160, 48)))]
    return [AttentionCase("b32s128", 12, (128,) * 32, graph=True), AttentionCase("b1s128", 12, (128,), graph=True),
            AttentionCase("build12288", 12, tuple(ragged_lengths(12288, MAX_SEQ_LENGTH))),
            AttentionCase("L-b1s384", 16, (384,)), AttentionCase("L-b128s384", 16, (384,) * 128),
            AttentionCase("L-squad49152", 16, tuple(ragged_lengths(49152, MAX_SEQ_LENGTH)))]


class Timer:
    """Kernel and engine timings: CUDA-graph replays on a GPU, one wall-clock call in a dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def kernel_ms(self, fn: Callable[[], object], timing: dict = KERNEL_TIMING) -> float:
        if self.dry_run:
            fn()
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return graph_time_ms(fn, **timing)

    def calls_ms(self, fn: Callable[[], object], reps: int, rounds: int) -> float:
        """Median over ``rounds`` of the mean time of ``reps`` back-to-back calls, CUDA events
        around them (calls that replay graphs of their own cannot be captured in another)."""
        if self.dry_run:
            return self.kernel_ms(fn)
        for _ in range(3):
            fn()
        times = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        return statistics.median(times)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6))


def measured(fn: Callable[[], torch.Tensor], expected: torch.Tensor, time_fn: Callable[[Callable], float],
             *, compare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict:
    """{"ms", "rel_err"} of a candidate that agrees with ``expected``, else {"error"}."""
    try:
        error = relative_error(compare(fn()), expected)
        if not error <= TOLERANCE:
            return {"error": f"relative error {error:.2e} against the default", "rel_err": error}
        return {"ms": time_fn(fn), "rel_err": error}
    except Exception as exc:  # noqa: BLE001  (a tiling that fails to compile or launch keeps the others)
        return {"error": error_line(exc)}


def error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


# --- attention ----------------------------------------------------------------------------------


def attention_section(device: torch.device, timer: Timer, dry_run: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    head_dim, dtype = 64, torch.float16
    tilings = {**TILINGS, **EXTRA_TILINGS}
    section: dict = {"tilings": {name: dataclasses.asdict(cfg) for name, cfg in tilings.items()}, "cases": {}}
    gen = torch.Generator(device=device).manual_seed(0)
    for case in attention_cases(dry_run):
        total, heads = sum(case.lengths), case.heads
        # Views of one fused QKV projection output, as the engine's q, k and v are.
        qkv = torch.randn(total, 3, heads, head_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
        q, k, v = qkv.unbind(1)
        offsets = [0, *itertools.accumulate(case.lengths)]
        if case.graph:
            offsets += [total] * (MAX_BATCH + 2 - len(offsets))
        cu = torch.tensor(offsets, dtype=torch.int32, device=device)
        max_seqlen = MAX_SEQ_LENGTH if case.graph and not dry_run else max(case.lengths)
        default = default_config(total, heads, head_dim)
        expected = varlen_attention_triton(q, k, v, cu, max_seqlen)
        flops = 4.0 * sum(n * n for n in case.lengths) * heads * head_dim
        row: dict = {"heads": heads, "tokens": total, "sequences": len(case.lengths),
                     "max_length": max(case.lengths), "graph_layout": case.graph,
                     "default_tiling": dataclasses.asdict(default),
                     "default_named": next((n for n, c in tilings.items() if c == default), None), "results": {}}
        results = row["results"]
        results["triton-default"] = {"ms": timer.kernel_ms(lambda: varlen_attention_triton(q, k, v, cu, max_seqlen)),
                                     "rel_err": 0.0}
        for name, cfg in tilings.items():
            results[name] = measured(lambda cfg=cfg: varlen_attention_triton(q, k, v, cu, max_seqlen, config=cfg),
                                     expected, timer.kernel_ms)
        results["torch-varlen"] = measured(lambda: varlen_attention(q, k, v, cu, max_seqlen), expected, timer.kernel_ms)
        if len(set(case.lengths)) == 1:  # the padded layout of Hugging Face's SDPA: (B, heads, S, D)
            batch, seq = len(case.lengths), case.lengths[0]
            qp, kp, vp = (t.reshape(batch, seq, heads, head_dim).contiguous().transpose(1, 2) for t in (q, k, v))

            def unpadded(out: torch.Tensor) -> torch.Tensor:
                return out.transpose(1, 2).reshape(total, heads, head_dim)

            backends = {"sdpa": None, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                        "sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
            for name, backend in backends.items():
                def sdpa(backend=backend):
                    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                        return F.scaled_dot_product_attention(qp, kp, vp)

                results[name] = measured(sdpa, expected, timer.kernel_ms, compare=unpadded)
        for result in results.values():
            if "ms" in result:
                result["tflops"] = round(flops / (result["ms"] * 1e-3) / 1e12, 1)
        section["cases"][case.name] = row
        print(f"attention {case.name}: done", flush=True)
    return section


# --- LayerNorm ----------------------------------------------------------------------------------


def layernorm_section(device: torch.device, timer: Timer, dry_run: bool) -> dict:
    hidden = 100 if dry_run else 768  # the dry run: a width that is no power of two
    # The engine section's token counts (keyed by the count alone), then BERT-Large's width at the
    # SQuAD workload's batch and at 4,096 tokens (keyed "TOKENSxHIDDEN"), to see whether a tiling
    # that wins at 768 also wins there.
    cases = [(hidden, 72), (hidden, 24)] if dry_run else [(hidden, 4096), (hidden, 128), (1024, 49152), (1024, 4096)]
    dtype, eps = torch.float16, 1e-12
    default = layernorm_default(hidden)
    configs = {f"{c.block_t}x{c.num_warps}w": c for c in LAYERNORM_TILINGS}
    section: dict = {"hidden": hidden, "default": dataclasses.asdict(default),
                     "default_named": f"{default.block_t}x{default.num_warps}w", "shapes": {},
                     "defaults_by_hidden": {}}
    gen = torch.Generator(device=device).manual_seed(1)
    for case_hidden, tokens in cases:
        key = str(tokens) if case_hidden == hidden else f"{tokens}x{case_hidden}"
        section["defaults_by_hidden"][str(case_hidden)] = dataclasses.asdict(layernorm_default(case_hidden))
        width = case_hidden
        bias, gamma, beta = (torch.randn(width, generator=gen, device=device).to(dtype) * s + o
                             for s, o in ((0.5, 0.0), (0.5, 1.0), (0.1, 0.0)))
        x = torch.randn(tokens, width, generator=gen, device=device).to(dtype)
        residual = torch.randn(tokens, width, generator=gen, device=device).to(dtype) * 2
        summed = (x.float() + residual.float()).to(dtype)
        out = torch.empty_like(x)
        forms = {"residual": (x, residual), "accumulated": (summed, None)}
        if tokens <= 384:  # split-K is timed up to tuning.SPLITK_MAX_TOKENS
            for name in ("splitk2", "splitk4"):
                splits = int(name[-1])
                parts = torch.randn(splits, tokens, width, generator=gen, device=device) / splits
                parts[-1] += x.float() - parts.sum(0)
                forms[name] = (parts, residual)
        row: dict = {}
        for form, (inputs, res) in forms.items():
            def run(config=None, inputs=inputs, res=res):
                return bias_residual_layernorm(inputs, bias, res, gamma, beta, eps, out=out, config=config)

            expected = run().clone()
            results = {"default": {"ms": timer.kernel_ms(run), "rel_err": 0.0}}
            for name, cfg in configs.items():
                results[name] = measured(lambda cfg=cfg: run(cfg), expected, timer.kernel_ms)
            if res is None or res.dim() == inputs.dim():  # PyTorch's unfused sum and LayerNorm, in fp16
                def unfused(inputs=inputs, res=res):
                    total = inputs + bias if res is None else inputs + bias + res
                    return F.layer_norm(total, (width,), gamma, beta, eps)

                results["torch-unfused"] = measured(unfused, expected, timer.kernel_ms)
            for result in results.values():
                if "ms" in result:
                    result["tb_s"] = round(FORM_BYTES[form] * tokens * width / (result["ms"] * 1e-3) / 1e12, 3)
            row[form] = results
        section["shapes"][key] = row
        print(f"layernorm {tokens}x{width}: done", flush=True)
    return section


# --- the engine ---------------------------------------------------------------------------------


@contextlib.contextmanager
def forced(tilings: dict[str, AttentionConfig], layernorm: LayerNormConfig | None):
    """Extra attention tilings that gemm_choices may name, and one LayerNorm tiling for every
    sub-layer end, while the block runs: the engine has no option for either, so the tables it reads
    (attention_triton.TILINGS, format.OP_BACKENDS) and the LayerNorm its sub-layers call are patched,
    and restored on exit."""
    from bertrt.engine import format as engine_format
    from bertrt.engine import sublayers
    from bertrt.ops import attention_triton

    with contextlib.ExitStack() as stack:
        if tilings:
            stack.enter_context(mock.patch.dict(attention_triton.TILINGS, tilings))
            stack.enter_context(mock.patch.dict(
                engine_format.OP_BACKENDS, {"attention": (*engine_format.OP_BACKENDS["attention"], *tilings)}))
        if layernorm is not None:
            stack.enter_context(mock.patch.object(sublayers, "bias_residual_layernorm",
                                                  functools.partial(bias_residual_layernorm, config=layernorm)))
        yield


def engine_config(dry_run: bool) -> BertConfig:
    if dry_run:  # head_dim 64 as BERT-Base's
        return BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    return STANDARD_CONFIGS["base"]


def time_engine(engine: Engine, batches: dict[str, object], expected: dict[str, torch.Tensor] | None,
                timer: Timer) -> dict:
    """Per shape: graphs_ms (qa_logits through the engine's graphs), replay_ms (the eager pass
    captured whole), rel_err against ``expected`` (the tuned engine's logits)."""
    rows = {}
    for shape, batch in batches.items():
        row: dict = {}
        try:
            logits = engine.qa_logits(batch)
            if expected is not None:
                row["rel_err"] = relative_error(logits, expected[shape])
                if not row["rel_err"] <= TOLERANCE:
                    row["error"] = f"relative error {row['rel_err']:.2e} against the tuned engine"
                    rows[shape] = row
                    continue
            with_graphs = engine.graphs
            row["graphs_ms"] = timer.calls_ms(lambda: engine.qa_logits(batch), **ENGINE_TIMING)
            engine.graphs = False
            try:
                row["replay_ms"] = timer.kernel_ms(lambda: engine.qa_logits(batch), ENGINE_TIMING)
            finally:
                engine.graphs = with_graphs
        except Exception as exc:  # noqa: BLE001
            row["error"] = error_line(exc)
        rows[shape] = row
    return rows


def fastest_layernorm(report: dict, runs_at: dict) -> dict[str, LayerNormConfig]:
    """Per engine shape, the LayerNorm tiling fastest over the two calls a layer makes at its token
    count, each in the form its projection's recorded backend gives it (``FORMS``)."""
    shapes = report.get("sections", {}).get("layernorm", {}).get("shapes", {})
    best = {}
    for name, info in runs_at.items():
        ln = shapes.get(str(info["tokens"]), {})
        forms = [FORMS.get(info[op], "residual") for op in ("attn_out", "ffn_out")]
        totals = {}
        for cfg in LAYERNORM_TILINGS:
            times = [ln.get(f, {}).get(f"{cfg.block_t}x{cfg.num_warps}w", {}).get("ms") for f in forms]
            if all(t is not None for t in times):
                totals[cfg] = sum(times)
        if totals:
            best[name] = min(totals, key=totals.get)
    return best


def engine_section(device: torch.device, timer: Timer, dry_run: bool, report: dict, deadline: float) -> dict:
    """The tuned engine and its variants; variants not started by ``deadline`` (perf_counter) are skipped."""
    config = engine_config(dry_run)
    checkpoint = random_checkpoint(config, heads=("qa",))
    precision = "fp16"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build(checkpoint, Path(tmp) / "base", precision=precision, device=device)
        build_s = time.perf_counter() - start
        engine = Engine.load(Path(tmp) / "base", device=device)
    tuned = engine.spec.gemm_choices
    shapes = {"b32s128": (3, 24), "b1s128": (1, 24)} if dry_run else {"b32s128": (32, 128), "b1s128": (1, 128)}
    gen = torch.Generator().manual_seed(2)
    batches = {name: pack_sequences(torch.randint(1000, config.vocab_size, shape, generator=gen).tolist()).to(device)
               for name, shape in shapes.items()}
    runs_at = {}
    for name, (b, s) in shapes.items():
        tokens = b * s
        bound = min((c for c in tuned.get("attention", {}) if c >= tokens), default=None)
        timed_lengths = ragged_lengths(bound, engine.max_seq_length) if bound else None
        runs_at[name] = {
            "tokens": tokens, **{op: gemm_choice(tuned, op, tokens) for op in OP_BACKENDS},
            "attention_bound": bound,
            "attention_default_tiling": dataclasses.asdict(default_config(tokens, config.num_attention_heads,
                                                                          config.head_dim)),
            "attention_timed_on": None if not timed_lengths else {
                "sequences": len(timed_lengths), "min": min(timed_lengths), "max": max(timed_lengths),
                "mean": round(sum(timed_lengths) / len(timed_lengths), 1)}}
    section: dict = {"build_s": round(build_s, 1), "max_tokens": engine.max_tokens,
                     "max_seq_length": engine.max_seq_length,
                     "gemm_choices": {op: {str(k): v for k, v in sorted(t.items())} for op, t in tuned.items()},
                     "runs_at": runs_at, "variants": {}}
    expected = {name: engine.qa_logits(batch) for name, batch in batches.items()}
    section["variants"]["tuned"] = {"attention": "tuned", "layernorm": "default",
                                    "shapes": time_engine(engine, batches, None, timer)}
    print("engine tuned: done", flush=True)
    del engine
    gc.collect()

    def variant(name: str, attention: str | None, extra: dict[str, AttentionConfig], layernorm: LayerNormConfig | None):
        if time.perf_counter() > deadline:
            section["variants"][name] = {"attention": attention or "tuned", "layernorm": "-",
                                         "shapes": {"error": "skipped: past --budget-s"}}
            return
        choices = {op: dict(t) for op, t in tuned.items()}
        if attention is not None:
            choices["attention"] = {section["max_tokens"]: attention}
        try:
            with forced(extra, layernorm):
                forced_engine = Engine.from_checkpoint(checkpoint, precision=precision, device=device,
                                                       gemm_choices=choices)
                rows = time_engine(forced_engine, batches, expected, timer)
            del forced_engine
        except Exception as exc:  # noqa: BLE001
            rows = {"error": error_line(exc)}
        gc.collect()
        section["variants"][name] = {"attention": attention or "tuned",
                                     "layernorm": dataclasses.asdict(layernorm) if layernorm else "default",
                                     "shapes": rows}
        print(f"engine {name}: done", flush=True)

    # In order of interest, so that a --budget-s cut-off drops the least: per shape, the fastest
    # Triton tiling of the attention section with the fastest LayerNorm tiling; the fastest extra
    # tilings alone (two at b32 s128, one at b1 s128); the LayerNorm tilings alone; every named
    # tiling; PyTorch's varlen kernel.
    cases = report.get("sections", {}).get("attention", {}).get("cases", {})
    tilings = {**TILINGS, **EXTRA_TILINGS}

    def ranked(case: str, names) -> list[str]:
        results = cases.get(case, {}).get("results", {})
        return [n for _, n in sorted((r["ms"], n) for n, r in results.items() if n in names and "ms" in r)]

    ln_best = fastest_layernorm(report, runs_at)
    plans: dict[str, tuple[str | None, LayerNormConfig | None]] = {}
    for shape in shapes:
        best = ranked(shape, tilings)[:1]
        if best and shape in ln_best:
            cfg = ln_best[shape]
            plans[f"attention={best[0]},layernorm={cfg.block_t}x{cfg.num_warps}w"] = (best[0], cfg)
    for shape, count in (("b32s128", 2), ("b1s128", 1)):
        for name in [n for n in ranked(shape, EXTRA_TILINGS) if f"attention={n}" not in plans][:count]:
            plans[f"attention={name}"] = (name, None)
    for cfg in dict.fromkeys(ln_best.values()):
        plans[f"layernorm={cfg.block_t}x{cfg.num_warps}w"] = (None, cfg)
    for name in (*TILINGS, "torch"):
        plans.setdefault(f"attention={name}", (name, None))
    for label, (attention, cfg) in plans.items():
        variant(label, attention, {attention: EXTRA_TILINGS[attention]} if attention in EXTRA_TILINGS else {}, cfg)
    return section


# --- report -------------------------------------------------------------------------------------


def _us(result: dict | None) -> str:
    if not result:
        return "-"
    return f"{result['ms'] * 1e3:.1f}" if "ms" in result else "err"


def summary(report: dict) -> str:
    lines = []
    sections = report["sections"]
    attention = sections.get("attention", {})
    if "cases" in attention:
        cases = attention["cases"]
        names = list(dict.fromkeys(n for c in cases.values() for n in c["results"]))
        lines.append("attention, us per call (* = the default tiling of the case)")
        lines.append(f"{'candidate':<22}" + "".join(f"{c:>14}" for c in cases))
        for name in names:
            cells = [_us(c["results"].get(name)) + ("*" if c["default_named"] == name else " ") for c in cases.values()]
            lines.append(f"{name:<22}" + "".join(f"{cell:>14}" for cell in cells))
    layernorm = sections.get("layernorm", {})
    if "shapes" in layernorm:
        cols = [(tokens, form) for tokens, row in layernorm["shapes"].items() for form in row]
        lines.append("")
        lines.append(f"bias_residual_layernorm, us per call (default {layernorm['default_named']})")
        lines.append(f"{'tiling':<16}" + "".join(f"{t + ' ' + f:>18}" for t, f in cols))
        names = list(dict.fromkeys(n for row in layernorm["shapes"].values() for r in row.values() for n in r))
        for name in names:
            lines.append(f"{name:<16}" + "".join(f"{_us(layernorm['shapes'][t][f].get(name)):>18}" for t, f in cols))
    engine = sections.get("engine", {})
    if "variants" in engine:
        lines.append("")
        lines.append(f"engine qa_logits, ms per pass (build {engine['build_s']} s); runs at: "
                     + "; ".join(f"{n}: attention {r['attention']} (bound {r['attention_bound']}), attn_out "
                                 f"{r['attn_out']}, ffn_out {r['ffn_out']}, ffn_in {r['ffn_in_gelu']}"
                                 for n, r in engine["runs_at"].items()))
        shapes = list(engine["runs_at"])
        lines.append(f"{'variant':<48}" + "".join(f"{s + ' ' + k:>18}" for s in shapes for k in ("graphs", "replay")))
        for name, v in engine["variants"].items():
            cells = []
            for s in shapes:
                row = v["shapes"].get(s, {}) if isinstance(v["shapes"], dict) else {}
                for k in ("graphs_ms", "replay_ms"):
                    cells.append(f"{row[k]:.4f}" if k in row else ("err" if "error" in row or "error" in v["shapes"]
                                                                   else "-"))
            lines.append(f"{name:<48}" + "".join(f"{c:>18}" for c in cells))
    for name, section in sections.items():
        if "error" in section:
            lines.append(f"{name}: {section['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                        help="where base_ab.json goes (default $OUT)")
    parser.add_argument("--commit", default=None, help="the commit measured (the device's .git is stale)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU under Triton's interpreter")
    parser.add_argument("--sections", default="attention,layernorm,engine", help="comma-separated, in this order")
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="engine variants not started this many seconds after the start are skipped "
                             "(not in a dry run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.out is None:
        parser.error("--out is required when $OUT is unset")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (by the first kernel)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible here: run with --dry-run to check the plumbing on a CPU")
    else:
        device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "base_ab.json"
    timer = Timer(args.dry_run)
    report: dict = {"kind": "bertrt-base-ab", "environment": environment(device, commit=args.commit),
                    "dry_run": args.dry_run, "tolerance": TOLERANCE,
                    "timing": {"kernels": KERNEL_TIMING, "engine": ENGINE_TIMING}, "sections": {}}
    runners = {"attention": lambda: attention_section(device, timer, args.dry_run),
               "layernorm": lambda: layernorm_section(device, timer, args.dry_run),
               "engine": lambda: engine_section(device, timer, args.dry_run, report,
                                                started + (1e9 if args.dry_run else args.budget_s))}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            report["sections"][name] = runners[name]()
        except Exception as exc:  # noqa: BLE001  (keep what the other sections measured)
            report["sections"][name] = {"error": error_line(exc)}
        report["sections"][name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {report['sections'][name]['seconds']} s", flush=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))
    print(f"{report['seconds']} s in all; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
