"""What fp8 (e4m3) GEMMs would cost in SQuAD accuracy, estimated on the CPU with the default model.

    python benchmarks/fp8_accuracy_cpu.py --data ../shared/data/dev-v1.1.json --out fp8_accuracy.json

Session 7 measured that fp16 cannot reach issues 3 and 4's throughput targets on the lent card,
and that fp8 GEMMs take 27.8 ms at 49,152 tokens against 48.4 for fp16 (results/session7/). This
asks the other half of the question before any fp8 engine exists: what does it cost in answers?

NVIDIA's recipe on Hopper (ANCHORS.md) is per-tensor scales, the activations' taken from the 99.9th
percentile of their magnitudes on a calibration set. Here every encoder linear layer's weight
(scale: its largest magnitude / 448) and input (scale: that percentile / 448, larger values
clipped) are rounded to e4m3 and back, and the products are computed in fp32 ("fake
quantization": the rounding of an fp8 GEMM's operands, not its speed). Attention, LayerNorm,
embeddings and the QA head stay fp32, as they would in such an engine.

Calibration uses features of SQuAD dev articles 0-31 only; the held-out articles 32-47 are only
scored. Variants (``VARIANTS``): fp32 (the reference); fp8 weights only; fp8 weights and inputs
with input scales from the 99.9th and 99.99th percentiles and from the maximum; and, at 99.9, with
the inputs of one kind of projection left unrounded, to find which kind costs the most.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
PROJECTIONS = ("attn.qkv", "attn.out", "ffn.in", "ffn.out")
# name -> (percentile of input magnitudes or None for weights only, projections whose inputs stay fp32)
VARIANTS = {"fp8_weights": (None, ()),
            "fp8_weights_and_inputs_p99.9": (99.9, ()),
            "fp8_weights_and_inputs_p99.99": (99.99, ()),
            "fp8_weights_and_inputs_max": (100.0, ()),
            **{f"fp8_p99.9_except_{kind}_inputs": (99.9, (kind,)) for kind in PROJECTIONS}}


def fake_e4m3(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 at ``scale`` (x / scale clipped to +-448) and back, in x's dtype."""
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's projections (Q/K/V, attention output, FFN in and out of every layer)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("layers.")}


def calibrate(model: nn.Module, batches: Iterable, *, percentiles: Iterable[float] = (99.9,), sample: int = 65536,
              seed: int = 0) -> dict[float, dict[str, float]]:
    """For each of ``percentiles``: per encoder projection, that percentile of its input's magnitudes
    over ``batches`` (packed batches for ``model.qa_logits``), from up to ``sample`` values drawn
    from each batch (the maximum, 100, is taken over all values)."""
    generator = torch.Generator().manual_seed(seed)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in encoder_linears(model)}
    peak: dict[str, float] = {}

    def record(name):
        def hook(module, inputs):
            values = inputs[0].detach().abs().flatten()
            peak[name] = max(peak.get(name, 0.0), float(values.max()))
            if values.numel() > sample:
                values = values[torch.randint(values.numel(), (sample,), generator=generator)]
            seen[name].append(values.float())
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in encoder_linears(model).items()]
    try:
        with torch.inference_mode():
            for batch in batches:
                model.qa_logits(batch)
    finally:
        for handle in handles:
            handle.remove()
    if not all(seen.values()):
        raise ValueError("no calibration batches")
    pooled = {name: torch.cat(values).numpy() for name, values in seen.items()}
    return {p: {name: peak[name] if p >= 100 else float(np.percentile(values, p)) for name, values in pooled.items()}
            for p in percentiles}


def quantized(model: nn.Module, input_scales: dict[str, float] | None = None, *, keep: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose encoder projections use e4m3-rounded weights (per-tensor scale) and,
    given ``input_scales`` (calibrated magnitudes), e4m3-rounded inputs, except for projections
    whose names end with one of ``keep``."""
    keep = tuple(keep)
    model = copy.deepcopy(model)
    for name, linear in encoder_linears(model).items():
        with torch.no_grad():
            weight = linear.weight
            weight.copy_(fake_e4m3(weight, weight.abs().max().clamp_min(1e-12) / E4M3_MAX))
        if input_scales is not None and not name.endswith(keep):
            scale = max(input_scales[name], 1e-12) / E4M3_MAX
            linear.register_forward_pre_hook(lambda module, inputs, scale=scale: (fake_e4m3(inputs[0], scale),))
    return model


def main(argv: list[str] | None = None) -> int:
    from bertrt.packed import pack_sequences
    from bertrt.reference import ReferenceBert
    from bertrt.tasks.squad import FeatureConfig, make_features, postprocess, read_squad, read_squad_articles, run_qa_model
    from bertrt.tasks.squad_metric import evaluate
    from bertrt.harness.perf import environment
    from bertrt.tokenizer import BertTokenizer
    from bertrt.weights import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="SQuAD v1.1 dev json")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--model", default=None, help="QA checkpoint (default: the embedded default model)")
    parser.add_argument("--calibration-features", type=int, default=512,
                        help="features of articles 0-31 to calibrate on (default 512)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    checkpoint = load_checkpoint(args.model)
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case)
    reference = ReferenceBert.from_checkpoint(checkpoint).eval()
    calibration = make_features(read_squad(args.data, slice(0, 32)), tokenizer, FeatureConfig())
    order = torch.randperm(len(calibration), generator=torch.Generator().manual_seed(0)).tolist()
    calibration = [calibration[i] for i in order[:args.calibration_features]]
    batches = [pack_sequences([f.input_ids for f in calibration[i:i + 32]],
                              [f.token_type_ids for f in calibration[i:i + 32]]) for i in range(0, len(calibration), 32)]
    t0 = time.perf_counter()
    scales = calibrate(reference, batches, percentiles={p for p, _ in VARIANTS.values() if p is not None})
    calibration_s = time.perf_counter() - t0

    held_out = slice(32, 48)
    examples = read_squad(args.data, held_out)
    features = make_features(examples, tokenizer, FeatureConfig())
    dataset = read_squad_articles(args.data, held_out)
    variants = {"fp32": lambda: reference,
                **{name: lambda p=p, keep=keep: quantized(reference, scales.get(p), keep=keep)
                   for name, (p, keep) in VARIANTS.items()}}
    results = {}
    for name, make in variants.items():
        model = make()
        t0 = time.perf_counter()
        starts, ends = run_qa_model(model, features, batch_size=32, progress=True)
        predictions, _ = postprocess(examples, features, starts, ends)
        results[name] = {**evaluate(dataset, predictions), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {results[name]}", flush=True)
    report = {"kind": "bertrt-fp8-accuracy-cpu", "environment": environment(torch.device("cpu")),
              "model": checkpoint.source, "recipe": "e4m3, per-tensor: weights scaled by their max, encoder projection inputs by a "
              "percentile of their magnitudes on the calibration set; products in fp32",
              "variants": {name: {"input_percentile": p, "inputs_left_fp32": list(keep)}
                           for name, (p, keep) in VARIANTS.items()},
              "calibration": {"articles": "0-31", "features": len(calibration), "seconds": round(calibration_s, 1),
                              "input_magnitudes": {str(p): v for p, v in scales.items()}},
              "held_out": {"articles": "32-47", "questions": len(examples), "features": len(features)},
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
