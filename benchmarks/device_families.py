"""Every BERT family on the engine: numerics against Hugging Face fp32 and speed against the HF peers.

    PYTHONPATH=src python benchmarks/device_families.py --out $OUT --commit SHA   # SHA: the source's commit
    PYTHONPATH=src python benchmarks/device_families.py --out /tmp/families --dry-run   # no GPU: the script's logic

One run, expected to take two to three minutes on an H200; ``--budget-s`` (default 240) skips the
families that would end past it and says so. For each family of ``FAMILIES`` (BERT, RoBERTa,
XLM-RoBERTa, DistilBERT, ELECTRA, Megatron-BERT, ModernBERT):

1. model: a random transformers ``<Family>ForQuestionAnswering`` of BERT-Base's shape (hidden 768, 12
   layers, 12 heads, FFN 3072, the family's own vocabulary size; ELECTRA's embeddings 128 wide and
   projected; DistilBERT with 12 layers rather than its usual 6, so that the rows compare; ModernBERT
   its own base defaults), fp32, seeded, with every bias and norm parameter moved off Hugging Face's
   0 / 1 initialisation so that a mistake in one shows. It is saved as a Hugging Face folder, read by
   ``load_checkpoint``, built into an fp16 engine (``bertrt.build``: kernels timed on the GPU) and
   loaded with ``Engine.load``, as a user's model would be.
2. numerics: one packed batch of ragged sequences (``Settings.lengths``); the engine's QA logits and
   last hidden states against HF fp32 on the same GPU (TF32 off), beside HF fp16's own error against
   HF fp32. A family passes when the engine's max |error| is at most 2x HF fp16's, for both outputs.
3. speed: b32 s128 and b1 s128 (ModernBERT also b8 s2048 and b1 s8192), bertrt (CUDA graphs, as the
   engine runs) against HF fp16 eager and HF fp16 in one CUDA graph (``harness.peers``), by
   ``harness.perf.run_table``: each iteration timed by CUDA events, 200 after 20 warm-up (30 after 5
   at the long shapes); speed-up = the best peer's avg ms / bertrt's, against a target of 1.3x.

A family the engine refuses (``check_engine_support``) is recorded as "not supported by the engine:
<why>", so ModernBERT gets its rows as soon as the engine runs it. A family that fails records its
error and the tail of its traceback, and the next one runs. ``DIR/families.json`` (``--out``, default
$OUT) holds the environment (``harness.perf.environment``, with the ``--commit`` given: a device's copy
of ``.git`` is stale), the settings and one entry per family; it is rewritten after each family, so a
run cut short keeps what it did. ``benchmarks/tables.py`` turns ``results/<gpu>/families.json`` into
that folder's README tables.

``--dry-run`` runs the same loop on the CPU with tiny odd-sized configs (3 heads of 19, FFN 73), the
kernels through Triton's interpreter and 2 iterations, to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


@dataclasses.dataclass(frozen=True)
class Family:
    """One family's model as data: the transformers class prefix and its config's keywords."""

    prefix: str  # transformers.{prefix}Config and {prefix}ForQuestionAnswering
    base: dict  # BERT-Base-sized
    tiny: dict  # --dry-run: odd sizes
    long: bool = False  # also the long shapes (Settings.long_shapes), with an engine built for them


BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# 3 heads of 19, an FFN of 73, 2 layers: sizes that break every tiling.
TINY = dict(vocab_size=97, hidden_size=57, num_hidden_layers=2, num_attention_heads=3, intermediate_size=73,
            max_position_embeddings=67)
# RoBERTa's positions start at padding_idx + 1 = 2, and it has one token type.
ROBERTA = dict(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)

FAMILIES = {
    "bert": Family("Bert", dict(BASE, vocab_size=30522), TINY),
    "roberta": Family("Roberta", dict(BASE, vocab_size=50265, max_position_embeddings=514, **ROBERTA),
                      dict(TINY, max_position_embeddings=69, **ROBERTA)),
    "xlm-roberta": Family("XLMRoberta", dict(BASE, vocab_size=250002, max_position_embeddings=514, **ROBERTA),
                          dict(TINY, max_position_embeddings=69, **ROBERTA)),
    "distilbert": Family("DistilBert", dict(vocab_size=30522, dim=768, n_layers=12, n_heads=12, hidden_dim=3072),
                         dict(vocab_size=97, dim=57, n_layers=2, n_heads=3, hidden_dim=73, max_position_embeddings=67)),
    "electra": Family("Electra", dict(BASE, vocab_size=30522, embedding_size=128), dict(TINY, embedding_size=23)),
    "megatron-bert": Family("MegatronBert", dict(BASE, vocab_size=29056), TINY),
    # ModernBertConfig's defaults are ModernBERT-base: hidden 768, 22 layers, GeGLU 1152, 8192 positions,
    # a 128-token window on two layers of three.
    "modernbert": Family("ModernBert", {},
                         dict(vocab_size=97, hidden_size=54, num_hidden_layers=4, num_attention_heads=3,
                              intermediate_size=37, max_position_embeddings=512, local_attention=8, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
                         long=True),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What is measured: the same loop runs with ``GPU`` or ``DRY_RUN``."""

    shapes: tuple[tuple[int, int], ...]  # (batch, seq) of every family
    long_shapes: tuple[tuple[int, int], ...]  # (batch, seq) of a family with long=True
    lengths: tuple[int, ...]  # the numerics batch
    long_lengths: tuple[int, ...]  # a long family's numerics batch: past its attention window
    iterations: int
    warmup: int
    long_iterations: int
    long_warmup: int
    peers: tuple[str, ...]


GPU = Settings(shapes=((32, 128), (1, 128)), long_shapes=((8, 2048), (1, 8192)),
               lengths=(384, 257, 128, 77, 1, 300, 33, 200), long_lengths=(1500, 384, 129, 77, 1, 300),
               iterations=200, warmup=20, long_iterations=30, long_warmup=5, peers=("hf", "hf-graph"))
# Every Triton launch through the interpreter costs tens of ms: few, short sequences.
DRY_RUN = Settings(shapes=((3, 16), (1, 16)), long_shapes=((2, 40),), lengths=(29, 1, 17, 6), long_lengths=(45, 9, 1),
                   iterations=2, warmup=1, long_iterations=2, long_warmup=1, peers=("hf",))
SEED = 0
SPEEDUP_TARGET = 1.3  # bertrt's avg ms against the best peer's
ERROR_RATIO = 2.0  # the engine's max |error| against HF fp16's, both against HF fp32
LONG_RESERVE_S = 60  # the long shapes run only with this much of the budget left


# --------------------------------------------------------------------------------------------
# The model, the engine


def hf_config(family: Family, *, dry: bool):
    import transformers

    return getattr(transformers, f"{family.prefix}Config")(**(family.tiny if dry else family.base))


def random_hf_model(family: Family, config, *, device: torch.device, seed: int) -> torch.nn.Module:
    """The family's ``*ForQuestionAnswering`` with transformers' initialisation, seeded, and every
    one-dimensional parameter (biases, norms; initialised 0 or 1) moved by N(0, 0.02)."""
    import transformers

    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, f"{family.prefix}ForQuestionAnswering")(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param), alpha=0.02)
    return model.eval()


def engine_limits(family: Family, settings: Settings) -> dict:
    """``build`` arguments: the defaults (384 tokens a sequence), or room for the long shapes."""
    if not family.long:
        return {}
    shapes = settings.long_shapes + settings.shapes
    return {"max_seq_length": max(max(s for _, s in shapes), max(settings.long_lengths)),
            "max_tokens": max(max(b * s for b, s in shapes), sum(settings.long_lengths))}


def build_engine(model: torch.nn.Module, folder: Path, *, limits: dict, device: torch.device):
    """Save ``model`` as a Hugging Face folder, load it as a checkpoint, build an fp16 engine, load that."""
    from bertrt.engine import Engine, build
    from bertrt.weights import load_checkpoint

    times = {}
    t0 = time.perf_counter()
    model.save_pretrained(str(folder / "hf"))
    times["save_hf_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(folder / "hf")
    times["load_checkpoint_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = build(checkpoint, folder / "engine", precision="fp16", device=device, **limits)
    times["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = Engine.load(path, device=device)
    times["engine_load_s"] = time.perf_counter() - t0
    return engine, {k: round(v, 2) for k, v in times.items()}


# --------------------------------------------------------------------------------------------
# Numerics


def ragged_inputs(config, lengths: tuple[int, ...], *, seed: int):
    """Token ids (past the special ids) and token types (two where the family has them) per sequence."""
    gen = torch.Generator().manual_seed(seed)
    low = 1000 if config.vocab_size > 2000 else 3
    ids = [torch.randint(low, config.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    two = config.type_vocab_size >= 2
    types = [[0] * (n // 4) + [1 if two else 0] * (n - n // 4) for n in lengths]
    return ids, types


def hf_outputs(model: torch.nn.Module, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> dict:
    """(T, 2) QA logits and (T, H) last hidden states of the real tokens, fp32, in packed order."""
    from bertrt.harness.peers import hf_call

    real = mask.bool()
    out = hf_call(model, ids, types, mask)
    hidden = hf_call(model.base_model, ids, types, mask).last_hidden_state
    return {"qa_logits": torch.stack([out.start_logits, out.end_logits], dim=-1)[real].float(),
            "hidden": hidden[real].float()}


def finite(value: float) -> float | str:
    """A float for the JSON; "nan" / "inf" spelled out (the report is strict JSON)."""
    return value if math.isfinite(value) else str(value)


def numerics(engine, model: torch.nn.Module, lengths: tuple[int, ...]) -> dict:
    """Max/mean |error| against HF fp32 of the engine (as loaded, and eager) and of HF fp16."""
    from bertrt.engine import Engine
    from bertrt.packed import pack_sequences, pad_sequences

    config, device = engine.config, engine.device
    ids, types = ragged_inputs(config, lengths, seed=SEED + 1)
    batch = pack_sequences(ids, types).to(device)
    padded_ids, mask, padded_types = pad_sequences(ids, types)
    padded_ids = padded_ids.masked_fill(mask == 0, config.pad_token_id)  # RoBERTa's positions skip padding
    padded = [t.to(device) for t in (padded_ids, padded_types, mask)]
    half = copy.deepcopy(model).half()
    # The same weights without CUDA graphs (on the CPU the engine has none: the same path).
    eager = Engine(engine.spec, engine.tensors(), device=device, graphs=False) if engine.graphs else engine
    with torch.inference_mode():
        want = hf_outputs(model, *padded)
        theirs = hf_outputs(half, *padded)
        ours = {"qa_logits": engine.qa_logits(batch).float(), "hidden": engine.encode(batch).float()}
        ours_eager = ({"qa_logits": eager.qa_logits(batch).float(), "hidden": eager.encode(batch).float()}
                      if eager is not engine else ours)
    del half, eager
    result: dict = {"lengths": list(lengths), "tokens": batch.total_tokens, "graphs": engine.graphs, "outputs": {}}
    for name, expected in want.items():
        ours_err, theirs_err = (ours[name] - expected).abs(), (theirs[name] - expected).abs()
        ratio = float(ours_err.max() / theirs_err.max()) if theirs_err.max() > 0 else float("inf")
        result["outputs"][name] = {
            "engine_max_abs_err": finite(float(ours_err.max())), "engine_mean_abs_err": finite(float(ours_err.mean())),
            "hf_fp16_max_abs_err": finite(float(theirs_err.max())),
            "hf_fp16_mean_abs_err": finite(float(theirs_err.mean())),
            "ratio": finite(ratio), "reference_max_abs": finite(float(expected.abs().max())),
            "graphs_vs_eager_max_abs": finite(float((ours[name] - ours_eager[name]).abs().max())),
            "pass": bool(ours_err.max() <= ERROR_RATIO * theirs_err.max()),
        }
    result["pass"] = all(o["pass"] for o in result["outputs"].values())
    return result


# --------------------------------------------------------------------------------------------
# Speed


def speed_cells(rows: list[dict]) -> list[dict]:
    """Per (batch, seq): bertrt's and each peer's avg/p50 ms, the best peer and bertrt's speed-up over it."""
    from bertrt.harness.perf import BERTRT

    cells = []
    for batch, seq in dict.fromkeys((r["batch"], r["seq"]) for r in rows):
        systems = {r["system"]: r for r in rows if (r["batch"], r["seq"]) == (batch, seq)}
        ours = systems.pop(BERTRT, None)
        cell = {"batch": batch, "seq": seq,
                "bertrt_avg_ms": ours and ours["avg_ms"], "bertrt_p50_ms": ours and ours["p50_ms"],
                "peers": {k: {"avg_ms": v["avg_ms"], "p50_ms": v["p50_ms"]} for k, v in systems.items()}}
        if ours and systems:
            best = min(systems, key=lambda k: systems[k]["avg_ms"])
            speedup = systems[best]["avg_ms"] / ours["avg_ms"]
            cell.update(best_peer=best, speedup=speedup, meets_target=speedup >= SPEEDUP_TARGET)
        cells.append(cell)
    return cells


def speed(engine, model16: torch.nn.Module, shapes, *, iterations: int, warmup: int, peers) -> dict:
    from bertrt.harness import perf

    rows, errors = [], []
    for batch, seq in shapes:  # run_table takes a grid; these are single cells
        rows += perf.run_table(engine, batches=[batch], seqs=[seq], iterations=iterations, warmup=warmup,
                               peers=peers, progress=False, errors=errors, model=model16)
    rows = [r.to_json() for r in rows]
    return {"iterations": iterations, "warmup": warmup, "rows": rows, "cells": speed_cells(rows), "errors": errors}


# --------------------------------------------------------------------------------------------
# The run


class Report:
    """families.json, rewritten after each family."""

    def __init__(self, path: Path, head: dict):
        self.path, self.data = path, {**head, "families": {}}
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        from bertrt.harness.perf import write_json

        self.data["total_seconds"] = round(self.elapsed(), 1)
        write_json(self.data, self.path)


def stage(entry: dict, name: str, fn, *args, **kwargs):
    """Run one stage of a family; its result or its error goes into ``entry[name]``."""
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        entry[name] = result if isinstance(result, dict) else {}
        ok = True
    except Exception as exc:  # noqa: BLE001  (one failing stage must not stop the other families)
        entry[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}
        print(f"!! {name} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        result, ok = None, False
    entry[name]["seconds"] = round(time.perf_counter() - t0, 2)
    entry["ok"] = entry.get("ok", True) and ok
    return result


def run_family(name: str, family: Family, settings: Settings, report: Report, *, dry: bool,
               device: torch.device, budget_s: float) -> dict:
    from bertrt.config import BertConfig, ConfigError, check_engine_support

    entry: dict = {"hf_class": f"{family.prefix}ForQuestionAnswering"}
    config = hf_config(family, dry=dry)
    ours = BertConfig.from_dict(config.to_dict(), source=f"{name} config")
    entry["model"] = {"model_type": ours.model_type, "vocab_size": ours.vocab_size, "hidden": ours.hidden_size,
                      "layers": ours.num_hidden_layers, "heads": ours.num_attention_heads,
                      "intermediate": ours.intermediate_size, "embedding_size": ours.embedding_size,
                      "type_vocab_size": ours.type_vocab_size, "pre_layer_norm": ours.pre_layer_norm}
    try:
        check_engine_support(ours)
    except ConfigError as exc:
        return {**entry, "ok": None, "skipped": f"not supported by the engine: {exc}"}
    with tempfile.TemporaryDirectory(prefix=f"bertrt-{name}-") as folder:
        t0 = time.perf_counter()
        model = random_hf_model(family, config, device=device, seed=SEED)
        entry["model"]["parameters"] = sum(p.numel() for p in model.parameters())
        entry["model"]["init_s"] = round(time.perf_counter() - t0, 2)
        limits = engine_limits(family, settings)
        built = stage(entry, "build", build_engine, model, Path(folder), limits=limits, device=device)
    if built is None:
        return entry
    engine, entry["build"] = built[0], {**built[1], "seconds": entry["build"]["seconds"], "limits": limits}
    from bertrt.harness.perf import engine_summary

    entry["engine"] = engine_summary(engine)
    lengths = settings.long_lengths if family.long else settings.lengths
    stage(entry, "numerics", numerics, engine, model, lengths)
    model16 = model.half()  # the peers: the same weights in the engine's precision
    del model
    cleanup(device)
    stage(entry, "speed", speed, engine, model16, settings.shapes, iterations=settings.iterations,
          warmup=settings.warmup, peers=settings.peers)
    if family.long:
        left = budget_s - report.elapsed()
        if dry or left >= LONG_RESERVE_S:
            stage(entry, "speed_long", speed, engine, model16, settings.long_shapes,
                  iterations=settings.long_iterations, warmup=settings.long_warmup, peers=settings.peers)
        else:
            entry["speed_long"] = {"skipped": f"out of time: {left:.0f} s of the budget left, "
                                              f"{LONG_RESERVE_S} s needed"}
    del engine, model16
    cleanup(device)
    return entry


def cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summary(name: str, entry: dict) -> str:
    if entry.get("skipped"):
        return f"{name}: {entry['skipped']}"
    parts = []
    outputs = (entry.get("numerics") or {}).get("outputs") or {}
    for output, o in outputs.items():
        parts.append(f"{output} max err {o['engine_max_abs_err']:.3g} vs HF fp16 {o['hf_fp16_max_abs_err']:.3g}"
                     f" ({'pass' if o['pass'] else 'FAIL'})" if isinstance(o["engine_max_abs_err"], float)
                     else f"{output} max err {o['engine_max_abs_err']} (FAIL)")
    for key in ("speed", "speed_long"):
        for cell in (entry.get(key) or {}).get("cells", []):
            peers = ", ".join(f"{k} {v['avg_ms']:.3f}" for k, v in cell["peers"].items())
            ms = f"{cell['bertrt_avg_ms']:.3f}" if cell["bertrt_avg_ms"] is not None else "-"
            speedup = f" -> {cell['speedup']:.2f}x" if "speedup" in cell else ""
            parts.append(f"b{cell['batch']} s{cell['seq']} bertrt {ms} ms, {peers}{speedup}")
    failed = [k for k in ("build", "numerics", "speed", "speed_long") if "error" in (entry.get(k) or {})]
    if failed:
        parts.append("FAILED: " + ", ".join(failed))
    return f"{name}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")),
                        help="folder for families.json (default $OUT, else the current folder)")
    parser.add_argument("--commit", default=None, help="the commit measured (recorded in the JSON)")
    parser.add_argument("--budget-s", type=float, default=240, help="skip families that would end past this")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES),
                        help="a subset to run (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, Triton's interpreter, 2 iterations")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (bertrt imports it lazily)
        device, settings = torch.device("cpu"), DRY_RUN
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        device, settings = torch.device("cuda", torch.cuda.current_device()), GPU
        # HF fp32 is the reference: true fp32 products, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    import transformers

    from bertrt.harness.perf import environment

    transformers.utils.logging.disable_progress_bar()  # a bar per save_pretrained
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out / "families.json", {
        "kind": "bertrt-device-families", "dry_run": args.dry_run, "commit": args.commit,
        "environment": environment(device, commit=args.commit),
        "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()},
                     "precision": "fp16", "head": "ForQuestionAnswering", "seed": SEED, "budget_s": args.budget_s,
                     "speedup_target": SPEEDUP_TARGET, "error_ratio": ERROR_RATIO, "reference": "HF fp32, TF32 off",
                     "timing": "harness.perf.run_table: per iteration, CUDA events + synchronize on the GPU"}})
    env = report.data["environment"]
    print(f"{env['device_name']} | torch {env['torch']} | triton {env['triton']} | transformers {env['transformers']}",
          flush=True)
    last_s = 0.0  # the last family's time: the estimate of the next one's
    for name in args.families:
        if report.elapsed() + last_s > args.budget_s:
            report.data["families"][name] = {"ok": None, "skipped": f"out of time at {report.elapsed():.0f} s "
                                                                    f"(budget {args.budget_s:.0f} s)"}
        else:
            print(f"\n== {name} (t={report.elapsed():.0f}s)", flush=True)
            t0 = time.perf_counter()
            try:
                entry = run_family(name, FAMILIES[name], settings, report, dry=args.dry_run, device=device,
                                   budget_s=args.budget_s)
            except Exception as exc:  # noqa: BLE001  (the model or its config: the next family still runs)
                entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                         "traceback": traceback.format_exc()[-3000:]}
                cleanup(device)
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            if not entry.get("skipped"):
                last_s = entry["seconds"]
            report.data["families"][name] = entry
        print(summary(name, report.data["families"][name]) if "error" not in report.data["families"][name]
              else f"{name}: FAILED {report.data['families'][name]['error'][:300]}", flush=True)
        report.save()
    failed = [n for n, e in report.data["families"].items() if e.get("ok") is False]
    print(f"\nwrote {report.path} in {report.elapsed():.0f} s; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
