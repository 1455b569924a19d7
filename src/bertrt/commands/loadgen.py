"""`bertrt loadgen`: MLPerf Inference BERT (SQuAD v1.1) on the real LoadGen."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SCENARIOS = ("Offline", "SingleStream", "MultiStream", "Server")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "loadgen", help="MLPerf Inference BERT on SQuAD v1.1 through the real LoadGen",
        description="Drive MLPerf LoadGen (mlcommons-loadgen) against a bertrt, PyTorch or onnxruntime "
                    "system under test. Samples are the 10,833 SQuAD v1.1 dev features (384/128/64), "
                    "tokenised before the timed run. LoadGen's own logs (mlperf_log_summary.txt, "
                    "mlperf_log_detail.txt, mlperf_log_accuracy.json), report.json, batches.json "
                    "(one row per batch) and, in accuracy mode, accuracy.json land in --out. Settings: "
                    "LoadGen's built-in mlperf.conf for bert, then --user-conf, then the flags given here.",
        epilog="examples:\n"
               "  bertrt loadgen --scenario Offline --engine eng/ --data dev-v1.1.json --target-qps 5000 "
               "--min-duration 60\n"
               "  bertrt loadgen --scenario Server --engine eng/ --target-qps 4500 --target-latency-ms 130 "
               "--plot server.png\n"
               "  bertrt loadgen --scenario Offline --engine eng/ --devices all --target-qps 10000\n"
               "  bertrt loadgen --mode accuracy --backend pytorch --data dev-v1.1.json --count 200",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, default="Offline", help="LoadGen scenario (default Offline)")
    p.add_argument("--mode", choices=("performance", "accuracy"), default="performance",
                   help="performance: timed run, LoadGen's verdict; accuracy: every sample once, then EM/F1")
    p.add_argument("--backend", choices=("bertrt", "pytorch", "onnxruntime"), default="bertrt",
                   help="bertrt: packed tokens through the GPU engine (--engine, or one built from --model); "
                        "on CPU without --engine it runs the fp32 ReferenceBert. pytorch: Hugging Face "
                        "BertForQuestionAnswering (fp16 on CUDA, fp32 on CPU), padded. onnxruntime: that "
                        "model exported to ONNX, CUDA provider when available, else CPU (default bertrt)")
    p.add_argument("--engine", metavar="DIR",
                   help="a saved engine from `bertrt build`: run by the bertrt backend; the pytorch and "
                        "onnxruntime backends take its weights when --model is not given")
    p.add_argument("--model", metavar="PATH",
                   help="checkpoint with a QA head (default: the embedded model, unless --engine)")
    p.add_argument("--data", default="dev-v1.1.json", metavar="FILE",
                   help="SQuAD v1.1 dev json (default ./dev-v1.1.json)")
    p.add_argument("--vocab", metavar="FILE",
                   help="vocab.txt to tokenise with when the engine has none (random-weight engines)")
    p.add_argument("--articles", metavar="A:B", help="only articles A..B-1 (default all, as MLPerf)")
    p.add_argument("--user-conf", metavar="FILE", help="LoadGen user.conf (e.g. 'bert.Server.target_qps = 4500')")
    p.add_argument("--target-qps", type=float, metavar="N",
                   help="Offline expected / Server target samples per second")
    p.add_argument("--target-latency-ms", type=float, metavar="MS",
                   help="Server latency bound (p99; MLPerf: 130); SingleStream/MultiStream expected latency")
    p.add_argument("--min-duration", type=float, metavar="S", help="minimum run length in seconds (MLPerf: 600)")
    p.add_argument("--min-query-count", type=int, metavar="N", help="minimum queries (Offline: samples)")
    p.add_argument("--count", type=int, metavar="N",
                   help="use only the first N samples (QSL size and performance sample count)")
    p.add_argument("--max-batch-tokens", type=int, metavar="N",
                   help="token budget per batch (padded tokens for padded backends; default 65536 "
                        "Offline, 32768 Server, 8192 otherwise)")
    p.add_argument("--graph-max-tokens", type=int, metavar="N",
                   help="largest batch (tokens) that replays the engine's CUDA graphs, captured before the run; "
                        "larger batches run eagerly (default 4096). An eager fp8/int8 pass costs 10-18 ms of host "
                        "time, so quantised engines may want graphs up to their max_tokens")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--devices", metavar="LIST",
                   help="several devices fed from one queue, one engine each (loaded from the same --engine): "
                        "cuda:0,cuda:1 or all (every visible GPU); a worker per device takes the next batch "
                        "when its device is free, and report.json counts each device's samples, batches and "
                        "busy time. cpu,cpu runs one CPU reference model per entry: a testing aid, not faster. "
                        "bertrt and pytorch backends; instead of --device")
    p.add_argument("--out", default="loadgen-out", metavar="DIR", help="output folder (default ./loadgen-out)")
    p.add_argument("--plot", metavar="FILE",
                   help="also plot each batch's service time over the run (from --out's batches.json) "
                        "here; a stall shows as one slow batch; needs matplotlib")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace a folder bertrt did not write, and --plot an existing file "
                        "(default: only an empty folder or an earlier LoadGen output is replaced)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    from bertrt.harness.loadgen.settings import BackendName, HarnessOptions, Mode, Scenario
    from bertrt.tasks.squad import parse_articles

    return HarnessOptions(
        scenario=Scenario(args.scenario), mode=Mode(args.mode), backend=BackendName(args.backend),
        engine=Path(args.engine) if args.engine else None, model=args.model, data=Path(args.data),
        vocab=Path(args.vocab) if args.vocab else None,
        articles=parse_articles(args.articles) if args.articles else None,
        user_conf=Path(args.user_conf) if args.user_conf else None, target_qps=args.target_qps,
        target_latency_ms=args.target_latency_ms, min_duration_s=args.min_duration,
        min_query_count=args.min_query_count, count=args.count, max_batch_tokens=args.max_batch_tokens,
        graph_max_tokens=args.graph_max_tokens, out=Path(args.out), device=args.device, devices=args.devices, overwrite=args.overwrite)


def _check_combinations(args: argparse.Namespace) -> None:
    """UserError for flags that mean nothing in the chosen scenario or mode."""
    from bertrt.errors import UserError

    if args.scenario == "Offline" and args.target_latency_ms is not None:
        raise UserError("--target-latency-ms has no meaning in the Offline scenario (it sets the Server "
                        "bound and the SingleStream/MultiStream expected latency)")
    if args.scenario in ("SingleStream", "MultiStream") and args.target_qps is not None:
        raise UserError(f"--target-qps has no meaning in the {args.scenario} scenario (queries are issued "
                        "one after another); use --target-latency-ms")
    if args.mode == "accuracy":
        given = [flag for flag, value in (("--min-duration", args.min_duration), ("--min-query-count",
                                                                                  args.min_query_count))
                 if value is not None]
        if given:
            raise UserError(f"{' and '.join(given)} only apply to --mode performance (accuracy mode runs "
                            "every sample once)")


def run(args: argparse.Namespace) -> int:
    from bertrt.errors import UserError
    from bertrt.harness.loadgen.report import format_table
    from bertrt.harness.loadgen.runner import run as run_harness

    options = options_from_args(args)
    options.validate()
    _check_combinations(args)
    if args.plot:
        from bertrt.atomic import check_destination

        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib (pip install 'bertrt[plot]')") from None
        check_destination(args.plot, flag="--plot", overwrite=args.overwrite,
                          inputs=[("--data", args.data), ("--out", args.out)])
    report = run_harness(options, progress=True)
    print(format_table([report]))
    phases = report.get("sut_phases_ms", {})
    if phases:
        print("per batch, p50 / p99 ms: " + "; ".join(
            f"{name} {p['p50']:.3f} / {p['p99']:.3f}" for name, p in phases.items()))
    devices = report.get("devices", [])
    if len(devices) > 1:
        print("per device: " + "; ".join(
            f"{d['device']} {d['samples']:,} samples ({100 * d['share']:.0f}%), {d['batches']:,} batches, "
            f"busy {d['busy_s']:.2f} s" for d in devices))
    if args.plot:
        from bertrt.harness.loadgen.trace import TRACE_FILE, plot_batches, read_batches

        label = f"{report['scenario']} {report['mode']}, {report['backend']}"
        from bertrt.atomic import write_file_atomically

        batches = read_batches(options.out / TRACE_FILE)
        figure = write_file_atomically(args.plot, lambda tmp: plot_batches([(label, batches)], tmp), keep_suffix=True)
        print(f"batch plot: {figure}")
    if "accuracy" in report:
        acc = report["accuracy"]
        print(json.dumps({"f1": round(acc["f1"], 3), "exact_match": round(acc["exact_match"], 3),
                          "questions": acc["questions"]}))
    print(f"logs, report.json{' and accuracy.json' if 'accuracy' in report else ''} in {options.out}")
    return 0
