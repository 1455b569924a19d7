"""The server's own CPU cost per request: the real app under uvicorn, a model whose forward is instant.

    python benchmarks/serve_overhead.py --data .carry/data/dev-v1.1.json \
        --out benchmarks/results/cpu/serve_overhead.json
        [--source before=/tmp/before/src --source after=src] [--repeats 3] [--runner instant launch-bound]
        [--requests 3000] [--concurrency 32] [--per-request 1 8] [--profile FILE]
        [--workers N] [--contexts in-order fresh]

The server runs in a child process (``bertrt serve``'s uvicorn options, the embedded model's
tokenizer and window geometry) over a stand-in runner that returns seeded random start/end logits
at once, so everything the process spends is HTTP, validation, tokenisation, batching and answer
extraction: what bounds one process's requests/s however fast the GPU is. A closed-loop asyncio
(aiohttp) client in this process keeps ``--concurrency`` requests in flight, each of ``K`` SQuAD dev
questions (``{"inputs": [...]}`` past one), after a warm-up. The server process's CPU time (user +
system, from psutil) over the timed requests gives CPU ms per request and per question, and
requests/s per core (1000 / CPU ms). Client and server share the machine's cores, so wall-clock
requests/s is recorded but is not the figure to compare.

``--workers N`` serves as ``bertrt serve --workers N`` does on a GPU: the stand-in model in one
model process (``serve.model_process.ModelHost``, here the server child itself) fed over its Unix
socket by N uvicorn worker processes; the model process's CPU and the workers' are then reported
apart, per request and per window, since the model process's one interpreter is what every
worker's windows pass through.

``--contexts fresh`` gives every request a paragraph of its own (SQuAD's, marked with the
request's number), so none comes from the server's cache of recent contexts and each is tokenised,
as when clients ask about passages the server has not seen; ``in-order`` (the default) sends SQuAD's
questions as they come, five or so to a paragraph.

``--source LABEL=SRC`` (repeatable) measures bertrt from each ``src`` folder in turn, for example
the parent commit's (``git archive HEAD~1 src | tar -x -C /tmp/before``) against the work tree's.
``--profile FILE`` runs the child under cProfile (its main thread) and writes its stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class InstantRunner:
    """The embedded model's config and heads, with a forward that costs nothing: seeded random
    (total_tokens, 2) logits, so answer extraction sees spans of every shape. It says it has CUDA
    graphs, so that batches reach it as they reach a GPU engine's graphs (laid out on the host in
    numpy, no torch ops): the host's work per batch is then what it is on a GPU server, less the
    graph's replay."""

    graphs = True
    graph_max_tokens = None  # set by the backend

    def __init__(self, runner):
        import torch

        self.config, self.heads = runner.config, tuple(runner.heads)
        self.max_seq_length = getattr(runner, "max_seq_length", 512)
        self._generator = torch.Generator().manual_seed(0)

    def capture(self, buckets):
        del buckets

    def parameters(self):
        return iter(())

    def qa_logits(self, batch):
        import torch

        return torch.randn(batch.total_tokens, 2, generator=self._generator)

    def encode(self, batch):
        import torch

        return torch.zeros(batch.total_tokens, self.config.hidden_size)


class LaunchBoundRunner(InstantRunner):
    """An ``InstantRunner`` whose forward makes ``LAUNCHES`` short calls that each release the
    interpreter lock for ~10 us, as an eager GPU forward's kernel launches do (BERT-Large: ~25 per
    layer, 24 layers): how long a batch takes then depends on how soon its thread gets the lock
    back from the threads doing HTTP and tokenisation."""

    LAUNCHES = 600

    def qa_logits(self, batch):
        import hashlib

        block = b"\0" * 16384  # hashlib releases the lock for data over 2 KiB
        for _ in range(self.LAUNCHES):
            hashlib.sha256(block)
        return super().qa_logits(batch)


RUNNERS = {"instant": InstantRunner, "launch-bound": LaunchBoundRunner}
RUNNER_WORDS = {"instant": "at once (instant)",
                "launch-bound": "after 600 lock-releasing calls of ~10 us per batch (launch-bound)"}


def serve_child(port: int, profile: str | None, runner: str = "instant", workers: int = 0) -> None:
    """The server process: the app over an ``InstantRunner`` (or ``runner``) on 127.0.0.1:``port``;
    with ``workers``, that model behind a ``ModelHost`` here and the app in ``workers`` processes."""
    import uvicorn

    from bertrt.serve import ServedModel, ServeSettings, create_app

    import torch

    # The stand-in's few CPU torch ops (packing, random logits) would otherwise wake torch's
    # OpenMP pool, whose spinning threads cost ~0.3 ms per request: the GPU server has no such pool.
    torch.set_num_threads(1)
    real = ServedModel.load(device="cpu")
    model = ServedModel(RUNNERS[runner](real.runner), real.tokenizer, name=runner, device="cpu")
    settings = ServeSettings()
    host = None
    profiler = None
    if profile is not None:
        import cProfile
        import threading

        profiler = cProfile.Profile()
        profiler.enable()
        if workers:  # the model process's work is in its threads: a profiler for each
            thread_profilers = [profiler]

            def profile_thread(*_):
                thread_profilers.append(cProfile.Profile())
                thread_profilers[-1].enable()  # replaces this hook in the thread
            threading.setprofile(profile_thread)
    if workers:
        import secrets
        import tempfile

        from bertrt.serve.app import ENVIRONMENT_KEY, environment_options
        from bertrt.serve.model_process import ModelHost

        key = secrets.token_bytes(16)
        address = str(Path(tempfile.mkdtemp(prefix="serve-overhead-")) / "model.sock")
        host = ModelHost(model, address, key, max_batch_tokens=settings.max_batch_tokens,
                         max_delay_s=settings.max_delay_ms / 1000, max_queue_tokens=settings.max_queue_tokens).start()
        _write_thread_names()
        os.environ[ENVIRONMENT_KEY] = environment_options(None, None, "cpu", settings,
                                                          {"address": address, "authkey": key.hex()})
        config = uvicorn.Config("bertrt.serve.app:app_from_environment", factory=True, workers=workers,
                                host="127.0.0.1", port=port, log_level="warning", access_log=False)
    else:
        config = uvicorn.Config(create_app(model, settings), host="127.0.0.1", port=port, log_level="warning",
                                access_log=False)
    # uvicorn raises the SIGTERM that stopped it again once it has drained: ignore it, so a
    # profiled run returns here and writes its stats.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        if workers:
            # uvicorn's own supervisor, as `uvicorn.run(workers=N)` starts it (that one runs a single
            # worker in-process, where this keeps even one apart from the model process).
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    finally:
        if profiler is not None:
            profiler.disable()
            if workers:
                import pstats

                pstats.Stats(*thread_profilers).dump_stats(profile)
            else:
                profiler.dump_stats(profile)
        if host is not None:
            host.stop()


def _thread_names_file(pid: int) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"serve-overhead-threads-{pid}.json"


def _write_thread_names() -> None:
    """Every second, this process's Python threads' names by native id, for ``_per_thread``
    (Python 3.11 does not name the OS threads)."""
    import threading

    path = _thread_names_file(os.getpid())

    def loop():
        while True:
            names = {t.native_id: t.name.split("-")[0] if t.name.startswith("Thread-") else t.name
                     for t in threading.enumerate()}
            path.write_text(json.dumps(names))
            time.sleep(1.0)
    threading.Thread(target=loop, name="thread-names", daemon=True).start()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _drive(url: str, bodies: list[bytes], count: int, concurrency: int) -> dict:
    import aiohttp

    statuses: dict[int, int] = {}
    next_index = 0

    async def user(session):
        nonlocal next_index
        while next_index < count:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        return {"seconds": time.perf_counter() - start, "statuses": statuses}


def measure(url: str, proc, questions: list[dict], *, per_request: int, requests: int, concurrency: int,
            warm_requests: int, fresh_contexts: bool = False) -> dict:
    import psutil

    if fresh_contexts:  # a mark of its own on every paragraph: the server's context cache never has it
        questions = [{**q, "context": f"{q['context']} ({i})"} for i, q in enumerate(questions)]
    bodies = []
    for i in range(0, len(questions) - per_request + 1, per_request):
        group = questions[i:i + per_request]
        bodies.append(json.dumps(group[0] if per_request == 1 else {"inputs": group}).encode())
    server = psutil.Process(proc.pid)
    asyncio.run(_drive(url, bodies, warm_requests, concurrency))
    workers = [c for c in server.children(recursive=True)  # with --workers: uvicorn's worker processes
               if not any("resource_tracker" in part for part in _cmdline(c))]
    before, threads_before, workers_before = server.cpu_times(), _thread_times(server), _cpu_s(workers)
    run = asyncio.run(_drive(url, bodies[warm_requests:] + bodies[:warm_requests], requests, concurrency))
    after, threads_after, workers_after = server.cpu_times(), _thread_times(server), _cpu_s(workers)
    # The event loop's thread (the process's main thread) against every other thread (the
    # batcher's worker, any thread pool), in ms per request.
    main = threads_after.get(server.pid, 0.0) - threads_before.get(server.pid, 0.0)
    others = sum(v - threads_before.get(k, 0.0) for k, v in threads_after.items() if k != server.pid)
    cpu_s = (after.user - before.user) + (after.system - before.system)
    ok = run["statuses"].get(200, 0)
    if ok != requests:  # a figure over refused or failed requests would not be the server's cost
        raise RuntimeError(f"{requests - ok} of {requests} requests were not answered 200: {run['statuses']}")
    row = {"questions_per_request": per_request, "contexts": "fresh" if fresh_contexts else "in-order",
           "requests": requests, "concurrency": concurrency,
           "statuses": {str(k): v for k, v in sorted(run["statuses"].items())}, "wall_s": round(run["seconds"], 3)}
    if workers:
        # The server process is the model process (and uvicorn's idle supervisor); its threads are
        # the connections' readers and the batcher's worker, which also sends each batch's outputs.
        workers_s = workers_after - workers_before
        total = cpu_s + workers_s
        row |= {"workers": len(workers), "server_cpu_s": round(total, 3),
                "cpu_ms_per_request": round(1e3 * total / requests, 4),
                "cpu_ms_per_question": round(1e3 * total / (requests * per_request), 4),
                "workers_cpu_ms_per_request": round(1e3 * workers_s / requests, 4),
                "model_process_cpu_ms_per_request": round(1e3 * cpu_s / requests, 4),
                "model_process_threads_cpu_ms_per_request": _per_thread(server, threads_before, threads_after,
                                                                         requests),
                "model_process_requests_per_s_per_core": round(requests / cpu_s, 1),
                "requests_per_s_per_core": round(requests / total, 1),
                "questions_per_s_per_core": round(requests * per_request / total, 1)}
        return row | {"wall_requests_per_s": round(ok / run["seconds"], 1)}
    batches = _batch_stats(url.rsplit("/v1/", 1)[0])
    return row | {"server_cpu_s": round(cpu_s, 3), "cpu_ms_per_request": round(1e3 * cpu_s / requests, 4),
                  "cpu_ms_per_question": round(1e3 * cpu_s / (requests * per_request), 4),
                  "cpu_ms_per_request_event_loop": round(1e3 * main / requests, 4),
                  "cpu_ms_per_request_other_threads": round(1e3 * others / requests, 4),
                  "requests_per_s_per_core": round(requests / cpu_s, 1),
                  "questions_per_s_per_core": round(requests * per_request / cpu_s, 1),
                  "wall_requests_per_s": round(ok / run["seconds"], 1), **batches}


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - gone already
        return []


def _cpu_s(processes) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
        except Exception:  # noqa: BLE001 - a process that has exited (uvicorn restarts none here)
            continue
        total += t.user + t.system
    return total


def _per_thread(server, before: dict, after: dict, requests: int) -> dict:
    """The model process's CPU by Python thread name (ms per request), busiest first: the child
    writes its threads' names by native id (``_write_thread_names``)."""
    try:
        names = {int(k): v for k, v in json.loads(_thread_names_file(server.pid).read_text()).items()}
    except (OSError, ValueError):
        names = {}
    names = {tid: names.get(tid, "unnamed") for tid in after}
    by_name: dict[str, float] = {}
    for tid, v in after.items():
        by_name[names[tid]] = by_name.get(names[tid], 0.0) + v - before.get(tid, 0.0)
    return {k: round(1e3 * v / requests, 4) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v > 0}


def _batch_stats(base: str) -> dict:
    """Mean batch size and mean seconds per batch on the model, from the server's /metrics (since
    its start, warm-up included)."""
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("bertrt_inference_duration_seconds_sum", "bertrt_inference_duration_seconds_count",
                     "bertrt_batch_sequences_sum"):
            if line.startswith(name + '{kind="qa"}'):
                values[name] = float(line.rsplit(" ", 1)[1])
    count = values.get("bertrt_inference_duration_seconds_count") or 1.0
    return {"batches": int(count), "mean_batch_windows": round(values.get("bertrt_batch_sequences_sum", 0) / count, 2),
            "mean_batch_ms": round(1e3 * values.get("bertrt_inference_duration_seconds_sum", 0) / count, 3)}


def _thread_times(process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def _wait_ready(url: str, proc, timeout_s: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not get ready")


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_server(source: str | None, runner: str, args, questions: list[dict]) -> list[dict]:
    """One server process (bertrt from ``source``, a ``src`` folder, or the installed one), every
    ``--per-request`` setting against it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data), "--serve-child", str(port),
               "--runner", runner, "--workers", str(args.workers)]
    if args.profile:
        command += ["--profile", args.profile]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(source).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(command, env=env)
    rows = []
    try:
        _wait_ready(url, proc)
        for k in args.per_request:
            for contexts in args.contexts:
                rows.append(measure(url + "/v1/qa", proc, questions, per_request=k, requests=args.requests,
                                    concurrency=args.concurrency, warm_requests=args.warm_requests,
                                    fresh_contexts=contexts == "fresh"))
    finally:
        proc.terminate()
        proc.wait(60)
    return rows


def _median_row(rows: list[dict]) -> dict:
    """The repeat with the median CPU per request, with every repeat's figure beside it."""
    ordered = sorted(rows, key=lambda r: r["cpu_ms_per_request"])
    return {**ordered[len(ordered) // 2], "cpu_ms_per_request_repeats": [r["cpu_ms_per_request"] for r in rows]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="SQuAD v1.1 dev json (the questions sent)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--requests", type=int, default=3000, help="timed requests per setting")
    p.add_argument("--warm-requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--per-request", type=int, nargs="+", default=[1, 8], help="questions per request")
    p.add_argument("--contexts", choices=("in-order", "fresh"), nargs="+", default=["in-order"],
                   help="SQuAD's paragraphs as they come (consecutive questions share one, which the server "
                        "keeps tokenised), or each made new, so every request's paragraph is tokenised")
    p.add_argument("--source", action="append", default=[], metavar="LABEL=SRC",
                   help="measure bertrt from this src folder under LABEL (repeatable: the sources take turns, "
                        "so a busy machine slows each alike); default: the bertrt that imports here")
    p.add_argument("--repeats", type=int, default=1, help="servers per source and runner; the median is kept")
    p.add_argument("--runner", choices=sorted(RUNNERS), nargs="+", default=["instant"],
                   help="the stand-in forward: instant, or launch-bound (releases the lock 600 times a batch)")
    p.add_argument("--profile", default=None, help="cProfile the server into this file")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="serve from N uvicorn workers over one shared model process (the server child), as "
                        "`bertrt serve --workers N` does on a GPU; 0: one process with the model in it")
    p.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_child is not None:
        serve_child(args.serve_child, args.profile, args.runner[0], args.workers)
        return 0

    import psutil

    sys.path.insert(0, str(HERE))
    from serve_load import load_questions

    questions = load_questions(args.data, None)
    sources = [tuple(item.split("=", 1)) for item in args.source] or [("installed", None)]
    measured: dict[tuple[str, str, int, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for runner in args.runner:
            for label, source in sources:
                for row in run_server(source, runner, args, questions):
                    measured.setdefault((label, runner, row["questions_per_request"], row["contexts"]),
                                        []).append(row)
                    print(json.dumps({"source": label, "runner": runner, "repeat": repeat, **row}), flush=True)
    rows = [{"source": label, "runner": runner, **_median_row(found)}
            for (label, runner, _, _), found in measured.items()]
    import bertrt

    report = {"kind": "bertrt-serve-overhead",
              "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                              "cpu_count": psutil.cpu_count(), "cpu": _cpu_name(),
                              "python": platform.python_version(), "bertrt": bertrt.__version__,
                              "git_sha": _git_sha()},
              "conditions": {"model": "the embedded model's tokenizer and windows; a stand-in forward returning "
                                      "seeded random logits " + " or ".join(RUNNER_WORDS[r] for r in args.runner),
                             "server": (f"{args.workers} uvicorn worker{'s' if args.workers > 1 else ''} over "
                                        "one shared model process"
                                        if args.workers else "one uvicorn process") +
                                       " per source and repeat, bertrt serve's defaults",
                             "workers": args.workers,
                             "client": f"aiohttp in the parent process, closed loop, {args.concurrency} in flight, "
                                       "on the same cores",
                             "requests": args.requests, "warm_requests": args.warm_requests,
                             "repeats": args.repeats, "data": Path(args.data).name,
                             "sources": {label: source for label, source in sources},
                             "profiled": bool(args.profile)},
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
