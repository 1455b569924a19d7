"""`bertrt perf`: latency table and SQuAD throughput of an engine and its peers, in one process."""

from __future__ import annotations

import argparse
import contextlib
import tempfile


# Defaults per device: a GPU row of BERT-Large at 128 x 384 takes milliseconds, a CPU row seconds,
# so the GPU's 1000 iterations of four batch sizes would keep a CPU busy for hours.
GPU_DEFAULTS = {"batch_sizes": [1, 8, 32, 128], "seq_lengths": [128, 384], "iterations": 1000, "warmup": 100}
CPU_DEFAULTS = {"batch_sizes": [1, 8], "seq_lengths": [128], "iterations": 10, "warmup": 2}


def register(subparsers) -> None:
    from bertrt.config import STANDARD_CONFIGS

    p = subparsers.add_parser(
        "perf", help="latency per batch x sequence length (avg/p50/p95/p99) vs Hugging Face peers",
        description="Time full batches of b sequences of s tokens through an engine and through its peers, "
                    "built from the same weights and run in the same process: hf (transformers "
                    "BertForQuestionAnswering, eager), hf-graph (that model in one CUDA graph per shape), compile "
                    "(torch.compile max-autotune; minutes per shape). Each iteration is timed on its own with "
                    "CUDA events. --workload squad also runs the SQuAD v1.1 dev features: bertrt packed in "
                    "token-budget batches, peers padded to 384; reports features/s.",
        epilog="examples:\n  bertrt perf --engine engines/large-fp16 -b 1 8 32 128 -s 128 384 --peers hf,hf-graph\n"
               "  bertrt perf --model large --workload squad --data dev-v1.1.json --json perf.json --plot perf.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--engine", metavar="DIR", help="an engine folder from `bertrt build`")
    source.add_argument("--model", choices=sorted(STANDARD_CONFIGS),
                        help="build a random-weight engine of this standard shape in a temporary folder")
    p.add_argument("-b", "--batch-sizes", type=int, nargs="+", metavar="B",
                   help=f"batch sizes (default {' '.join(map(str, GPU_DEFAULTS['batch_sizes']))} on a GPU, "
                        f"{' '.join(map(str, CPU_DEFAULTS['batch_sizes']))} on the CPU)")
    p.add_argument("-s", "--seq-lengths", type=int, nargs="+", metavar="S",
                   help=f"sequence lengths (default {' '.join(map(str, GPU_DEFAULTS['seq_lengths']))} on a GPU, "
                        f"{' '.join(map(str, CPU_DEFAULTS['seq_lengths']))} on the CPU); lengths beyond the "
                        "engine's max_seq_length are skipped with a warning")
    p.add_argument("--iterations", type=int, metavar="N",
                   help=f"timed iterations per row (default {GPU_DEFAULTS['iterations']} on a GPU, "
                        f"{CPU_DEFAULTS['iterations']} on the CPU)")
    p.add_argument("--warmup", type=int, metavar="N",
                   help=f"untimed iterations first (default {GPU_DEFAULTS['warmup']} on a GPU, "
                        f"{CPU_DEFAULTS['warmup']} on the CPU)")
    p.add_argument("--no-graphs", action="store_true", help="run bertrt eagerly (no CUDA graphs)")
    p.add_argument("--peers", default="hf", metavar="LIST",
                   help="comma-separated peers from hf,hf-graph,compile, or 'none' (default hf)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                   help="precision of a --model engine (default fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workload", choices=("squad",), help="also measure throughput on the SQuAD dev features")
    p.add_argument("--data", metavar="FILE", help="SQuAD v1.1 dev json for --workload squad")
    p.add_argument("--max-features", type=int, metavar="N", help="only the first N SQuAD features")
    p.add_argument("--peer-batch", type=int, default=64, metavar="N",
                   help="features per padded peer batch in the workload (default 64)")
    p.add_argument("--vocab", metavar="FILE", help="vocab.txt for tokenising SQuAD when the engine has none")
    p.add_argument("--json", metavar="FILE", help="write the full report (environment, settings, rows) here")
    p.add_argument("--plot", metavar="FILE", help="write latency vs batch size (log axes) here; needs matplotlib")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="let --json and --plot replace existing files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertrt.atomic import check_destination, write_file_atomically
    from bertrt.commands._common import only_with, warn
    from bertrt.device import resolve_device
    from bertrt.errors import UserError
    from bertrt.harness import perf, workload

    peers = [] if args.peers.strip().lower() in ("", "none") else [p.strip() for p in args.peers.split(",")]
    unknown = [p for p in peers if p not in perf.PEERS]
    if unknown:
        raise UserError(f"--peers: unknown {', '.join(unknown)} (choose from {', '.join(perf.PEERS)} or none)")
    for name in ("iterations", "max_features", "peer_batch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if (args.warmup is not None and args.warmup < 0) or any(v <= 0 for v in (args.batch_sizes or []) +
                                                              (args.seq_lengths or [])):
        raise UserError("--warmup must be >= 0, batch sizes and sequence lengths positive")
    if args.workload and not args.data:
        raise UserError("--workload squad needs --data dev-v1.1.json")
    only_with(args, "--workload", "data", "max_features", "vocab", "peer_batch", defaults={"peer_batch": 64})
    if args.engine and args.precision:
        raise UserError("--precision only applies to a --model engine (an --engine keeps the precision it was "
                        "built with)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib (pip install 'bertrt[plot]')") from None
    inputs = [("--engine", args.engine), ("--data", args.data), ("--vocab", args.vocab)]
    if args.json:
        check_destination(args.json, flag="--json", inputs=inputs, siblings=[("--plot", args.plot)],
                          overwrite=args.overwrite)
    if args.plot:
        check_destination(args.plot, flag="--plot", inputs=inputs, overwrite=args.overwrite)
    device = resolve_device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    fitted = [name for name in defaults if getattr(args, name) is None]
    for name in fitted:
        setattr(args, name, defaults[name])
    with contextlib.ExitStack() as stack:
        engine, name = _engine(args, device, stack)
        print(f"{name}: {engine}")
        if device.type != "cuda" and fitted:  # said once the engine loads: a bad engine gives one line
            chosen = ", ".join(f"--{flag.replace('_', '-')} {_shown(defaults[flag])}" for flag in fitted)
            warn(f"on the CPU: {chosen} (the GPU defaults would take hours here)")
        too_long = [s for s in args.seq_lengths if s > engine.max_seq_length]
        if too_long:
            warn(f"skipping sequence length(s) {_shown(too_long)}: longer than the engine's max_seq_length "
                 f"{engine.max_seq_length}")
            args.seq_lengths = [s for s in args.seq_lengths if s <= engine.max_seq_length]
            if not args.seq_lengths and not args.workload:
                raise UserError(f"-s/--seq-lengths: every length exceeds the engine's max_seq_length "
                                f"{engine.max_seq_length}: nothing to time")
        report = perf.perf_report(engine, batches=args.batch_sizes, seqs=args.seq_lengths,
                                  iterations=args.iterations, warmup=args.warmup, peers=peers,
                                  workload_data=args.data if args.workload else None, max_features=args.max_features,
                                  vocab=args.vocab, peer_batch=args.peer_batch, progress=not args.no_progress,
                                  name=name)
    env = report["environment"]
    print(f"{env['device_name']} | torch {env['torch']} | {args.iterations} iterations after {args.warmup} warm-up")
    print(perf.format_table(perf.rows_from_report(report)))
    if "workload" in report:
        print()
        print(workload.format_workload(workload.workload_from_report(report)))
    for error in report["errors"]:
        where = " ".join(f"{k} {error[k]}" for k in ("system", "batch", "seq") if k in error)
        warn(f"skipped {where}: {error['error']}")
    if args.json:
        print(f"wrote {perf.write_json(report, args.json)}")
    if args.plot and report["rows"]:
        rows = perf.rows_from_report(report)
        figure = write_file_atomically(args.plot, lambda tmp: perf.plot(rows, tmp, title=name), keep_suffix=True)
        print(f"wrote {figure}")
    if args.seq_lengths and not report["rows"]:
        raise UserError("no row could be timed (see the warnings above)")
    return 0


def _shown(values) -> str:
    return " ".join(map(str, values)) if isinstance(values, list) else str(values)


def _engine(args, device, stack: contextlib.ExitStack):
    """The engine to time, and a name for it."""
    from bertrt.engine import Engine, build

    graphs = not args.no_graphs
    if args.engine:
        return Engine.load(args.engine, device=device, graphs=graphs), str(args.engine)
    from bertrt.config import STANDARD_CONFIGS
    from bertrt.weights import random_checkpoint

    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bertrt-perf-"))
    path = build(random_checkpoint(STANDARD_CONFIGS[args.model]), f"{folder}/engine", precision=precision,
                 device=device)
    name = {"modernbert-base": "ModernBERT-base"}.get(args.model, f"BERT-{args.model}")
    return Engine.load(path, device=device, graphs=graphs), f"{name} (random weights, {precision})"
