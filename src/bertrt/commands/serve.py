"""`bertrt serve`: the HTTP API on one machine (uvicorn), or on a Ray cluster (Ray Serve)."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket

from bertrt.commands._common import add_model_args
from bertrt.errors import UserError

# CPUs each Ray Serve replica reserves (its batcher thread and the app's event loop).
NUM_CPUS_PER_REPLICA = 1.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the model over HTTP (question answering, embeddings, classification, a web page)",
        description="Serve the model over HTTP: POST /v1/qa, /v1/embed, /v1/classify; GET /health, /ready, "
                    "/v1/info, /metrics (Prometheus), /openapi.json, and a page at / to try questions. Concurrent "
                    "requests' windows are packed into token-budget batches. SIGTERM stops accepting, finishes "
                    "what was accepted, then exits.",
        epilog="examples:\n  bertrt serve                      # the embedded model on 127.0.0.1:8000\n"
               "  bertrt serve --engine engines/large-fp16 --port 8080\n"
               "  bertrt serve --ray --replicas 4 --num-gpus-per-replica 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, metavar="N",
                   help="real tokens per packed batch at most (default 16384)")
    p.add_argument("--max-delay-ms", type=float, default=2.0, metavar="MS",
                   help="how long a queued window may wait for a fuller batch (default 2)")
    p.add_argument("--max-queue-tokens", type=int, default=131072, metavar="N",
                   help="queued tokens at most; past it requests get 503 with Retry-After (default 131072)")
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="a request unanswered after this gets 504 and its queued work is dropped (default 30)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="larger request bodies get 413 (default 1 MiB)")
    p.add_argument("--max-text-chars", type=int, default=50_000, metavar="N",
                   help="longer contexts or texts get 413 (default 50000)")
    p.add_argument("--max-connections", type=int, default=4096, metavar="N",
                   help="open connections at most; past it uvicorn answers 503 (default 4096)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="HTTP server processes sharing the port (validating, tokenising, answering); more than "
                        "one when the host's Python work per request, not the model, bounds the throughput; "
                        "/metrics is per process (default 1)")
    p.add_argument("--model-process", choices=("shared", "per-worker"), default=None,
                   help="with --workers N: one process holds the model and the one batcher, fed by every worker "
                        "('shared': one CUDA context, batches N times fuller), or each worker loads its own copy "
                        "('per-worker'). Default: shared on a GPU, per-worker on the CPU (where each copy "
                        "computes on cores of its own)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    ray = p.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true",
                     help="serve through Ray Serve (joins RAY_ADDRESS's cluster when set, else starts one here)")
    ray.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas (default 1)")
    ray.add_argument("--num-gpus-per-replica", type=float, default=None, metavar="G",
                     help="GPUs per replica (default 1 when this machine has a GPU, else 0). Ray gives each "
                          "replica its own GPU (CUDA_VISIBLE_DEVICES), which it sees as cuda:0; the replicas "
                          "asked for must fit the cluster, checked before they start")
    ray.add_argument("--autoscale", action="store_true",
                     help="scale between 1 and --replicas replicas on ongoing requests")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535, or 0 for a free one")
    return port


def check_listen(host: str, port: int) -> None:
    """Refuse, in one line, an address this machine cannot listen on (a port in use, a host that
    is not one of its addresses), before the model loads: on a GPU loading and warming up take
    minutes, after which uvicorn would only log the error. Binds as uvicorn binds (the address
    family by the host's form, SO_REUSEADDR), then lets go."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as exc:
            raise UserError(f"--host {host}: {exc.strerror}") from None
        except OSError as exc:
            where = f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{where} is in use (another server?): stop it, or pick another --port") from None
            if exc.errno == errno.EACCES:
                raise UserError(f"{where}: permission denied (ports below 1024 need privileges): "
                                "pick another --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host} is not an address of this machine") from None
            raise UserError(f"cannot listen on {where}: {exc.strerror}") from None


def _settings(args: argparse.Namespace):
    from bertrt.serve.app import ServeSettings

    try:
        return ServeSettings(max_batch_tokens=args.max_batch_tokens, max_delay_ms=args.max_delay_ms,
                             max_queue_tokens=args.max_queue_tokens, timeout_s=args.timeout_s,
                             max_body_bytes=args.max_body_bytes, max_text_chars=args.max_text_chars)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.workers < 1:
        raise UserError(f"--workers must be positive, got {args.workers}")
    if args.ray:
        return _run_ray(args, settings)
    check_listen(args.host, args.port)
    import uvicorn

    from bertrt.serve.app import create_app
    from bertrt.serve.model import ServedModel

    options = dict(log_level=args.log_level, timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                   access_log=False, limit_concurrency=args.max_connections)
    if args.workers > 1:
        return _run_workers(args, settings, options)
    model = ServedModel.load(args.model, engine=args.engine, device=args.device,
                             graph_max_tokens=settings.max_batch_tokens)
    app = create_app(model, settings)
    # On SIGTERM uvicorn closes the listening socket, waits for the accepted requests (each ends
    # by its own timeout at the latest), then runs the app's shutdown, which drains the batcher.
    config = uvicorn.Config(app, host=args.host, port=args.port, **options)
    # uvicorn raises the signal that stopped it again once it has drained; the work is done by then,
    # so a drained SIGTERM exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _run_workers(args: argparse.Namespace, settings, options: dict) -> int:
    """uvicorn's supervisor binds the port and starts the workers; each builds its app from the
    environment and drains on the SIGTERM passed on to it. With a shared model process, that
    process is started and warm first, and stopped (drained) after the workers."""
    import threading

    import uvicorn

    from bertrt.device import resolve_device
    from bertrt.serve.app import ENVIRONMENT_KEY, environment_options
    from bertrt.serve.model_process import ModelProcess

    mode = args.model_process or ("shared" if resolve_device(args.device).type == "cuda" else "per-worker")
    host = None
    if mode == "shared":
        limits = {"max_batch_tokens": settings.max_batch_tokens, "max_delay_s": settings.max_delay_ms / 1000,
                  "max_queue_tokens": settings.max_queue_tokens}
        host = ModelProcess(args.model, args.engine, args.device, limits)
        _, pid, name, device = host.wait_ready()  # a model that fails to load: one line, as without workers
        print(f"bertrt serve: model process [{pid}] ready: {name} on {device}, shared by {args.workers} workers",
              flush=True)
    os.environ[ENVIRONMENT_KEY] = environment_options(args.model, args.engine, args.device, settings,
                                                      host.worker_options() if host else None)
    lost, stopping = threading.Event(), threading.Event()
    if host is not None:
        def watch():  # the workers cannot answer without it: stop them, and exit with an error
            host.process.join()
            if not stopping.is_set():
                lost.set()
                os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch, name="model-process-watch", daemon=True).start()
    try:
        # A worker answers the supervisor's health pings from a thread of its own, also while it loads
        # and warms the model, which can take minutes on a GPU.
        uvicorn.run("bertrt.serve.app:app_from_environment", factory=True, workers=args.workers, host=args.host,
                    port=args.port, timeout_worker_healthcheck=120, **options)
    finally:
        stopping.set()
        if host is not None:
            host.stop()
    if lost.is_set():
        raise UserError(f"the model process exited (code {host.process.exitcode}); the workers were stopped")
    return 0


def _run_ray(args: argparse.Namespace, settings) -> int:
    import threading

    import ray
    import torch
    from ray import serve

    from bertrt.serve.deployment import build, check_resources, cluster_nodes, http_options

    gpus = args.num_gpus_per_replica
    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if args.replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {args.replicas}")
    if gpus < 0:
        raise UserError(f"--num-gpus-per-replica must be >= 0, got {gpus:g}")
    # The device each replica loads onto is checked here, before any cluster starts.
    app = build(args.model, engine=args.engine, device=args.device, settings=settings, replicas=args.replicas,
                num_gpus_per_replica=gpus, num_cpus_per_replica=NUM_CPUS_PER_REPLICA, autoscaling=args.autoscale)
    ray.init(ignore_reinit_error=True)
    try:
        # Ray Serve would wait forever for replicas the cluster cannot place.
        check_resources(cluster_nodes(), replicas=args.replicas, num_gpus_per_replica=gpus,
                        num_cpus_per_replica=NUM_CPUS_PER_REPLICA, autoscaling=args.autoscale)
    except UserError:
        ray.shutdown()
        raise
    serve.start(http_options=http_options(args.host, args.port, settings))
    serve.run(app, name="bertrt", route_prefix="/")
    print(f"bertrt serve: {args.replicas} replica(s) on http://{args.host}:{args.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # each replica drains within its graceful shutdown timeout
    ray.shutdown()
    return 0
