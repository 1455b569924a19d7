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
"""

from __future__ import annotations

import dataclasses

from ray import serve

from bertrt.serve.app import ServeSettings, create_app
from bertrt.serve.model import ServedModel

# Requests a replica holds at once: enough to fill token-budget batches of short questions, few
# enough that one dead replica strands little work.
MAX_ONGOING_REQUESTS = 128


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


def build(model: str | None = None, *, engine: str | None = None, device: str = "auto",
          settings: ServeSettings = ServeSettings(), replicas: int = 1, num_gpus_per_replica: float = 0.0,
          num_cpus_per_replica: float = 1.0, autoscaling: bool = False, target_ongoing_requests: float = 32.0):
    """The Ray Serve application (``serve.run`` it).

    Args:
        model, engine, device: what each replica loads (as ``bertrt serve``).
        settings: each replica's limits and batching.
        replicas: the number of replicas, or with ``autoscaling`` the most of them.
        num_gpus_per_replica: 1 for one replica per GPU; 0 on CPU-only clusters.
        autoscaling: scale between 1 and ``replicas`` on ongoing requests per replica.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
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
