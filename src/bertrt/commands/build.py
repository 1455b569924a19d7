"""`bertrt build`: any checkpoint -> a saved engine folder."""

from __future__ import annotations

import argparse
import time


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
               "  bertrt build --random large --out /tmp/large   # random weights, for speed runs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH",
                        help="checkpoint: Hugging Face folder, TensorFlow checkpoint, .onnx, state dict, or a hub "
                             "name (default: the embedded model)")
    source.add_argument("--random", choices=sorted(STANDARD_CONFIGS),
                        help="random weights of a standard shape, with a QA head (for speed runs)")
    p.add_argument("--out", required=True, metavar="DIR", help="engine folder to write (replaced atomically)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16", help="default fp16")
    p.add_argument("--max-seq-length", type=int, metavar="N", help="longest sequence accepted (default 384)")
    p.add_argument("--max-batch", type=int, default=128, metavar="N", help="sequences per forward pass (default 128)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="tokens per forward pass; larger batches are split (default max-batch x max-seq-length)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when present), cuda, cuda:N, or cpu for a portable build (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertrt.cli import UserError
    from bertrt.config import STANDARD_CONFIGS
    from bertrt.engine import build
    from bertrt.engine.format import read_spec
    from bertrt.weights import random_checkpoint

    for name in ("max_seq_length", "max_batch", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    from bertrt.atomic import check_destination
    check_destination(args.out, folder=True, inputs=[("--model", args.model)], overwrite=None,
                      replaceable=lambda existing: (existing / "engine.json").is_file())
    start = time.perf_counter()
    model = random_checkpoint(STANDARD_CONFIGS[args.random]) if args.random else args.model
    out = build(model, args.out, precision=args.precision, max_tokens=args.max_tokens,
                max_seq_length=args.max_seq_length, max_batch=args.max_batch,
                device=None if args.device == "auto" else args.device)
    seconds = time.perf_counter() - start
    spec = read_spec(out)
    c = spec.config
    target = (f"GPU compute capability {'.'.join(map(str, spec.compute_capability))} ({spec.device_name})"
              if spec.compute_capability else "CPU (portable)")
    print(f"built {out} in {seconds:.1f} s: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{spec.precision.value}, {spec.weights_bytes / 2**20:.0f} MiB, max_seq_length {spec.max_seq_length}, "
          f"max_batch {spec.max_batch}, max_tokens {spec.max_tokens}, for {target}")
    return 0
