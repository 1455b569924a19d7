"""`bertrt serve` under load: SQuAD dev questions at rising request rates, against the Hugging Face
pipeline behind FastAPI; throughput and p50/p99 per rate, as JSON and a plot of p99 against offered load.

Servers and load generator run on one machine's loopback. Steps:
1. The engine's own SQuAD-workload throughput: every question's windows through the model in
   token-budget batches, in this process, no HTTP (questions/s): the ceiling the server is held to.
2. ``bertrt serve`` started on loopback; for each ``--rates`` value Locust (headless, FastHttpUser,
   ``constant_throughput`` per user, enough users that each may take ``--user-slack-s`` per request)
   offers that many requests/s for ``--duration-s``; its stats give achieved requests/s and
   p50/p99, the server's /metrics the batch sizes.
3. The baseline (benchmarks/hf_qa_server.py: the Hugging Face pipeline behind FastAPI, one request at
   a time) on the same weights and questions, at ``--baseline-rates``.

On the GPU (random-weight BERT-Large fp16; serve's and Locust's wheels, built for the device's
Python, travel in ``.whl/`` and are installed from there when an import fails):

    python3 benchmarks/serve_load.py --random large --data shared/data/dev-v1.1.json --out $OUT \\
        --rates 500,1000,2000,3000,3500,4000 --baseline-rates 20,50,100 --duration-s 30 --processes 8

On the CPU (what the test runs): ``--model TINY_HF_FOLDER --device cpu --rates 2,4 --duration-s 2``.

Writes ``serve_load.json`` and ``serve_load_p99.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
P99_TARGET_MS = 130.0


def _ensure_packages() -> None:
    """Install serve's packages from ``.whl/`` when they are missing (the device has no network)."""
    try:
        import fastapi  # noqa: F401
        import locust  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        wheels = REPO / ".whl"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                        "fastapi", "uvicorn", "prometheus-client", "locust", "httpx"], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def prepare_model(args, out: Path) -> tuple[Path, Path | None]:
    """(HF folder for the baseline and the CPU server, engine folder for the GPU server or None)."""
    from bertrt.weights import load_checkpoint, random_checkpoint, save_hf_folder

    folder = out / "model"
    if args.random:
        from bertrt.config import STANDARD_CONFIGS

        vocab = load_checkpoint(None).vocab_file  # the embedded model's uncased vocabulary
        checkpoint = dataclasses.replace(random_checkpoint(STANDARD_CONFIGS[args.random]), vocab_file=vocab)
        save_hf_folder(checkpoint, folder)
    else:
        folder = Path(args.model)
    engine = None
    if args.device != "cpu" and _has_cuda():
        engine = out / "engine"
        subprocess.run([sys.executable, "-m", "bertrt.cli", "build", "--model", str(folder), "--out", str(engine),
                        "--precision", args.precision], check=True)
    return folder, engine


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_questions(path: Path, count: int | None) -> list[dict]:
    from bertrt.tasks.squad import read_squad

    examples = read_squad(path)[:count]
    return [{"question": e.question, "context": e.context} for e in examples]


def engine_throughput(model: Path, engine: Path | None, device: str, questions: list[dict],
                      max_batch_tokens: int) -> dict:
    """Questions/s of the model alone on the questions' windows, packed into token-budget batches."""
    import numpy as np

    from bertrt.serve.model import ServedModel
    from bertrt.tasks.qa import qa_features

    served = ServedModel.load(None if engine else model, engine=engine, device=device)
    served.warm_up()
    windows = [(np.asarray(f.input_ids, np.int32), np.asarray(f.token_type_ids, np.int32))
               for q in questions for f in qa_features(served.tokenizer, q["question"], q["context"],
                                                       config=served.features)[1]]
    budget = min(max_batch_tokens, getattr(served.runner, "max_tokens", None) or max_batch_tokens)
    limit = getattr(served.runner, "max_batch", None) or len(windows)
    batches, current, tokens = [], [], 0
    for w in windows:
        if current and (tokens + len(w[0]) > budget or len(current) == limit):
            batches.append(current)
            current, tokens = [], 0
        current.append(w)
        tokens += len(w[0])
    batches.append(current)
    for batch in batches[:3]:  # first-call costs of these shapes
        served.run("qa", [w[0] for w in batch], [w[1] for w in batch]).result()
    start = time.perf_counter()
    for batch in batches:
        served.run("qa", [w[0] for w in batch], [w[1] for w in batch]).result()
    seconds = time.perf_counter() - start
    info = dataclasses.asdict(served.info)
    del served
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - CPU-only torch
        pass
    return {"questions": len(questions), "windows": len(windows), "batches": len(batches), "seconds": seconds,
            "questions_per_s": len(questions) / seconds, "model": info}


class Server:
    """A server process on loopback, started and awaited until /ready, stopped with SIGTERM."""

    def __init__(self, command: list[str], port: int, log: Path, ready_timeout_s: float):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                         [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])})
        deadline = time.monotonic() + ready_timeout_s
        while _get(self.url + "/ready", 2)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command[2:4]} did not become ready; see {log}")
            time.sleep(0.5)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _metric_sums(url: str) -> dict[str, float]:
    _, text = _get(url + "/metrics")
    sums = {}
    for line in text.splitlines():
        for name in ("bertrt_batch_sequences_sum", "bertrt_batch_sequences_count", "bertrt_batch_tokens_sum"):
            if line.startswith(name + '{kind="qa"}'):
                sums[name] = float(line.rsplit(" ", 1)[1])
    return sums


def run_rate(url: str, rate: float, args, questions_file: Path, csv_prefix: Path) -> dict:
    """Offer ``rate`` requests/s for ``args.duration_s`` with Locust headless; its aggregated stats."""
    users = max(1, math.ceil(rate * args.user_slack_s))
    before = _metric_sums(url)
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "serve_locustfile.py"), "--headless",
               "--host", url, "-u", str(users), "-r", str(users), "--run-time", f"{args.duration_s}s",
               "--csv", str(csv_prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    env = {**os.environ, "BERTRT_QUESTIONS": str(questions_file), "BERTRT_USER_RPS": str(rate / users)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.duration_s + 120)
    stats = _aggregated(Path(f"{csv_prefix}_stats.csv"))
    if stats is None:
        raise RuntimeError(f"locust wrote no stats at {rate} requests/s:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    row = {"offered_rps": rate, "users": users, "requests": int(stats["Request Count"]),
           "failures": int(stats["Failure Count"]), "achieved_rps": float(stats["Requests/s"]),
           "p50_ms": float(stats["50%"]), "p90_ms": float(stats["90%"]), "p99_ms": float(stats["99%"]),
           "mean_ms": float(stats["Average Response Time"]), "errors": _errors(Path(f"{csv_prefix}_failures.csv"))}
    after = _metric_sums(url)
    batches = after.get("bertrt_batch_sequences_count", 0) - before.get("bertrt_batch_sequences_count", 0)
    if batches > 0:
        row["mean_batch_windows"] = (after["bertrt_batch_sequences_sum"] - before.get("bertrt_batch_sequences_sum", 0)) / batches
        row["mean_batch_tokens"] = (after["bertrt_batch_tokens_sum"] - before.get("bertrt_batch_tokens_sum", 0)) / batches
    print(f"  {rate:8.1f} req/s offered: {row['achieved_rps']:8.1f} achieved, p50 {row['p50_ms']:7.1f} ms, "
          f"p99 {row['p99_ms']:7.1f} ms, {row['failures']} failures", flush=True)
    return row


def _aggregated(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return row
    return None


def _errors(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(f)}


def best_within_target(rows: list[dict]) -> float:
    """The highest achieved requests/s among the rates whose p99 met the target without failures."""
    ok = [r["achieved_rps"] for r in rows if r["p99_ms"] <= P99_TARGET_MS and r["failures"] == 0]
    return max(ok, default=0.0)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("bertrt", "bertrt serve", "o-"), ("baseline", "HF pipeline + FastAPI", "s--")):
        rows = report.get(key) or []
        if rows:
            ax.plot([r["offered_rps"] for r in rows], [r["p99_ms"] for r in rows], style, label=label)
    ax.axhline(P99_TARGET_MS, color="grey", lw=0.8, ls=":", label=f"p99 {P99_TARGET_MS:g} ms")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"SQuAD dev questions, {report['conditions']['model']} on {report['conditions']['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face QA folder (the baseline loads it too)")
    source.add_argument("--random", choices=("base", "large", "minilm"), help="random weights of a standard shape")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev-v1.1.json")
    p.add_argument("--count", type=int, default=None, help="first N questions (default all)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp16", help="engine precision on the GPU")
    p.add_argument("--rates", default="500,1000,2000,3000,4000", help="offered requests/s, comma-separated")
    p.add_argument("--baseline-rates", default="20,50,100", help="offered requests/s for the baseline ('' skips it)")
    p.add_argument("--duration-s", type=int, default=30)
    p.add_argument("--user-slack-s", type=float, default=0.5,
                   help="users per rate = rate x this: each user may wait this long per request and still offer its share")
    p.add_argument("--processes", type=int, default=1, help="Locust worker processes (several for > ~1000 req/s)")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--ready-timeout-s", type=float, default=900)
    args = p.parse_args(argv)

    _ensure_packages()
    sys.path.insert(0, str(REPO / "src"))
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",") if r]
    baseline_rates = [float(r) for r in args.baseline_rates.split(",") if r]
    questions = load_questions(args.data, args.count)
    questions_file = args.out / "questions.json"
    questions_file.write_text(json.dumps(questions))
    model, engine = prepare_model(args, args.out)
    device = "cuda" if engine is not None else "cpu"

    print(f"engine alone on {len(questions)} questions ...", flush=True)
    alone = engine_throughput(model, engine, device, questions, args.max_batch_tokens)
    print(f"  {alone['questions_per_s']:.1f} questions/s", flush=True)
    report = {"conditions": {"model": f"random BERT-{args.random}" if args.random else Path(model).name,
                             "precision": alone["model"]["precision"], "device": _device_name(device),
                             "host": platform.node(), "questions": len(questions), "duration_s": args.duration_s,
                             "max_batch_tokens": args.max_batch_tokens, "max_delay_ms": args.max_delay_ms,
                             "locust_processes": args.processes, "p99_target_ms": P99_TARGET_MS},
              "engine_alone": alone, "bertrt": [], "baseline": []}

    port = _free_port()
    serve = [sys.executable, "-m", "bertrt.cli", "serve", "--port", str(port), "--device", device,
             "--max-batch-tokens", str(args.max_batch_tokens), "--max-delay-ms", str(args.max_delay_ms),
             "--log-level", "warning", *(["--engine", str(engine)] if engine else ["--model", str(model)])]
    print("bertrt serve ...", flush=True)
    server = Server(serve, port, args.out / "bertrt_serve.log", args.ready_timeout_s)
    try:
        for rate in rates:
            report["bertrt"].append(run_rate(server.url, rate, args, questions_file, args.out / "csv" / f"bertrt_{rate:g}"))
    finally:
        report["bertrt_exit_code"] = server.stop()

    if baseline_rates:
        port = _free_port()
        print("baseline: HF pipeline behind FastAPI ...", flush=True)
        base = Server([sys.executable, str(HERE / "hf_qa_server.py"), "--model", str(model), "--port", str(port),
                       "--device", device], port, args.out / "baseline.log", args.ready_timeout_s)
        try:
            for rate in baseline_rates:
                report["baseline"].append(run_rate(base.url, rate, args, questions_file,
                                                   args.out / "csv" / f"baseline_{rate:g}"))
        finally:
            base.stop()

    best, best_base = best_within_target(report["bertrt"]), best_within_target(report["baseline"])
    report["summary"] = {
        "bertrt_rps_within_p99_target": best, "baseline_rps_within_p99_target": best_base,
        "share_of_engine_alone": best / alone["questions_per_s"] if alone["questions_per_s"] else None,
        "times_baseline": best / best_base if best_base else None,
        "server_5xx": sum(n for r in report["bertrt"] for e, n in r["errors"].items() if "HTTP 5" in e)}
    (args.out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "serve_load_p99.png")
    print(json.dumps(report["summary"], indent=2))
    return 0


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.exit(main())
