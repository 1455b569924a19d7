"""`bertrt build`: any checkpoint -> a saved engine folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bertrt.errors import UserError


def register(subparsers) -> None:
    from bertrt.config import STANDARD_CONFIGS

    p = subparsers.add_parser(
        "build", help="build a GPU engine from a checkpoint (seconds; no per-shape rebuilds later)",
        description="Cast a checkpoint to one precision and save it as an engine folder (engine.json, "
                    "weights.safetensors with its sha256, vocab.txt). The engine records the GPU compute "
                    "capability it was built for; CUDA graphs are captured at run time per token bucket, so new "
                    "request shapes never need a rebuild. A GPU build also times the alternative kernels (attention: "
                    "bertrt's Triton kernel in several tilings or PyTorch's; FFN up-projection: cuBLAS + GELU or "
                    "a fused Triton GEMM; attention output and FFN down projections: cuBLAS, cuBLAS adding into "
                    "the residual, or split-K up to 384 tokens) at a few token counts and records the fastest in "
                    "engine.json. BERT-Large on an H100: about "
                    "20-28 s on a fresh machine (Triton compiles the candidates), 10-15 s with a warm kernel cache.",
        epilog="examples:\n  bertrt build --model bert-large-squad/ --out engines/large-fp16\n"
               "  bertrt build --random large --out /tmp/large   # random weights, for speed runs\n"
               "  bertrt build --precision fp8 --calib-data dev-v1.1.json --calib-cache calib.json --out engines/fp8\n"
               "  bertrt build --precision int8 --int8-mode 1 --calib-cache calib.json --out engines/int8   # reuses "
               "the cache",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH",
                        help="checkpoint: Hugging Face folder, TensorFlow checkpoint, .onnx, state dict, or a hub "
                             "name (default: the embedded model)")
    source.add_argument("--random", choices=sorted(STANDARD_CONFIGS),
                        help="random weights of a standard shape, with a QA head (for speed runs)")
    p.add_argument("--out", required=True, metavar="DIR", help="engine folder to write (replaced atomically)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "fp8", "int8"), default="fp16",
                   help="fp32/fp16/bf16: every tensor in that dtype; fp8 (e4m3, GPUs of compute capability >= 8.9) "
                        "or int8: the encoder's projections quantised with calibrated scales, the rest fp16 (fp32 "
                        "on a CPU build, which simulates the quantised numerics). Default fp16")
    q = p.add_argument_group("low precision (fp8, int8)")
    q.add_argument("--int8-mode", type=int, choices=(1, 2),
                   help="1: per-channel weight scales, fp16 GEMM outputs and residuals (default); 2: per-tensor "
                        "scales, int8 GEMM outputs and residuals")
    q.add_argument("--fp8-rounding", choices=("pass", "epilogue"),
                   help="where an fp8 engine rounds the FFN up-projection's output to e4m3: in a pass of its own "
                        "(default; held-out SQuAD F1 67.20 on an H200) or in cuBLASLt's GELU epilogue (about 12%% "
                        "faster on the SQuAD workload, F1 67.00)")
    q.add_argument("--fp8-attention", action="store_true",
                   help="attention's two products on e4m3 operands too (F1 67.26 on an H200, but slower with "
                        "today's kernel: 14.1 against 8.6 ms a BERT-Large b128 s384 pass)")
    q.add_argument("--calib-data", metavar="FILE",
                   help="SQuAD v1.1 json to calibrate the input scales on (the fp32 reference runs over it)")
    q.add_argument("--calib-articles", metavar="A:B", default="0:32",
                   help="articles of --calib-data to use, in file order (default 0:32; bertrt's results are "
                        "scored on 32:48)")
    q.add_argument("--calib-num", type=int, metavar="N", default=512,
                   help="most windows to calibrate on (a fixed random draw; default 512)")
    q.add_argument("--calib-method", metavar="METHOD",
                   help="max, percentile:P (e.g. 99.9, 99.99, 99.999) or mse (default: max for fp8, percentile:99.999 "
                        "for int8, which held accuracy best)")
    q.add_argument("--calib-cache", metavar="FILE",
                   help="calibration cache: reused when it exists and was made for these weights (no data needed), "
                        "written after calibrating otherwise")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="longest sequence accepted (default 384, or the model's positions if fewer; "
                        "ModernBERT takes up to 8192)")
    p.add_argument("--max-batch", type=int, default=128, metavar="N", help="sequences per forward pass (default 128)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="tokens per forward pass; larger batches are split (default max-batch x max-seq-length, "
                        "at most 65536 unless one sequence needs more)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when present), cuda, cuda:N, or cpu for a portable build (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from bertrt.config import STANDARD_CONFIGS
    from bertrt.engine import build
    from bertrt.engine.format import read_spec
    from bertrt.weights import random_checkpoint

    from bertrt.quant.data import CalibrationSettings
    from bertrt.quant.recipe import parse_method
    from bertrt.tasks.squad import parse_articles

    for name in ("max_seq_length", "max_batch", "max_tokens", "calib_num"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    low = args.precision in ("fp8", "int8")
    calibration = None
    if low:
        if args.calib_method is not None:
            parse_method(args.calib_method)
        if args.calib_data is None and args.calib_cache is None:
            raise UserError(f"--precision {args.precision} needs --calib-data FILE (SQuAD json) or an existing "
                            "--calib-cache FILE")
        if (args.calib_data is not None and args.calib_cache is not None
                and Path(args.calib_data).resolve() == Path(args.calib_cache).resolve()):
            raise UserError("--calib-cache and --calib-data name the same file: the cache is bertrt's own file")
        if args.calib_data is None and not Path(args.calib_cache).is_file():
            raise UserError(f"--calib-cache {args.calib_cache}: no such file, and no --calib-data to make it from")
        calibration = CalibrationSettings(data=args.calib_data, articles=parse_articles(args.calib_articles, flag="--calib-articles"),
                                          num=args.calib_num, method=args.calib_method, cache=args.calib_cache)
    else:
        given = [f"--{n.replace('_', '-')}" for n in ("int8_mode", "calib_data", "calib_cache")
                 if getattr(args, n) is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to --precision fp8 or int8, not {args.precision}")
    if args.int8_mode is not None and args.precision != "int8":
        raise UserError(f"--int8-mode applies to --precision int8, not {args.precision}")
    fp8_flags = [f for f, given in (("--fp8-rounding", args.fp8_rounding is not None),
                                    ("--fp8-attention", args.fp8_attention)) if given]
    if fp8_flags and args.precision != "fp8":
        raise UserError(f"{', '.join(fp8_flags)} apply to --precision fp8, not {args.precision}")
    recipe = None
    if fp8_flags:
        from bertrt.quant.recipe import QuantRecipe

        recipe = QuantRecipe.default("fp8")
        if args.fp8_rounding is not None:
            recipe = dataclasses.replace(recipe, epilogue_rounding=args.fp8_rounding == "epilogue")
        if args.fp8_attention:
            recipe = dataclasses.replace(recipe, attention="fp8")
        if args.calib_method is not None:
            recipe = dataclasses.replace(recipe, method=args.calib_method)
    from bertrt.atomic import check_destination

    reads = [("--model", args.model), ("--calib-data", args.calib_data)]
    cache_exists = args.calib_cache is not None and Path(args.calib_cache).is_file()
    check_destination(args.out, folder=True, inputs=reads + ([("--calib-cache", args.calib_cache)] if cache_exists
                                                            else []),
                      overwrite=None, replaceable=lambda existing: (existing / "engine.json").is_file())
    if args.calib_cache is not None and not cache_exists:  # written after calibrating
        check_destination(args.calib_cache, flag="--calib-cache", inputs=reads, siblings=[("--out", args.out)],
                          overwrite=None)
    start = time.perf_counter()
    model = random_checkpoint(STANDARD_CONFIGS[args.random]) if args.random else args.model
    if args.random and low and args.calib_data is not None:
        # Random weights have no vocabulary of their own; the calibration windows are tokenised
        # with the embedded default model's (BERT uncased, the standard configs' 30,522 words).
        from bertrt.weights import load_checkpoint

        model = dataclasses.replace(model, vocab_file=load_checkpoint(None).vocab_file)
    out = build(model, args.out, precision=args.precision, max_tokens=args.max_tokens,
                max_seq_length=args.max_seq_length, max_batch=args.max_batch,
                device=None if args.device == "auto" else args.device, int8_mode=args.int8_mode,
                calibration=calibration, recipe=recipe)
    seconds = time.perf_counter() - start
    spec = read_spec(out)
    c = spec.config
    target = (f"GPU compute capability {'.'.join(map(str, spec.compute_capability))} ({spec.device_name})"
              if spec.compute_capability else "CPU (portable)")
    print(f"built {out} in {seconds:.1f} s: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{spec.precision_name}, {spec.weights_bytes / 2**20:.0f} MiB, max_seq_length {spec.max_seq_length}, "
          f"max_batch {spec.max_batch}, max_tokens {spec.max_tokens}, for {target}")
    return 0
