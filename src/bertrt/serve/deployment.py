"""The same app as a Ray Serve deployment: one replica per GPU, each batching its own requests.

Each replica loads the model and builds the app of ``bertrt.serve.app`` (so the token-budget
batcher of ``bertrt.batching`` runs inside every replica); Ray Serve's proxy spreads requests over
the replicas, restarts a replica that dies or fails its health check, and with ``autoscaling``
adds replicas when the ongoing requests per replica pass ``target_ongoing_requests``.

On an existing Ray cluster:

    serve run bertrt.serve.deployment:app_builder replicas=4 num_gpus_per_replica=1

or from Python:

    >>> from ray import serve
    >>> serve.run(build(replicas=2, num_gpus_per_replica=1), route_prefix="/")

One GPU per replica on a host with N GPUs: Ray gives each replica that asks for GPUs its own
through CUDA_VISIBLE_DEVICES, so inside every replica its GPU is ``cuda:0`` whatever its index on
the host; ``replica_device`` maps the device asked for onto that (a fixed ``cuda:1`` would name a
GPU the replica cannot see). Ray Serve waits without end for replicas the cluster cannot place, so
``bertrt serve --ray`` checks first that the cluster's nodes hold them (``check_resources``).
"""

from __future__ import annotations

import dataclasses

from ray import serve

from bertrt.device import check_device
from bertrt.errors import UserError
from bertrt.serve.app import ServeSettings, create_app
from bertrt.serve.model import ServedModel

# Requests a replica holds at once: enough to fill token-budget batches of short questions, few
# enough that one dead replica strands little work.
MAX_ONGOING_REQUESTS = 128
# How much longer than the app's own --timeout-s (504) Ray's proxy waits before it answers 408.
PROXY_GRACE_S = 5.0


def http_options(host: str, port: int, settings: ServeSettings) -> dict:
    """Ray Serve's proxy options for ``serve.start``. Its end-to-end timeout bounds what the app's
    504 cannot: a request the proxy had handed to a replica that was then killed went unanswered
    past the client's 30 s in one of several CPU runs of the kill test, instead of getting an error."""
    return {"host": host, "port": port, "request_timeout_s": settings.timeout_s + PROXY_GRACE_S}


@serve.deployment(name="bertrt", max_ongoing_requests=MAX_ONGOING_REQUESTS, health_check_period_s=2.0,
                  health_check_timeout_s=30.0, graceful_shutdown_timeout_s=30.0)
@serve.ingress()
class BertrtReplica:
    """One replica: the model, its batcher and the FastAPI app."""

    def __init__(self, model: str | None = None, engine: str | None = None, device: str = "auto",
                 settings: ServeSettings = ServeSettings()):
        self._model = ServedModel.load(model, engine=engine, device=device)
        self._settings = settings
        self._app = None

    def __serve_build_asgi_app__(self):
        self._app = create_app(self._model, self._settings)
        return self._app

    def check_health(self) -> None:
        """Ray Serve replaces a replica whose batcher worker has died."""
        batcher = getattr(self._app.state, "batcher", None) if self._app is not None else None
        if batcher is not None and not batcher.alive:
            raise RuntimeError("the batcher's worker thread has stopped")


def replica_device(device: str | None, num_gpus_per_replica: float) -> str:
    """The device every replica loads onto, for ``device`` as given to ``bertrt serve``.

    With GPUs per replica, 'auto', 'cuda' and 'cuda:0' are the replica's own GPU, 'cuda:0' inside
    it (Ray's CUDA_VISIBLE_DEVICES numbers a replica's GPUs from 0). Without, a replica sees no GPU
    (Ray sets CUDA_VISIBLE_DEVICES empty), so 'auto' is the CPU.

    Example:
        >>> replica_device("auto", 1), replica_device("cuda", 0.5), replica_device("auto", 0)
        ('cuda:0', 'cuda:0', 'cpu')

    Raises:
        DeviceError: a malformed device.
        UserError: 'cuda:N' for N >= 1, a GPU without GPUs per replica, or the CPU with them.
    """
    text = check_device(device)
    if num_gpus_per_replica > 0:
        if text in ("auto", "cuda", "cuda:0"):
            return "cuda:0"
        if text == "cpu":
            raise UserError(f"--device cpu with --num-gpus-per-replica {num_gpus_per_replica:g}: the replicas would "
                            "hold GPUs they do not use; pass --num-gpus-per-replica 0")
        raise UserError(f"--device {text} with --ray: each replica sees only the GPU Ray gives it, as cuda:0 "
                        "(CUDA_VISIBLE_DEVICES); pass --device cuda or auto")
    if text in ("auto", "cpu"):
        return "cpu"
    raise UserError(f"--device {text} with --num-gpus-per-replica 0: a replica that reserves no GPU sees none; "
                    "pass --num-gpus-per-replica 1")


def check_resources(nodes: list[dict], *, replicas: int, num_gpus_per_replica: float,
                    num_cpus_per_replica: float, autoscaling: bool = False) -> None:
    """UserError unless ``replicas`` replicas (one, with ``autoscaling``: the fewest it runs) fit on
    the nodes, each whole on one node, placed first-fit as Ray would at best.

    Args:
        nodes: each alive node's total resources, e.g. ``{"CPU": 16.0, "GPU": 2.0}``
            (``cluster_nodes()``).

    Example:
        >>> check_resources([{"CPU": 16.0, "GPU": 1.0}], replicas=2, num_gpus_per_replica=1,
        ...                 num_cpus_per_replica=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bertrt.errors.UserError: --replicas 2 x --num-gpus-per-replica 1 needs 2 GPU(s) and 2 CPU(s); ...
    """
    wanted = 1 if autoscaling else replicas
    free = [{"GPU": float(n.get("GPU", 0.0)), "CPU": float(n.get("CPU", 0.0))} for n in nodes]
    need = {"GPU": float(num_gpus_per_replica), "CPU": float(num_cpus_per_replica)}
    placed = 0
    for _ in range(wanted):
        node = next((n for n in free if all(n[k] + 1e-9 >= need[k] for k in need)), None)
        if node is None:
            break
        for k in need:
            node[k] -= need[k]
        placed += 1
    if placed == wanted:
        return
    total = {k: sum(float(n.get(k, 0.0)) for n in nodes) for k in need}
    what = (f"--replicas {replicas} with --autoscale starts 1 replica, which" if autoscaling
            else f"--replicas {replicas} x --num-gpus-per-replica {num_gpus_per_replica:g}")
    raise UserError(f"{what} needs {wanted * need['GPU']:g} GPU(s) and {wanted * need['CPU']:g} CPU(s); the Ray "
                    f"cluster has {total['GPU']:g} GPU(s) and {total['CPU']:g} CPU(s) on {len(nodes)} node(s), and "
                    f"places only {placed} such replica(s): pass fewer replicas or GPUs per replica, or add nodes")


def cluster_nodes() -> list[dict]:
    """The total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def build(model: str | None = None, *, engine: str | None = None, device: str = "auto",
          settings: ServeSettings = ServeSettings(), replicas: int = 1, num_gpus_per_replica: float = 0.0,
          num_cpus_per_replica: float = 1.0, autoscaling: bool = False, target_ongoing_requests: float = 32.0):
    """The Ray Serve application (``serve.run`` it).

    Args:
        model, engine: what each replica loads (as ``bertrt serve``).
        device: as ``bertrt serve --device``, mapped onto each replica's own view (``replica_device``).
        settings: each replica's limits and batching.
        replicas: the number of replicas, or with ``autoscaling`` the most of them.
        num_gpus_per_replica: 1 for one replica per GPU; 0 on CPU-only clusters.
        autoscaling: scale between 1 and ``replicas`` on ongoing requests per replica.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    device = replica_device(device, num_gpus_per_replica)
    options = {"ray_actor_options": {"num_cpus": num_cpus_per_replica, "num_gpus": num_gpus_per_replica}}
    if autoscaling:
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": replicas,
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        options["num_replicas"] = replicas
    return BertrtReplica.options(**options).bind(model, engine, device, settings)


def app_builder(args: dict):
    """For ``serve run bertrt.serve.deployment:app_builder key=value ...``: the keywords of ``build``
    and the fields of ``ServeSettings``."""
    fields = {f.name: f.type for f in dataclasses.fields(ServeSettings)}
    settings = {k: float(v) if "float" in str(fields[k]) else int(v) for k, v in args.items() if k in fields}
    rest = {k: v for k, v in args.items() if k not in fields}
    for key in ("replicas",):
        if key in rest:
            rest[key] = int(rest[key])
    for key in ("num_gpus_per_replica", "num_cpus_per_replica", "target_ongoing_requests"):
        if key in rest:
            rest[key] = float(rest[key])
    if "autoscaling" in rest:
        rest["autoscaling"] = str(rest["autoscaling"]).lower() in ("1", "true", "yes")
    return build(settings=ServeSettings(**settings), **rest)
