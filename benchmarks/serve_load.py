"""`bertrt serve` under load: SQuAD dev questions at rising offered rates, against the Hugging Face
model behind FastAPI; throughput and p50/p99 per rate, as JSON and a plot of p99 against offered load.

Servers and load generator run on one machine's loopback. Steps:
1. Per engine precision, the engine's own SQuAD-workload throughput: every question's windows
   through the same engine in the server's token-budget batches, in this process, no HTTP
   (questions/s): the ceiling the server is held to (the summary's ``share_of_engine``).
2. Per ``--sweep PRECISION/wWORKERS/kQUESTIONS[/MODE]=RATE,RATE,...``: ``bertrt serve --workers
   WORKERS [--model-process MODE]`` on that engine, and for each offered rate (questions/s) an open-loop load for ``--duration-s``:
   ``--processes`` client processes (``serve_client.py``, asyncio + aiohttp) send requests on a fixed
   schedule, each carrying QUESTIONS questions (``{"inputs": [...]}`` past one), and latency runs
   from each request's due time, so a slow server is charged for the queue it causes. A rate whose
   p99 passes ``--stop-p99-ms`` ends its sweep (the higher rates would only queue more).
3. The baseline (``hf_qa_server.py``: the Hugging Face model behind FastAPI, one request at a time,
   one question per request) at ``--baseline-rates``, after the first sweep.

``--budget-s`` bounds the whole run: a server or a rate that would end past it is skipped and
recorded as skipped. ``--client locust`` drives the rates with Locust instead (closed loop:
``constant_throughput`` users, one question per request), where Locust is installed.

On the GPU (random-weight BERT-Large; serve's wheels for the device's Python installed from .whl/):

    python3 benchmarks/serve_load.py --random large --data .carry/data/dev-v1.1.json --out $OUT \\
        --sweep fp16/w1/k1=500,1000,1500,2000 --sweep fp16/w4/k1=2000,3000,3500,4000 \\
        --baseline-rates 25,50,100 --duration-s 12 --processes 4 --budget-s 480 --commit SHA

On the CPU (what the test runs): ``--model TINY_HF_FOLDER --device cpu --sweep fp32/w1/k1=4,8
--baseline-rates 4 --duration-s 3``.

Writes into ``--out``: ``serve_load.json``, ``serve_load_p99.png`` and ``servers.log`` (the servers'
and builds' output); models, engines and the clients' raw results go to ``--work`` (a temporary
folder by default).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
P99_TARGET_MS = 130.0
SWEEP = re.compile(r"^(?P<precision>fp32|fp16|bf16|fp8|int8)/w(?P<workers>\d+)/k(?P<per_request>\d+)"
                   r"(/(?P<mode>shared|per-worker))?=(?P<rates>[\d.]+(,[\d.]+)*)$")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One server configuration and the offered rates (questions/s) it is driven at."""

    precision: str
    workers: int
    per_request: int
    rates: tuple[float, ...]
    model_process: str | None = None  # serve's --model-process (None: its default)

    @classmethod
    def parse(cls, text: str) -> "Sweep":
        m = SWEEP.match(text.strip())
        if m is None or int(m["workers"]) < 1 or int(m["per_request"]) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: expected PRECISION/wWORKERS/kQUESTIONS=RATE,RATE,... "
                                             "(e.g. fp16/w4/k1=1000,2000; "
                                             "fp16/w4/k1/per-worker=... picks serve's --model-process)")
        return cls(m["precision"], int(m["workers"]), int(m["per_request"]),
                   tuple(float(r) for r in m["rates"].split(",")), m["mode"])

    @property
    def name(self) -> str:
        mode = f"/{self.model_process}" if self.model_process else ""
        return f"{self.precision}/w{self.workers}/k{self.per_request}{mode}"


class Clock:
    """Seconds since the run started, against ``--budget-s``."""

    def __init__(self, budget_s: float | None):
        self.start, self.budget_s = time.monotonic(), budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fits(self, seconds: float) -> bool:
        return self.budget_s is None or self.elapsed() + seconds <= self.budget_s


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


def _raise_open_files_limit() -> None:
    """Open files up to the hard limit, for this process and the servers and clients it starts:
    an overloaded server holds a connection per waiting request."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
        if wanted > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass


def _env() -> dict[str, str]:
    """This process's environment with the checkout's src/ first on the path (kept: the rest of it,
    where wheels installed with --target live)."""
    path = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


def _run_logged(command: list[str], log: Path, what: str) -> None:
    with open(log, "a") as out:
        out.write(f"\n===== {what}: {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}); see {log}")


def prepare_model(args, work: Path) -> Path:
    """The Hugging Face folder that the builds, the CPU server and the baseline load."""
    if not args.random:
        return Path(args.model)
    import torch

    from bertrt.config import STANDARD_CONFIGS
    from bertrt.weights import load_checkpoint, random_checkpoint, save_hf_folder

    vocab = load_checkpoint(None).vocab_file  # the embedded model's uncased vocabulary
    checkpoint = dataclasses.replace(random_checkpoint(STANDARD_CONFIGS[args.random]), vocab_file=vocab)
    # fp16 on disk for a GPU run (half the bytes to write and read; every GPU path casts anyway).
    dtype = torch.float16 if args.gpu else None
    return save_hf_folder(checkpoint, work / "model", dtype=dtype)


def build_engine(model: Path, precision: str, args, work: Path, log: Path) -> Path:
    engine = work / f"engine-{precision}"
    command = [sys.executable, "-m", "bertrt.cli", "build", "--model", str(model), "--out", str(engine),
               "--precision", precision]
    if precision in ("fp8", "int8"):  # calibrated input scales: the fp32 reference over SQuAD windows
        command += ["--calib-data", str(args.data), "--calib-num", str(args.calib_num)]
    _run_logged(command, log, f"build {precision}")
    return engine


def load_questions(path: Path, count: int | None) -> list[dict]:
    from bertrt.tasks.squad import read_squad

    examples = read_squad(path)[:count]
    return [{"question": e.question, "context": e.context} for e in examples]


def question_windows(questions: list[dict], tokenizer, features) -> list[tuple]:
    import numpy as np

    from bertrt.tasks.qa import qa_features

    return [(np.asarray(f.input_ids, np.int32), np.asarray(f.token_type_ids, np.int32))
            for q in questions for f in qa_features(tokenizer, q["question"], q["context"], config=features)[1]]


def engine_throughput(model: Path, engine: Path | None, device: str, questions: list[dict], windows,
                      max_batch_tokens: int) -> dict:
    """Questions/s of the engine alone on the questions' windows (``windows``, or tokenised here),
    in arrival order, packed into the server's token-budget batches; no HTTP, no tokenising timed."""
    from bertrt.serve.model import ServedModel

    # As the server runs it: every batch up to the budget replays a CUDA graph.
    served = ServedModel.load(None if engine else model, engine=engine, device=device,
                              graph_max_tokens=max_batch_tokens)
    served.warm_up(max_batch_tokens)
    if windows is None:
        windows = question_windows(questions, served.tokenizer, served.features)
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
    # Two batches in flight, as the server's batcher keeps them: packing one overlaps the other.
    pending = None
    for batch in batches:
        launched = served.run("qa", [w[0] for w in batch], [w[1] for w in batch])
        if pending is not None:
            pending.result()
        pending = launched
    pending.result()
    seconds = time.perf_counter() - start
    info = dataclasses.asdict(served.info)
    del served
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - CPU-only torch
        pass
    alone = {"questions": len(questions), "windows": len(windows), "tokens": int(sum(len(w[0]) for w in windows)),
             "batches": len(batches), "max_batch_tokens": budget, "seconds": seconds,
             "questions_per_s": len(questions) / seconds, "windows_per_s": len(windows) / seconds, "model": info}
    return alone, windows


class Server:
    """A server process on loopback, started and awaited until /ready (and, with several workers,
    until each has logged its start-up), stopped with SIGTERM."""

    def __init__(self, command: list[str], port: int, log: Path, what: str, *, workers: int = 1,
                 ready_timeout_s: float = 600):
        self.url, self.log_path, self.started = f"http://127.0.0.1:{port}", log, time.monotonic()
        self.workers = workers
        self.log = open(log, "a")
        self.log.write(f"\n===== {what}: {' '.join(command)}\n")
        self.log.flush()
        self.offset = self.log.tell()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
        deadline = time.monotonic() + ready_timeout_s
        while _get(self.url + "/ready", 2)[0] != 200 or (workers > 1 and self._started_workers() < workers):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not become ready; see {log}")
            time.sleep(0.5)
        self.ready_s = time.monotonic() - self.started
        # With a shared model process (``--model-process shared``) the supervisor names its pid.
        with open(log, errors="replace") as f:
            f.seek(self.offset)
            found = re.search(r"model process \[(\d+)\] ready", f.read())
        self.model_pid = int(found.group(1)) if found else None

    def _started_workers(self) -> int:
        with open(self.log_path, errors="replace") as f:
            f.seek(self.offset)
            return f.read().count("Application startup complete")

    def cpu_seconds(self) -> dict[str, float] | None:
        """User + system CPU time so far of the server and all its processes ("total") and, with a
        shared model process, of that process alone ("model_process")."""
        try:
            import psutil
        except ImportError:
            return None
        try:
            root = psutil.Process(self.proc.pid)
            seconds = {"total": 0.0}
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                seconds["total"] += t.user + t.system
                if p.pid == self.model_pid:
                    seconds["model_process"] = t.user + t.system
            return seconds
        except psutil.Error:
            return None

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


def warm(url: str, questions: list[dict], count: int = 8) -> None:
    """A few answered questions before any rate: first-call costs (cuBLAS handles, allocator,
    lazy imports) stay out of the measured latencies, the baseline's and bertrt's alike."""
    import urllib.request

    for q in questions[:count]:
        request = urllib.request.Request(url + "/v1/qa", data=json.dumps(q).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()


def _metric_sums(url: str) -> dict[str, float]:
    _, text = _get(url + "/metrics")
    sums = {}
    for line in text.splitlines():
        for name in ("bertrt_batch_sequences_sum", "bertrt_batch_sequences_count", "bertrt_batch_tokens_sum"):
            if line.startswith(name + '{kind="qa"}'):
                sums[name] = float(line.rsplit(" ", 1)[1])
    return sums


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def offer_rate(server: Server, rate: float, per_request: int, args, questions_file: Path, work: Path) -> dict:
    """Offer ``rate`` questions/s (``rate / per_request`` requests/s) for ``args.duration_s`` from
    ``args.processes`` open-loop client processes; merged latencies, statuses and throughput."""
    requests_per_s = rate / per_request
    processes = max(1, min(args.processes, math.ceil(requests_per_s)))
    before, cpu_before = _metric_sums(server.url), server.cpu_seconds()
    start_at = time.time() + 1.0 + 0.2 * processes  # every client started and connected by then
    clients, outs = [], []
    for j in range(processes):
        out = work / f"client_{os.getpid()}_{rate:g}_{per_request}_{j}.json"
        outs.append(out)
        clients.append(subprocess.Popen(
            [sys.executable, str(HERE / "serve_client.py"), "--url", server.url, "--questions", str(questions_file),
             # One schedule, request i from process i mod P: the sends interleave, the count is exact.
             "--rate", str(requests_per_s), "--share", str(j), "--shares", str(processes),
             "--duration-s", str(args.duration_s), "--start-at", str(start_at), "--per-request", str(per_request),
             "--offset", str(j * 997), "--connections", str(args.connections),
             "--grace-s", str(args.grace_s), "--out", str(out)],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [c.communicate(timeout=args.duration_s + args.grace_s + 120)[0] for c in clients]
    cpu_after = server.cpu_seconds()
    results = []
    for c, out, log in zip(clients, outs, logs):
        if c.returncode != 0 or not out.is_file():
            raise RuntimeError(f"a load client failed ({c.returncode}) at {rate:g} questions/s:\n{log[-2000:]}")
        results.append(json.loads(out.read_text()))
    row = merge_clients(results, rate, per_request, float(args.duration_s))
    if cpu_before is not None and cpu_after is not None:
        # CPU-seconds per second: every process of the server, then the shared model process's share.
        row["server_cpu_cores"] = (cpu_after["total"] - cpu_before["total"]) / row["span_s"]
        if "model_process" in cpu_before and "model_process" in cpu_after:
            row["model_process_cpu_cores"] = (cpu_after["model_process"] - cpu_before["model_process"]) / row["span_s"]
    # Batch sizes from /metrics: one process's counts, so only for a server of one worker.
    after = _metric_sums(server.url) if server.workers == 1 else {}
    batches = after.get("bertrt_batch_sequences_count", 0) - before.get("bertrt_batch_sequences_count", 0)
    if batches > 0:
        for key, name in (("mean_batch_windows", "bertrt_batch_sequences_sum"),
                          ("mean_batch_tokens", "bertrt_batch_tokens_sum")):
            row[key] = (after[name] - before.get(name, 0)) / batches
    _print_row(row)
    return row


def merge_clients(results: list[dict], rate: float, per_request: int, duration_s: float) -> dict:
    """One offered rate's row from its client processes' result files (``serve_client.py --out``)."""
    requests_per_s = rate / per_request
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    statuses, errors = {}, {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    sent = sum(r["sent"] for r in results)
    span = max(r["span_s"] for r in results) or duration_s
    return {"offered_qps": rate, "offered_rps": requests_per_s, "questions_per_request": per_request,
            "client_processes": len(results), "requests": sent, "ok": len(latencies), "failures": sent - len(latencies),
            "statuses": statuses, "errors": errors,
            # Answered questions over the time from the first due request to the last answer: a server
            # that falls behind stretches the span, so this is below the offered rate.
            "achieved_qps": len(latencies) * per_request / span, "achieved_rps": len(latencies) / span,
            "span_s": span, "p50_ms": _percentile(latencies, 50), "p90_ms": _percentile(latencies, 90),
            "p99_ms": _percentile(latencies, 99), "max_ms": latencies[-1] if latencies else None,
            "mean_ms": sum(latencies) / len(latencies) if latencies else None,
            "client_send_lag_p99_ms": max(r["send_lag_ms"]["p99"] for r in results)}


def offer_rate_locust(server: Server, rate: float, args, questions_file: Path, work: Path) -> dict:
    """Offer ``rate`` requests/s (one question each) with Locust headless: closed-loop users."""
    users = max(1, math.ceil(rate * args.user_slack_s))
    csv_prefix = work / f"locust_{os.getpid()}_{rate:g}"
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "serve_locustfile.py"), "--headless",
               "--host", server.url, "-u", str(users), "-r", str(users), "--run-time", f"{int(args.duration_s)}s",
               "--csv", str(csv_prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    env = {**_env(), "BERTRT_QUESTIONS": str(questions_file), "BERTRT_USER_RPS": str(rate / users)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.duration_s + 120)
    stats = _aggregated(Path(f"{csv_prefix}_stats.csv"))
    if stats is None:
        raise RuntimeError(f"locust wrote no stats at {rate} requests/s:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    errors = _errors(Path(f"{csv_prefix}_failures.csv"))
    requests, failures = int(stats["Request Count"]), int(stats["Failure Count"])
    row = {"offered_qps": rate, "offered_rps": rate, "questions_per_request": 1, "users": users,
           "requests": requests, "ok": requests - failures, "failures": failures, "errors": errors,
           "statuses": {}, "achieved_qps": float(stats["Requests/s"]), "achieved_rps": float(stats["Requests/s"]),
           "p50_ms": float(stats["50%"]), "p90_ms": float(stats["90%"]), "p99_ms": float(stats["99%"]),
           "mean_ms": float(stats["Average Response Time"])}
    _print_row(row)
    return row


def _print_row(row: dict) -> None:
    p50 = f"{row['p50_ms']:7.1f}" if row["p50_ms"] is not None else "      -"
    p99 = f"{row['p99_ms']:7.1f}" if row["p99_ms"] is not None else "      -"
    cpu = ""
    if row.get("server_cpu_cores") is not None:
        cpu = f", server CPU {row['server_cpu_cores']:.1f} cores"
        if row.get("model_process_cpu_cores") is not None:
            cpu += f" (model process {row['model_process_cpu_cores']:.1f})"
    print(f"  {row['offered_qps']:8.1f} q/s offered: {row['achieved_qps']:8.1f} achieved, p50 {p50} ms, "
          f"p99 {p99} ms, {row['failures']} failures {row['errors'] or ''}{cpu}", flush=True)


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


def within_target(row: dict) -> bool:
    return row.get("p99_ms") is not None and row["p99_ms"] <= P99_TARGET_MS and row["failures"] == 0


def best_within_target(rows: list[dict]) -> float:
    """The highest achieved questions/s among the rates whose p99 met the target without failures."""
    return max((r["achieved_qps"] for r in rows if within_target(r)), default=0.0)


def run_sweep(server: Server, sweep: Sweep, args, clock: Clock, questions_file: Path, work: Path, rows: list[dict],
              save=lambda: None) -> list[dict]:
    """Each of ``sweep``'s rates in turn, appended to ``rows`` (``save()`` after each)."""
    for rate in sweep.rates:
        if not clock.fits(args.duration_s + args.grace_s + 5):
            rows.append({"offered_qps": rate, "skipped": "past --budget-s"})
            print(f"  {rate:8.1f} q/s skipped (budget)", flush=True)
            continue
        if args.client == "locust":
            row = offer_rate_locust(server, rate, args, questions_file, work)
        else:
            row = offer_rate(server, rate, sweep.per_request, args, questions_file, work)
        rows.append(row)
        save()
        if row["p99_ms"] is None or row["p99_ms"] > args.stop_p99_ms or row["failures"] > 0.01 * row["requests"]:
            for later in sweep.rates[sweep.rates.index(rate) + 1:]:
                rows.append({"offered_qps": later, "skipped": f"the rate before passed p99 {args.stop_p99_ms:g} ms "
                                                              "or 1% failures"})
            break
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [(f"bertrt {s['precision']}, {s['workers']} worker{'s' if s['workers'] > 1 else ''}, "
               f"{s['questions_per_request']} question{'s' if s['questions_per_request'] > 1 else ''}/request",
               s["rows"], "o-") for s in report["sweeps"]]
    series.append(("HF model + FastAPI (baseline)", report["baseline"], "s--"))
    top = 0.0
    for label, rows, style in series:
        rows = [r for r in rows if "skipped" not in r and r.get("p99_ms") is not None]
        if not rows:
            continue
        x = [r["offered_qps"] for r in rows]
        line, = lat.plot(x, [r["p99_ms"] for r in rows], style, label=label)
        thr.plot(x, [r["achieved_qps"] for r in rows], style, color=line.get_color(), label=label)
        top = max(top, *x)
    for precision, alone in report["engine_alone"].items():
        thr.axhline(alone["questions_per_s"], ls=":", lw=1, color="black")
        thr.annotate(f"engine alone, {precision}", (0, alone["questions_per_s"]), fontsize=8,
                     xytext=(4, 3), textcoords="offset points")
    if top:
        thr.plot([0, top], [0, top], color="grey", lw=0.6, ls="--", label="achieved = offered")
    lat.axhline(P99_TARGET_MS, color="red", lw=1, ls=":", label=f"p99 target {P99_TARGET_MS:g} ms")
    lat.set_yscale("log")
    lat.set(xlabel="offered load (questions/s)", ylabel="p99 latency (ms)")
    thr.set(xlabel="offered load (questions/s)", ylabel="achieved (questions answered/s)")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    c = report["conditions"]
    fig.suptitle(f"bertrt serve, SQuAD v1.1 dev questions: {c['model']} on {c['device_name']} (loopback clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(report: dict) -> dict:
    base_rows = [r for r in report["baseline"] if "skipped" not in r]
    best_base = best_within_target(base_rows)
    base_capacity = max((r["achieved_qps"] for r in base_rows), default=0.0)
    sweeps = {}
    for s in report["sweeps"]:
        rows = [r for r in s["rows"] if "skipped" not in r]
        best = best_within_target(rows)
        alone = report["engine_alone"].get(s["precision"], {}).get("questions_per_s")
        sweeps[s["name"]] = {
            "qps_within_p99_target": best,
            "engine_alone_qps": alone,
            "share_of_engine": best / alone if alone else None,
            "times_baseline": best / best_base if best_base else None,
            "times_baseline_capacity": best / base_capacity if base_capacity else None,
            "server_5xx": sum(n for r in rows for code, n in r.get("statuses", {}).items() if code.startswith("5"))}
    return {"p99_target_ms": P99_TARGET_MS, "baseline_qps_within_p99_target": best_base,
            "baseline_capacity_qps": base_capacity, "sweeps": sweeps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face QA folder (the baseline loads it too)")
    source.add_argument("--random", choices=("base", "large", "minilm"), help="random weights of a standard shape")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev-v1.1.json",
                   help="SQuAD v1.1 dev json (the questions, and the fp8/int8 calibration windows)")
    p.add_argument("--count", type=int, default=None, help="first N questions (default all)")
    p.add_argument("--out", type=Path, required=True, help="where the report, plot and server log go")
    p.add_argument("--work", type=Path, default=None, help="models, engines, client results (default: a temp dir)")
    p.add_argument("--device", default="auto")
    p.add_argument("--sweep", type=Sweep.parse, action="append", default=None, metavar="P/wN/kK=R,R,...",
                   help="engine precision P (fp32 on the CPU), N server workers, K questions per request, offered "
                        "questions/s; repeat for several (default fp16/w1/k1=500,1000,2000,3000,4000)")
    p.add_argument("--baseline-rates", default="25,50,100", help="offered requests/s for the baseline ('' skips it)")
    p.add_argument("--duration-s", type=float, default=15)
    p.add_argument("--grace-s", type=float, default=10,
                   help="after the last send, how long answers are awaited before they count as failures")
    p.add_argument("--stop-p99-ms", type=float, default=1000, help="a rate past this p99 ends its sweep")
    p.add_argument("--budget-s", type=float, default=None, help="skip what would end past this many seconds")
    p.add_argument("--client", choices=("asyncio", "locust"), default="asyncio")
    p.add_argument("--processes", type=int, default=4, help="load client processes (Locust: its workers)")
    p.add_argument("--connections", type=int, default=512, help="open connections per client process at most")
    p.add_argument("--user-slack-s", type=float, default=0.5, help="Locust: users per rate = rate x this")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--calib-num", type=int, default=128, help="fp8/int8 builds: calibration windows")
    p.add_argument("--commit", default=None, help="the commit measured (the device's copy has a stale .git)")
    p.add_argument("--ready-timeout-s", type=float, default=600)
    args = p.parse_args(argv)

    clock = Clock(args.budget_s)
    _raise_open_files_limit()
    args.data = args.data.resolve()  # the builds run from the checkout's root
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from bertrt.harness.perf import environment

    args.gpu = args.device != "cpu" and torch.cuda.is_available()
    device = "cuda" if args.gpu else "cpu"
    sweeps = args.sweep or [Sweep.parse("fp16/w1/k1=500,1000,2000,3000,4000")]
    if not args.gpu:  # the CPU serves the fp32 reference whatever the sweep says
        sweeps = [dataclasses.replace(s, precision="fp32") for s in sweeps]
    baseline_rates = [float(r) for r in args.baseline_rates.split(",") if r]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="serve_load_"))
    work.mkdir(parents=True, exist_ok=True)
    log = args.out / "servers.log"
    log.write_text("")

    questions = load_questions(args.data, args.count)
    questions_file = work / "questions.json"
    questions_file.write_text(json.dumps(questions))
    model = prepare_model(args, work)
    env = environment(torch.device(device), commit=args.commit)
    report = {
        "kind": "bertrt-serve-load", "environment": env,
        "conditions": {"model": f"random BERT-{args.random}" if args.random else Path(model).name,
                       "device_name": env["device_name"], "questions": len(questions), "data": str(args.data),
                       "duration_s": args.duration_s, "grace_s": args.grace_s, "client": args.client,
                       "client_processes": args.processes, "max_batch_tokens": args.max_batch_tokens,
                       "max_delay_ms": args.max_delay_ms, "p99_target_ms": P99_TARGET_MS, "budget_s": args.budget_s,
                       "latency_from": "each request's due time on the open-loop schedule"
                                       if args.client == "asyncio" else "Locust (closed loop)"},
        "engine_alone": {}, "builds": {}, "sweeps": [], "baseline": []}
    engines, windows = {}, None

    def engine_for(precision: str) -> Path | None:
        nonlocal windows
        if not args.gpu:
            return None
        if precision not in engines:
            t0 = time.monotonic()
            engines[precision] = build_engine(model, precision, args, work, log)
            report["builds"][precision] = {"seconds": round(time.monotonic() - t0, 1)}
            print(f"engine {precision} built in {report['builds'][precision]['seconds']} s; alone on "
                  f"{len(questions)} questions ...", flush=True)
            alone, windows = engine_throughput(model, engines[precision], device, questions, windows,
                                               args.max_batch_tokens)
            report["engine_alone"][precision] = alone
            print(f"  {alone['questions_per_s']:.1f} questions/s ({alone['windows_per_s']:.1f} windows/s)", flush=True)
        return engines[precision]

    if not args.gpu:
        print(f"model alone on {len(questions)} questions ...", flush=True)
        alone, windows = engine_throughput(model, None, device, questions, None, args.max_batch_tokens)
        report["engine_alone"]["fp32"] = alone
        print(f"  {alone['questions_per_s']:.1f} questions/s", flush=True)

    def save(*, with_plot: bool = False) -> None:
        """The report as it stands (a run stopped from outside still leaves its finished rates)."""
        report["summary"] = summarise(report)
        report["elapsed_s"] = round(clock.elapsed(), 1)
        (args.out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
        if with_plot:
            plot(report, args.out / "serve_load_p99.png")

    baseline_done: list = []
    running: dict = {}  # the server of the last sweep, kept for the next one with the same engine and workers

    def stop_running(*, then_baseline: bool = True) -> None:
        """Stop the running server; after the first, the baseline runs (on the GPU on its own)."""
        if running:
            running["entry"]["exit_code"] = running.pop("server").stop()
            running.clear()
        if then_baseline and not baseline_done:
            baseline_done.append(True)
            baseline()

    def serve(sweep: Sweep) -> None:
        entry = {"name": sweep.name, "precision": sweep.precision, "workers": sweep.workers,
                 "model_process": sweep.model_process,
                 "questions_per_request": sweep.per_request, "rows": []}
        report["sweeps"].append(entry)
        key = (sweep.precision, sweep.workers, sweep.model_process)
        if running.get("key") != key:
            if running:
                stop_running()
            # A server's start takes up to a minute; a build and the engine-alone run first, another.
            start_s = 60 + (60 if args.gpu and sweep.precision not in engines else 0)
            if not clock.fits(start_s + args.duration_s + args.grace_s):
                entry["skipped"] = "past --budget-s"
                entry["rows"] = [{"offered_qps": r, "skipped": "past --budget-s"} for r in sweep.rates]
                print(f"{sweep.name}: skipped (budget)", flush=True)
                return
            engine = engine_for(sweep.precision)
            port = _free_port()
            command = [sys.executable, "-m", "bertrt.cli", "serve", "--port", str(port), "--device", device,
                       "--max-batch-tokens", str(args.max_batch_tokens), "--max-delay-ms", str(args.max_delay_ms),
                       "--workers", str(sweep.workers), "--log-level", "info",
                       *(["--model-process", sweep.model_process] if sweep.model_process else []),
                       *(["--engine", str(engine)] if engine else ["--model", str(model)])]
            print(f"bertrt serve {sweep.precision}, {sweep.workers} worker(s) ...", flush=True)
            server = Server(command, port, log, f"bertrt serve {sweep.name}", workers=sweep.workers,
                            ready_timeout_s=args.ready_timeout_s)
            running.update(key=key, server=server)
            entry["ready_s"] = round(server.ready_s, 1)
            warm(server.url, questions)
        running["entry"] = entry  # the last sweep on a server records its exit code
        print(f"{sweep.name}:", flush=True)
        run_sweep(running["server"], sweep, args, clock, questions_file, work, entry["rows"], save)
        save(with_plot=True)

    def baseline() -> None:
        if not baseline_rates:
            return
        if not clock.fits(60 + args.duration_s + args.grace_s):
            report["baseline"] = [{"offered_qps": r, "skipped": "past --budget-s"} for r in baseline_rates]
            print("baseline: skipped (budget)", flush=True)
            return
        port = _free_port()
        print("baseline: HF model behind FastAPI ...", flush=True)
        try:
            base = Server([sys.executable, str(HERE / "hf_qa_server.py"), "--model", str(model), "--port", str(port),
                           "--device", device], port, log, "baseline", ready_timeout_s=args.ready_timeout_s)
        except Exception as exc:  # noqa: BLE001
            print(f"baseline failed: {exc!r}", flush=True)
            report["baseline_error"] = repr(exc)[:2000]
            return
        try:
            warm(base.url, questions)
            run_sweep(base, Sweep("hf", 1, 1, tuple(baseline_rates)), args, clock, questions_file, work,
                      report["baseline"], save)
            save(with_plot=True)
        except Exception as exc:  # noqa: BLE001 - recorded; bertrt's sweeps still run
            print(f"baseline failed: {exc!r}", flush=True)
            report["baseline_error"] = repr(exc)[:2000]
        finally:
            report["baseline_exit_code"] = base.stop()

    try:
        for sweep in sweeps:
            try:
                serve(sweep)
            except Exception as exc:  # noqa: BLE001 - recorded; the other sweeps still run
                print(f"{sweep.name} failed: {exc!r}", flush=True)
                report["sweeps"][-1]["error"] = repr(exc)[:2000]
                if running:
                    stop_running(then_baseline=False)
        stop_running()
    finally:
        stop_running(then_baseline=False)
        save(with_plot=True)
    print(json.dumps(report["summary"], indent=2))
    print(f"done in {report['elapsed_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
