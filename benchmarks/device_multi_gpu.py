"""LoadGen and Ray Serve on one GPU and on two of a 2-GPU H200 host, each pair in the same run.

Steps, in priority order (a step that would overrun ``--budget`` is skipped and says so):
1. A random-weight BERT-Large fp16 engine (``bertrt build``, on cuda:0) with ``--vocab`` (default
   the embedded model's vocabulary), unless ``--engine`` names one built earlier.
2. LoadGen, bertrt backend on that engine: Offline and Server (p99 <= ``--server-latency-ms``,
   130 by default, at ``--server-qps-per-gpu`` x GPUs) on cuda:0 alone, then on cuda:0,cuda:1
   (``--devices``: one engine per GPU loaded from the same folder, fed from one SUT queue), each
   ``--duration`` seconds; every report keeps its per-device samples, batches and busy seconds.
3. ``bertrt serve --ray --replicas 1`` then ``--replicas 2``, ``--num-gpus-per-replica 1``, each
   under open-loop load at ``--serve-rates`` (``serve_load.offer_rate``: SQuAD dev questions, achieved
   requests/s and p50/p99 per rate).

Writes ``--json`` (``multi_gpu.json``: environment with every GPU, ``--commit``, each step's report
or why it was skipped) into ``--out`` after every step, and prints a table.

The device has none of LoadGen, Ray Serve or Locust: they travel as wheels for the device's Python
(README of the device tool: ``pip download --no-deps --only-binary=:all: --python-version 3.12
... -d .whl``): mlcommons-loadgen, ray with the serve extra's requirements (fastapi, uvicorn,
starlette, aiohttp and its parts, grpcio, msgpack, protobuf, ...), locust and its own (gevent,
greenlet, flask, ...). One call carries 64 MiB with the working tree, which is ~50 MB with the
embedded default model and ~6 MB without: for these calls move ``src/bertrt/models/default`` out
of the tree (this script reads only its vocab.txt, which ``scripts/prepare_device_carry.sh`` puts
in ``.carry/``). Ray's wheel alone is ~79 MB, so it goes in two parts over two calls of one warm
machine (the second call follows the first within its warm time, and /tmp stays between them);
LoadGen runs in the first call, which needs no Ray, and serving in the second, on the engine the
first built (each call stays within its 10 minutes):

    split -b 40M ray-*.whl .whl-ray/ray.whl.part-   # here, the ray wheel kept out of .whl/;
                                                     # .whl-ray/ and .whl-lg/ in .git/info/exclude
    # call 1, carry .whl-ray/ray.whl.part-aa, .whl-lg (mlcommons-loadgen) and .carry:
    mkdir -p /tmp/wheels && cp .whl-ray/* /tmp/wheels/ \\
      && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl-lg/*.whl \\
      && PYTHONPATH=/tmp/site:src python3 benchmarks/device_multi_gpu.py --skip serve \\
           --data .carry/dev-v1.1.json --vocab .carry/vocab.txt --out $OUT --commit $(cat .carry/sha)
    # call 2, carry .whl-ray/ray.whl.part-ab, .whl (ray's and locust's requirements) and .carry:
    cp .whl-ray/* /tmp/wheels/ \\
      && cat /tmp/wheels/ray.whl.part-* > /tmp/wheels/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl \\
      && rm /tmp/wheels/ray.whl.part-* \\
      && python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/wheels/*.whl .whl/*.whl \\
      && PYTHONPATH=/tmp/site:src python3 benchmarks/device_multi_gpu.py --skip loadgen \\
           --engine /tmp/bertrt-multi-gpu/large-fp16 --data .carry/dev-v1.1.json --json multi_gpu_serve.json \\
           --out $OUT --commit $(cat .carry/sha)

(the part names come from ``split``; the joined wheel takes the file name pip downloaded).

On a CPU, ``--dry-run`` runs every step at toy size: a tiny random BERT instead of BERT-Large,
``cpu`` and ``cpu,cpu`` for one and two GPUs, CPU replicas (``--num-gpus-per-replica 0``), short
runs at low rates; its figures mean nothing, it checks the plumbing (tests/benchmarks/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # serve_load's pieces

import serve_load  # noqa: E402


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("mlcommons-loadgen", "ray", "locust", "fastapi", "uvicorn"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def gpus() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]


def random_model(folder: Path, vocab: Path, *, dry_run: bool) -> Path:
    """A random BERT with a QA head and ``vocab``, as a Hugging Face folder: BERT-Large, or for a
    dry run 2 layers of hidden 64."""
    from bertrt.config import STANDARD_CONFIGS, BertConfig
    from bertrt.weights import random_checkpoint, save_hf_folder

    config = (BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
              if dry_run else STANDARD_CONFIGS["large"])
    checkpoint = dataclasses.replace(random_checkpoint(config, heads=("qa",), std=0.2 if dry_run else 0.02),
                                     vocab_file=vocab)
    return save_hf_folder(checkpoint, folder)


def build_engine(model: Path, out: Path) -> Path:
    """``bertrt build`` of ``model`` at fp16 on the current GPU (kernels timed as any build does)."""
    import subprocess

    subprocess.run([sys.executable, "-m", "bertrt.cli", "build", "--model", str(model), "--out", str(out),
                    "--precision", "fp16", "--overwrite"], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / ".carry" / "dev-v1.1.json", help="SQuAD v1.1 dev json")
    p.add_argument("--out", type=Path, required=True, help="where the results file goes ($OUT)")
    p.add_argument("--json", default="multi_gpu.json", help="the results file's name (default multi_gpu.json)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bertrt-multi-gpu"),
                   help="engine, model, LoadGen logs, server logs (only multi_gpu.json comes back)")
    p.add_argument("--engine", type=Path, help="an engine built earlier (default: build random BERT-Large fp16)")
    p.add_argument("--vocab", type=Path, help="vocab.txt of the random model (default: the embedded model's)")
    p.add_argument("--commit", help="the source's commit (default BERTRT_COMMIT, else git)")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks the plumbing only")
    p.add_argument("--duration", type=float, default=30.0, help="min duration of each LoadGen run (s)")
    p.add_argument("--count", type=int, default=None, help="QSL size (default the whole dev set)")
    p.add_argument("--offline-qps-per-gpu", type=float, default=4500.0)
    p.add_argument("--server-qps-per-gpu", type=float, default=4000.0)
    p.add_argument("--server-latency-ms", type=float, default=130.0)
    p.add_argument("--serve-rates", default="1000,2000,4000,6000", help="offered requests/s, comma-separated")
    p.add_argument("--serve-duration", type=int, default=15, help="seconds per offered rate")
    p.add_argument("--serve-questions", type=int, default=2000, help="SQuAD questions the load clients draw from")
    p.add_argument("--client-processes", type=int, default=8, dest="locust_processes")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="each replica's batch budget")
    p.add_argument("--budget", type=float, default=560.0, help="seconds for the whole script")
    p.add_argument("--skip", default="", help="comma-separated step names (or prefixes: loadgen, serve) to skip")
    args = p.parse_args(argv)
    if args.dry_run:
        args.duration = min(args.duration, 0.5)
        args.count = args.count or 32
        args.offline_qps_per_gpu, args.server_qps_per_gpu, args.server_latency_ms = 20.0, 40.0, 10_000.0
        args.serve_rates, args.serve_duration, args.serve_questions = "2,4", 2, 40
        args.locust_processes = 1

    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from bertrt.harness.loadgen import HarnessOptions, Scenario
    from bertrt.harness.loadgen.report import format_table
    from bertrt.harness.loadgen.runner import prepare, run_test
    from bertrt.harness.perf import environment

    visible = gpus()
    if args.dry_run:
        one, two = ["cpu"], ["cpu", "cpu"]
    else:
        if not visible:
            sys.exit("no CUDA GPU is visible here: run with --dry-run to check the plumbing on a CPU")
        one, two = ["cuda:0"], ["cuda:0", "cuda:1"] if len(visible) >= 2 else None
    env = {**environment(torch.device(one[0]), commit=args.commit), "gpus": visible, "versions": versions(),
           "dry_run": args.dry_run}
    print(json.dumps(env), flush=True)
    skip = {s for s in args.skip.split(",") if s}
    results: list[dict] = []
    report = {"env": env, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "results": results}

    def save() -> None:
        (args.out / args.json).write_text(json.dumps(report, indent=1) + "\n")

    def wanted(name: str, estimate_s: float) -> bool:
        left = args.budget - (time.monotonic() - start)
        why = None
        if name in skip or name.split("_")[0] in skip:
            why = "skipped by --skip"
        elif estimate_s > left:
            why = f"skipped: needs ~{estimate_s:.0f} s, {left:.0f} s left"
        if why:
            print(f"[{name}] {why}", flush=True)
            results.append({"step": name, "skipped": why})
            save()
        return why is None

    def attempt(name: str, function) -> None:
        t0 = time.monotonic()
        try:
            row = function()
            results.append({"step": name, "wall_s": round(time.monotonic() - t0, 1), **row})
        except Exception as exc:  # one failing step must not lose the others
            traceback.print_exc()
            results.append({"step": name, "error": f"{type(exc).__name__}: {exc}"})
        print(f"[{name}] {time.monotonic() - t0:.1f} s, {time.monotonic() - start:.0f} s elapsed", flush=True)
        save()

    # 1. The model: an HF folder (the CPU reference, and what the GPU engine is built from) and the engine.
    engine, model = args.engine, None
    if args.dry_run or engine is None:
        vocab = args.vocab or REPO / "src" / "bertrt" / "models" / "default" / "vocab.txt"
        t0 = time.monotonic()
        model = random_model(args.work / ("tiny" if args.dry_run else "large"), vocab, dry_run=args.dry_run)
        if not args.dry_run:
            engine = build_engine(model, args.work / "large-fp16")
        results.append({"step": "build", "model": str(model), "engine": str(engine) if engine else None,
                        "wall_s": round(time.monotonic() - t0, 1)})
        save()

    # 2. LoadGen on one device, then on two (the engine's own vocab.txt tokenises the data).
    for devices in (one, two):
        n = len(devices) if devices else 2
        steps = [(f"loadgen_offline_{n}gpu", Scenario.OFFLINE, {"target_qps": args.offline_qps_per_gpu * n}),
                 (f"loadgen_server_{n}gpu", Scenario.SERVER, {"target_qps": args.server_qps_per_gpu * n,
                                                             "target_latency_ms": args.server_latency_ms})]
        if devices is None:
            results += [{"step": name, "skipped": f"only {len(visible)} GPU visible"} for name, _, _ in steps]
            continue
        # Dry runs: small batches, so that both CPU "devices" get some of the 32 samples.
        base = HarnessOptions(data=args.data, count=args.count, min_duration_s=args.duration, overwrite=True,
                              max_batch_tokens=1024 if args.dry_run else None,
                              engine=None if args.dry_run else engine, model=str(model) if args.dry_run else None,
                              **({"device": devices[0]} if n == 1 else {"devices": ",".join(devices)}))
        prepared: list = []

        def loadgen(options: HarnessOptions, devices=devices, prepared=prepared) -> dict:
            if not prepared:
                prepared.extend(prepare(options))  # the engines loaded and warmed up once per device list
            out = run_test(options, *prepared)
            print(format_table([out]), flush=True)
            for d in out["devices"]:
                print(f"  {d['device']}: {d['samples']} samples ({100 * d['share']:.0f}%), {d['batches']} batches, "
                      f"busy {d['busy_s']:.1f} s", flush=True)
            return {"devices_asked": devices, "report": out}

        for name, scenario, settings in steps:
            if wanted(name, args.duration + (30 if prepared else 90)):
                options = dataclasses.replace(base, scenario=scenario, out=args.work / name, **settings)
                attempt(name, lambda: loadgen(options))
        prepared.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # 3. bertrt serve --ray with one replica, then two.
    rates = [float(r) for r in args.serve_rates.split(",") if r]
    questions = serve_load.load_questions(args.data, args.serve_questions)
    questions_file = args.work / "questions.json"
    questions_file.write_text(json.dumps(questions))
    load_args = argparse.Namespace(duration_s=args.serve_duration, processes=args.locust_processes, connections=256,
                                   grace_s=5.0)
    for replicas in (1, 2):
        name = f"serve_ray_{replicas}replica"
        if replicas > 1 and two is None:
            results.append({"step": name, "skipped": f"only {len(visible)} GPU visible"})
            continue
        if not wanted(name, 90 + len(rates) * (args.serve_duration + 10)):
            continue
        attempt(name, lambda: serve_ray(args, replicas, model, engine, rates, load_args, questions_file))

    save()
    print(json.dumps([{k: r.get(k) for k in ("step", "skipped", "error", "wall_s")} for r in results], indent=1))
    print(f"total {time.monotonic() - start:.0f} s")
    return 0


def serve_ray(args, replicas: int, model: Path | None, engine: Path | None, rates: list[float], load_args,
              questions_file: Path) -> dict:
    """``bertrt serve --ray --replicas N`` started, loaded at each rate, and stopped; rows per rate."""
    port = serve_load._free_port()
    log = args.work / f"serve_ray_{replicas}.log"
    command = [sys.executable, "-m", "bertrt.cli", "serve", "--ray", "--replicas", str(replicas),
               "--num-gpus-per-replica", "0" if args.dry_run else "1", "--port", str(port),
               "--max-batch-tokens", str(args.max_batch_tokens), "--log-level", "warning",
               *(["--device", "cpu", "--model", str(model)] if args.dry_run else ["--engine", str(engine)])]
    print(f"bertrt serve --ray --replicas {replicas} ...", flush=True)
    server = serve_load.Server(command, port, log, "bertrt serve --ray", ready_timeout_s=600)
    try:
        # /ready answers once one replica is up; serve.run returns (and the command says so) once all are.
        deadline = time.monotonic() + 600
        while f"{replicas} replica(s) on" not in log.read_text(errors="replace"):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replicas did not all start; see {log}")
            time.sleep(0.5)
        work = args.work / "clients"
        work.mkdir(parents=True, exist_ok=True)
        rows = [serve_load.offer_rate(server, rate, 1, load_args, questions_file, work) for rate in rates]
    finally:
        code = server.stop()
    return {"replicas": replicas, "rates": rows, "exit_code": code,
            "best_rps_within_p99_target": serve_load.best_within_target(rows)}


if __name__ == "__main__":
    sys.exit(main())
