"""MLPerf Inference BERT on the lent GPU through the real LoadGen, in one call (~9 minutes).

LoadGen is not installed on the device: its wheel travels in ``.whl/`` (ignored by git through
``.git/info/exclude``), fetched here with
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl mlcommons-loadgen==6.0.17
and installed by this script when ``import mlperf_loadgen`` fails.

Run on the device from the repo root (carry ``.whl``), after building the speed engine:
    PYTHONPATH=src python3 -m bertrt.cli build --random large --out /tmp/large-fp16   # or any engine
    BERTRT_COMMIT=<sha> PYTHONPATH=src python3 benchmarks/device_loadgen.py --engine /tmp/large-fp16 \\
        --data shared/data/dev-v1.1.json --out $OUT

Steps, in priority order (a step that would overrun ``--budget`` is skipped and says so):
1. bertrt backend on the engine: Offline, Server (target 4500 samples/s, p99 <= 130 ms) and
   SingleStream, each with ``--duration`` (default 60 s; MLPerf's own runs last 600 s).
2. Accuracy mode on the held-out articles 32-47 of SQuAD dev with the embedded default model,
   bertrt backend (engine built in memory, fp16), then the pytorch backend on the same model.
3. The peers on the engine's weights, ``--peer-duration`` each: pytorch (Hugging Face fp16,
   padded) Offline and SingleStream; onnxruntime Offline with its CUDA provider where it exists,
   else Offline and SingleStream on the CPU provider (fp32, the host's cores).

Writes ``loadgen.json.gz`` (every report with its LoadGen summary text) and
``loadgen_summaries.txt`` (the summaries one after another) into ``--out``, and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import importlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch


def ensure_loadgen(wheels: Path) -> str:
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError:
        found = sorted(glob.glob(str(wheels / "mlcommons_loadgen-*.whl")))
        if not found:
            sys.exit(f"mlperf_loadgen is not installed and no wheel is in {wheels}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", found[-1]], check=True)
        importlib.invalidate_caches()
    from importlib.metadata import version

    return version("mlcommons-loadgen")


def watch_compiles(start: float) -> list:
    """Every Triton compile (or disk-cache load) from now on: [seconds since start, kernel]. A
    compile inside a timed run is a latency spike; this names the kernel."""
    compiles: list = []
    try:
        from triton import knobs
    except ImportError:
        return compiles

    def hook(*args, **kwargs):
        compiles.append([round(time.monotonic() - start, 3), str(kwargs.get("repr", args[:1]))[:300]])
        return False  # go on and compile

    knobs.runtime.jit_cache_hook = hook
    return compiles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, help="engine folder (random BERT-Large fp16 for speed)")
    p.add_argument("--data", default="shared/data/dev-v1.1.json")
    p.add_argument("--vocab", default=None,
                   help="vocab.txt for an engine without one (default: the embedded model's)")
    p.add_argument("--out", default=".", help="where the two result files go ($OUT)")
    p.add_argument("--wheels", default=".whl", help="folder with the mlcommons-loadgen wheel")
    p.add_argument("--duration", type=float, default=60.0, help="min duration of each bertrt run (s)")
    p.add_argument("--peer-duration", type=float, default=15.0, help="min duration of each peer run (s)")
    p.add_argument("--offline-qps", type=float, default=5500.0, help="Offline expected samples/s (bertrt)")
    p.add_argument("--server-qps", default="4500",
                   help="Server target samples/s; several, comma-separated and highest first, are tried in turn "
                        "until one is VALID (each a run of --duration)")
    p.add_argument("--server-latency-ms", type=float, default=130.0)
    p.add_argument("--single-stream-ms", type=float, default=1.0, help="SingleStream expected latency")
    p.add_argument("--peer-offline-qps", type=float, default=2000.0)
    p.add_argument("--ort-cpu-qps", type=float, default=4.0, help="expected samples/s of onnxruntime on the CPU")
    p.add_argument("--ort-cpu-count", type=int, default=64, help="QSL size (and least samples) for those runs")
    p.add_argument("--accuracy-model", default=None, help="checkpoint for accuracy mode (default: embedded)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole script")
    p.add_argument("--skip", default="", help="comma-separated step names to skip")
    p.add_argument("--graph-max-tokens", type=int, default=None,
                   help="largest batch replaying the engine's CUDA graphs (default the harness's 4096)")
    args = p.parse_args()

    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/bertrt-loadgen")  # LoadGen's full logs stay here; only summaries come back
    from bertrt.harness.perf import environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {"loadgen": ensure_loadgen(Path(args.wheels)), **environment(device)}
    print(json.dumps(env), flush=True)

    from bertrt.harness.loadgen import BackendName, HarnessOptions, Mode, Scenario
    from bertrt.harness.loadgen.report import format_table
    from bertrt.harness.loadgen.runner import prepare, run_test

    base = HarnessOptions(data=Path(args.data), engine=Path(args.engine), device="cuda",
                          vocab=Path(args.vocab) if args.vocab else None, graph_max_tokens=args.graph_max_tokens)
    skip = set(filter(None, args.skip.split(",")))
    compiles = watch_compiles(start)
    results, reports = [], []
    prepared: dict[str, tuple] = {}

    def step(name: str, estimate_s: float, options: HarnessOptions, key: str) -> dict | None:
        left = args.budget - (time.monotonic() - start)
        if name in skip or estimate_s > left:
            why = "skipped by --skip" if name in skip else f"skipped: needs ~{estimate_s:.0f} s, {left:.0f} s left"
            print(f"[{name}] {why}", flush=True)
            results.append({"step": name, "skipped": why})
            return
        options = dataclasses.replace(options, out=work / name)
        t0 = time.monotonic()
        try:
            if key not in prepared:
                prepared[key] = prepare(options)
            run_started = time.monotonic() - start  # the SUT's batch trace counts from about here
            report = run_test(options, *prepared[key])
            report["step"] = name
            report["run_started_s"] = round(run_started, 3)
            report["wall_s"] = round(time.monotonic() - t0, 1)
            report["summary_text"] = (options.out / "mlperf_log_summary.txt").read_text()
            if (options.out / "batches.json").is_file():  # the SUT's per-batch trace, kept in the one
                # results file: the device hands back only about 8 files per call
                report["batch_trace"] = json.loads((options.out / "batches.json").read_text())
            results.append(report)
            reports.append(report)
            print(format_table([report]), flush=True)
        except Exception as exc:  # one failing step must not lose the others
            traceback.print_exc()
            results.append({"step": name, "error": f"{type(exc).__name__}: {exc}"})
            report = None
        print(f"[{name}] {time.monotonic() - t0:.1f} s, {time.monotonic() - start:.0f} s elapsed", flush=True)
        save()  # after every step: a run killed later keeps what it measured
        return report

    def save() -> None:
        # Gzipped: the batch traces make it megabytes, and every committed byte travels with each
        # later device call (64 MiB at most; a 9 MB results file once pushed a call over).
        (out / "loadgen.json.gz").write_bytes(gzip.compress(json.dumps(
            {"env": env, "durations_s": {"bertrt": args.duration, "peers": args.peer_duration},
             "results": results, "triton_compiles": compiles}).encode()))
        (out / "loadgen_summaries.txt").write_text("".join(
            f"##### {r['step']} ({r['backend']}, {r['scenario']}, {r['mode']})\n{r['summary_text']}\n"
            for r in reports))

    d, pd = args.duration, args.peer_duration
    step("bertrt_offline", d + 40, dataclasses.replace(
        base, scenario=Scenario.OFFLINE, target_qps=args.offline_qps, min_duration_s=d), "bertrt")
    server_rates = [float(r) for r in str(args.server_qps).split(",") if r.strip()]
    for i, rate in enumerate(server_rates):  # highest first, until one is VALID
        report = step("bertrt_server" if i == 0 else f"bertrt_server_{rate:g}", d + 20, dataclasses.replace(
            base, scenario=Scenario.SERVER, target_qps=rate, target_latency_ms=args.server_latency_ms,
            min_duration_s=d), "bertrt")
        if report is None or report.get("valid"):
            break
    step("bertrt_singlestream", d + 10, dataclasses.replace(
        base, scenario=Scenario.SINGLE_STREAM, target_latency_ms=args.single_stream_ms, min_duration_s=d),
        "bertrt")
    prepared.pop("bertrt", None)
    torch.cuda.empty_cache()

    # Held-out articles only: the default model was trained on 0-31, so full-dev F1 would flatter it.
    accuracy = HarnessOptions(data=Path(args.data), model=args.accuracy_model, mode=Mode.ACCURACY, device="cuda",
                              articles=slice(32, 48))
    step("accuracy_bertrt", 40, accuracy, "acc-bertrt")
    prepared.pop("acc-bertrt", None)
    step("accuracy_pytorch", 60, dataclasses.replace(accuracy, backend=BackendName.PYTORCH), "acc-pytorch")
    prepared.pop("acc-pytorch", None)

    peer = dataclasses.replace(base, min_duration_s=pd)
    step("pytorch_offline", pd + 60, dataclasses.replace(
        peer, backend=BackendName.PYTORCH, scenario=Scenario.OFFLINE, target_qps=args.peer_offline_qps), "pytorch")
    step("pytorch_singlestream", pd + 10, dataclasses.replace(
        peer, backend=BackendName.PYTORCH, scenario=Scenario.SINGLE_STREAM, target_latency_ms=10.0), "pytorch")
    prepared.pop("pytorch", None)
    torch.cuda.empty_cache()
    try:
        import onnxruntime as ort

        has_cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        has_cuda_ort = False
    if has_cuda_ort:
        step("onnxruntime_offline", pd + 90, dataclasses.replace(
            peer, backend=BackendName.ONNXRUNTIME, scenario=Scenario.OFFLINE, target_qps=args.peer_offline_qps),
            "onnxruntime")
    else:
        # Only the CPU provider here (onnxruntime-gpu is far over the carry limit): BERT-Large fp32
        # on the host's cores, at a target rate that keeps the run near --peer-duration.
        results.append({"step": "onnxruntime_offline", "skipped": "onnxruntime with CUDAExecutionProvider "
                                                                   "is not installed on this machine"})
        # A small QSL and min_query_count keep LoadGen from asking for the official minimum
        # (mlperf.conf's bert Offline query is the whole dev set; SingleStream 1024 queries).
        cpu = dataclasses.replace(peer, backend=BackendName.ONNXRUNTIME, device="cpu", count=args.ort_cpu_count)
        step("onnxruntime_cpu_offline", pd + 90, dataclasses.replace(
            cpu, scenario=Scenario.OFFLINE, target_qps=args.ort_cpu_qps, min_query_count=args.ort_cpu_count),
            "onnxruntime-cpu")
        step("onnxruntime_cpu_singlestream", pd + 20, dataclasses.replace(
            cpu, scenario=Scenario.SINGLE_STREAM, target_latency_ms=1000.0 / args.ort_cpu_qps,
            min_query_count=16), "onnxruntime-cpu")

    save()
    print(f"\nmin duration {d:g} s for bertrt runs, {pd:g} s for peers (MLPerf runs last 600 s)")
    print(format_table(reports))
    for r in results:
        if "skipped" in r or "error" in r:
            print(f"{r['step']}: {r.get('skipped') or r.get('error')}")
    print(f"total {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
