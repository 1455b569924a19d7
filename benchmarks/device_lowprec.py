"""fp8 and int8 engines on the lent GPU: accuracy per recipe, speed beside fp16 and the Hugging Face
peers, and the fp8 GEMM floor. One run writes ``$OUT/lowprec.json`` (rewritten after every section).

    PYTHONPATH=src python benchmarks/device_lowprec.py --data dev-v1.1.json --commit SHA --out DIR \
        [--sections accuracy,speed,floors]

- accuracy: the embedded default model on SQuAD v1.1 dev articles 32-47 (held out), calibrated on
  articles 0-31: the fp32 reference, the fp16 engine, and fp8 / int8 engines per calibration method
  and mode; the default recipes also through the CPU simulation (the same engine loaded on the CPU).
- speed: random-weight BERT-Large, fp16 and fp8 engines (fp8 calibrated on 128 windows of articles
  0-31; speed does not depend on values), the latency table and the SQuAD dev workload, with the HF
  peers in the same process.
- profile: random-weight BERT-Large per precision of ``--speed-precisions``, at b1 s384 and b128
  s384: graph latency and a kernel-by-kernel breakdown of one eager pass (``device_profile``).
- floors: each layer's four projections with its own weights, chained in one CUDA graph, in fp8
  (cuBLASLt, fp16 out) and fp16 (cuBLAS), at 384 and 49,152 tokens: what no engine on these GEMMs
  can beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bertrt.config import STANDARD_CONFIGS  # noqa: E402
from bertrt.engine import Engine, build  # noqa: E402
from bertrt.harness import perf  # noqa: E402
from bertrt.quant.data import CalibrationSettings  # noqa: E402
from bertrt.quant.recipe import QuantRecipe  # noqa: E402
from bertrt.weights import load_checkpoint, random_checkpoint  # noqa: E402

HELD_OUT = slice(32, 48)
# name -> (precision, build keyword arguments)
ACCURACY = {
    "fp16": ("fp16", {}),
    "fp8 max": ("fp8", {"method": "max"}),
    "fp8 percentile:99.99": ("fp8", {"method": "percentile:99.99"}),
    "fp8 percentile:99.9": ("fp8", {"method": "percentile:99.9"}),
    "fp8 mse": ("fp8", {"method": "mse"}),
    "fp8 mse, rounding pass": ("fp8", {"method": "mse", "epilogue_rounding": False}),
    "fp8 max, rounding pass": ("fp8", {"method": "max", "epilogue_rounding": False}),
    "fp8 max, fp8 attention": ("fp8", {"method": "max", "attention": "fp8"}),
    "fp8 max, rounding pass, fp8 attention": ("fp8", {"method": "max", "epilogue_rounding": False,
                                                      "attention": "fp8"}),
    "fp8 max, ffn.out in fp16": ("fp8", {"method": "max", "projections": ("attn.qkv", "attn.out", "ffn.in")}),
    "fp8 max, per-channel weights": ("fp8", {"method": "max", "weights": "per-channel"}),
    "int8-mode1 max": ("int8", {"method": "max", "int8_mode": 1}),
    "int8-mode1 percentile:99.99": ("int8", {"method": "percentile:99.99", "int8_mode": 1}),
    "int8-mode1 mse": ("int8", {"method": "mse", "int8_mode": 1}),
    "int8-mode1 percentile:99.999": ("int8", {"method": "percentile:99.999", "int8_mode": 1}),
    "int8-mode1 percentile:99.99, ffn.out in fp16": ("int8", {"method": "percentile:99.99", "int8_mode": 1,
                                                              "projections": ("attn.qkv", "attn.out", "ffn.in")}),
    "int8-mode2 max": ("int8", {"method": "max", "int8_mode": 2}),
}
SIMULATED = ("fp8 mse", "fp8 max, rounding pass", "fp8 max, fp8 attention", "int8-mode1 percentile:99.99")
# Speed and profile variants beside the plain precisions (which build each format's default recipe).
VARIANTS = {
    "fp8-epilogue": ("fp8", {"method": "max", "epilogue_rounding": True}),
    "fp8-pass": ("fp8", {"method": "max", "epilogue_rounding": False}),
    "fp8-attn": ("fp8", {"method": "max", "epilogue_rounding": False, "attention": "fp8"}),
    "fp8-epilogue-attn": ("fp8", {"method": "max", "epilogue_rounding": True, "attention": "fp8"}),
}


def quant_build(checkpoint, out, precision, options, *, data, device, calib_num=512, cache_dir=None):
    if precision not in ("fp8", "int8"):
        return build(checkpoint, out, precision=precision, device=device)
    mode = options.get("int8_mode")
    recipe = QuantRecipe.default(precision, mode)
    recipe = dataclasses.replace(recipe, **{k: options[k] for k in ("method", "weights", "projections",
                                                                    "epilogue_rounding", "attention") if k in options})
    method = recipe.method
    cache = Path(cache_dir) / f"calib-{method.replace(':', '_')}.json" if cache_dir else None
    settings = CalibrationSettings(data=data, articles=slice(0, 32), num=calib_num, method=method, cache=cache,
                                   progress=False)
    return build(checkpoint, out, precision=precision, device=device, recipe=recipe, calibration=settings)


def squad_f1(model, examples, features, dataset) -> dict:
    from bertrt.tasks.squad import postprocess, run_qa_model
    from bertrt.tasks.squad_metric import evaluate

    t0 = time.perf_counter()
    starts, ends = run_qa_model(model, features, batch_size=64)
    predictions, _ = postprocess(examples, features, starts, ends)
    return {**evaluate(dataset, predictions), "seconds": round(time.perf_counter() - t0, 2)}


def section_accuracy(report, args, device, tmp):
    from bertrt.reference import ReferenceBert
    from bertrt.tasks.squad import FeatureConfig, make_features, read_squad, read_squad_articles
    from bertrt.tokenizer import BertTokenizer

    checkpoint = load_checkpoint(None)
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case)
    examples = read_squad(args.data, HELD_OUT)
    features = make_features(examples, tokenizer, FeatureConfig())
    dataset = read_squad_articles(args.data, HELD_OUT)
    results = report.setdefault("accuracy", {"model": "embedded default (all-MiniLM-L6-v2 fine-tuned on articles "
                                             "0-31)", "held_out": "articles 32-47", "questions": len(examples),
                                             "calibration": "articles 0-31, 512 windows", "results": {}})["results"]
    reference = ReferenceBert.from_checkpoint(checkpoint, device=device)
    results["fp32 reference"] = squad_f1(reference, examples, features, dataset)
    print("fp32 reference", results["fp32 reference"], flush=True)
    chosen = args.recipes.split(";") if args.recipes else list(ACCURACY)
    for name, (precision, options) in ((n, ACCURACY[n]) for n in chosen):
        try:
            path = quant_build(checkpoint, tmp / name.replace(" ", "_").replace(":", "_").replace(",", ""),
                               precision, options, data=args.data, device=device, cache_dir=tmp)
            engine = Engine.load(path, device=device)
            results[name] = {**squad_f1(engine, examples, features, dataset), "recipe": engine.spec.to_json()["quantization"]}
            if name in SIMULATED:
                cpu = Engine.load(path, device="cpu")
                results[name + " (CPU simulation)"] = squad_f1(cpu, examples, features, dataset)
        except Exception as exc:  # noqa: BLE001  (one recipe failing keeps the others)
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print(name, {k: v for k, v in results[name].items() if k != "traceback"}, flush=True)
        write(report, args.out)


def large_engines(args, device, tmp, folder: str):
    """(precision, Engine, build seconds) for each of ``--speed-precisions``: random BERT-Large with the
    default model's (BERT uncased, 30,522-word) vocabulary to tokenise the calibration windows (128 of
    articles 0-31; speed does not depend on values). A build that fails yields its error instead."""
    checkpoint = dataclasses.replace(random_checkpoint(STANDARD_CONFIGS["large"], heads=("qa",)),
                                     vocab_file=load_checkpoint(None).vocab_file)
    cache_dir = tmp / "large"
    cache_dir.mkdir(exist_ok=True)
    for precision in args.speed_precisions.split(","):
        t0 = time.perf_counter()
        try:
            kind, options = VARIANTS.get(precision, (precision, {}))
            path = quant_build(checkpoint, tmp / f"{folder}-{precision}", kind, options, data=args.data,
                               device=device, calib_num=128, cache_dir=cache_dir)
            yield precision, Engine.load(path, device=device), time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001  (one precision failing keeps the others)
            yield precision, exc, time.perf_counter() - t0
        torch.cuda.empty_cache()


def failure(exc: Exception) -> dict:
    record = {"error": f"{type(exc).__name__}: {exc}",
              "traceback": "".join(traceback.format_exception(exc))[-3000:]}
    print(record["traceback"], flush=True)
    return record


def section_speed(report, args, device, tmp):
    speed = report.setdefault("speed", {"model": "BERT-Large, random weights", "iterations": args.iterations,
                                        "warmup": 20, "runs": {}})["runs"]
    for precision, engine, build_s in large_engines(args, device, tmp, "large"):
        try:
            if isinstance(engine, Exception):
                raise engine
            peers = ["hf", "hf-graph"] if precision == "fp16" else []
            run = perf.perf_report(engine, batches=[1, 8, 32, 128], seqs=[128, 384], iterations=args.iterations,
                                   warmup=20, peers=peers, workload_data=args.data, peer_batch=64, progress=False,
                                   name=f"BERT-Large {precision}")
            speed[precision] = {"build_seconds": round(build_s, 1), **run}
            print(perf.format_table(perf.rows_from_report(run)), flush=True)
            print(json.dumps(run.get("workload"), default=str)[:800], flush=True)
        except Exception as exc:  # noqa: BLE001
            speed[precision] = failure(exc)
        del engine
        write(report, args.out)


def section_profile(report, args, device, tmp):
    from device_profile import profile_shape

    profiles = report.setdefault("profile", {"model": "BERT-Large, random weights", "runs": {}})["runs"]
    for precision, engine, _ in large_engines(args, device, tmp, "profile"):
        try:
            if isinstance(engine, Exception):
                raise engine
            profiles[precision] = [profile_shape(engine, batch, seq) for batch, seq in ((1, 384), (128, 384))]
            print(precision, json.dumps(profiles[precision], indent=1, default=str), flush=True)
        except Exception as exc:  # noqa: BLE001
            profiles[precision] = failure(exc)
        del engine
        write(report, args.out)


def section_floors(report, args, device, tmp):
    from bertrt.engine.tuning import graph_time_ms
    from bertrt.ops.linear_fp8 import linear_fp8
    from bertrt.quant.numerics import quantize_weight

    c = STANDARD_CONFIGS["large"]
    h, i = c.hidden_size, c.intermediate_size
    shapes = [(3 * h, h), (h, h), (i, h), (h, i)]
    gen = torch.Generator(device=device).manual_seed(0)
    layers16 = [[torch.randn(n, k, device=device, generator=gen).half() * 0.02 for n, k in shapes]
                for _ in range(c.num_hidden_layers)]
    layers8 = [[quantize_weight(w, "fp8", "per-tensor") for w in layer] for layer in layers16]
    one = torch.ones((), device=device)
    floors = report.setdefault("floors", {"model": "BERT-Large, 24 layers x 4 projections, own weights", "ms": {}})["ms"]
    for tokens in (384, 49152):
        x16 = {k: torch.randn(tokens, k, device=device).half() for k in (h, i)}
        x8 = {k: v.to(torch.float8_e4m3fn) for k, v in x16.items()}

        def fp16():
            for layer in layers16:
                for w in layer:
                    torch.nn.functional.linear(x16[w.shape[1]], w)

        def fp8():
            for layer in layers8:
                for q, s in layer:
                    linear_fp8(x8[q.shape[1]], q, one, s)

        flops = 2 * tokens * sum(n * k for n, k in shapes) * c.num_hidden_layers
        for name, fn in (("fp16", fp16), ("fp8", fp8)):
            ms = graph_time_ms(fn, reps=2, rounds=5)
            floors[f"{name} {tokens} tokens"] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
            print(name, tokens, floors[f"{name} {tokens} tokens"], flush=True)
        write(report, args.out)


def write(report, out):
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "lowprec.json").write_text(json.dumps(report, indent=1, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="SQuAD v1.1 dev json")
    parser.add_argument("--commit", required=True, help="the commit this runs at (the device's .git may be stale)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT)")
    parser.add_argument("--sections", default="accuracy,speed,floors")
    parser.add_argument("--recipes", help="names of ACCURACY to run, separated by semicolons (default all)")
    parser.add_argument("--speed-precisions", default="fp8,int8,fp16")
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    device = torch.device("cuda")
    env = perf.environment(device)
    env["git_sha"], env["git_dirty"] = args.commit, None
    report = {"kind": "bertrt-lowprec", "environment": env, "sections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections.split(","):
            t0 = time.perf_counter()
            try:
                {"accuracy": section_accuracy, "speed": section_speed, "profile": section_profile,
                 "floors": section_floors}[name](
                    report, args, device, Path(tmp))
                report["sections"][name] = {"seconds": round(time.perf_counter() - t0, 1)}
            except Exception as exc:  # noqa: BLE001
                report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                            "traceback": traceback.format_exc()[-3000:]}
                print(report["sections"][name]["traceback"], flush=True)
            write(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
