"""Serving on several GPUs with Ray Serve, what the CPU can check: each replica loads onto the GPU
Ray gives it (``cuda:0`` inside it), and replicas the cluster cannot hold are refused up front
instead of left waiting for resources forever."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from bertrt.cli import main  # noqa: E402
from bertrt.errors import DeviceError, UserError  # noqa: E402
from bertrt.serve.deployment import build, check_resources, replica_device  # noqa: E402


@pytest.mark.parametrize("device, gpus, expected", [
    ("auto", 1, "cuda:0"), ("cuda", 1, "cuda:0"), ("cuda:0", 1, "cuda:0"), (None, 0.5, "cuda:0"),
    ("auto", 0, "cpu"), ("cpu", 0, "cpu"),
])
def test_each_replica_loads_onto_its_own_gpu(device, gpus, expected):
    assert replica_device(device, gpus) == expected


@pytest.mark.parametrize("device, gpus, message", [
    ("cuda:1", 1, "--device cuda:1 with --ray: each replica sees only the GPU Ray gives it, as cuda:0"),
    ("cuda", 0, "--device cuda with --num-gpus-per-replica 0: a replica that reserves no GPU sees none"),
    ("cpu", 1, "--device cpu with --num-gpus-per-replica 1: the replicas would hold GPUs they do not use"),
])
def test_devices_a_replica_cannot_use(device, gpus, message):
    with pytest.raises(UserError, match=message):
        replica_device(device, gpus)
    with pytest.raises(DeviceError):
        replica_device("gpu", 1)


def test_the_deployment_hands_each_replica_its_own_view(monkeypatch):
    from bertrt.serve import deployment

    bound: list[tuple] = []

    class Recorder:
        def options(self, **options):
            bound.append(options["ray_actor_options"])
            return self

        def bind(self, *args):
            bound.append(args)

    monkeypatch.setattr(deployment, "BertrtReplica", Recorder())
    build(device="cuda", replicas=2, num_gpus_per_replica=1)
    build(replicas=2, num_gpus_per_replica=0)
    assert bound[0] == {"num_cpus": 1.0, "num_gpus": 1} and bound[1][2] == "cuda:0"
    assert bound[2]["num_gpus"] == 0 and bound[3][2] == "cpu"


ONE_HOST = [{"CPU": 16.0, "GPU": 2.0, "memory": 1e11}]


@pytest.mark.parametrize("nodes, replicas, gpus, cpus, autoscaling", [
    (ONE_HOST, 2, 1, 1, False),
    (ONE_HOST, 4, 0.5, 1, False),
    (ONE_HOST, 8, 1, 1, True),  # autoscaling starts with one replica
    ([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}], 2, 1, 1, False),
    ([{"CPU": 2.0}], 2, 0, 1, False),
])
def test_replicas_that_fit(nodes, replicas, gpus, cpus, autoscaling):
    check_resources(nodes, replicas=replicas, num_gpus_per_replica=gpus, num_cpus_per_replica=cpus,
                    autoscaling=autoscaling)


@pytest.mark.parametrize("nodes, replicas, gpus, cpus, message", [
    (ONE_HOST, 3, 1, 1, "--replicas 3 x --num-gpus-per-replica 1 needs 3 GPU(s) and 3 CPU(s); the Ray cluster has "
                        "2 GPU(s) and 16 CPU(s) on 1 node(s), and places only 2 such replica(s)"),
    # Two GPUs in all, but no node holds a two-GPU replica.
    ([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}], 1, 2, 1, "places only 0 such replica(s)"),
    ([{"CPU": 2.0}], 3, 0, 1, "needs 0 GPU(s) and 3 CPU(s); the Ray cluster has 0 GPU(s) and 2 CPU(s)"),
    ([{"CPU": 2.0}], 1, 1, 1, "needs 1 GPU(s) and 1 CPU(s); the Ray cluster has 0 GPU(s)"),
])
def test_replicas_that_do_not_fit_are_refused(nodes, replicas, gpus, cpus, message):
    with pytest.raises(UserError, match="pass fewer replicas or GPUs per replica, or add nodes") as refused:
        check_resources(nodes, replicas=replicas, num_gpus_per_replica=gpus, num_cpus_per_replica=cpus)
    assert message in str(refused.value)


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray`` as `bertrt serve --ray` sees it, without a cluster: one host with two GPUs; records calls."""
    import ray
    from ray import serve

    calls: list[str] = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: calls.append("shutdown"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": dict(ONE_HOST[0])},
                                               {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])

    def start(*a, **k):
        raise AssertionError("Ray Serve started")

    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(serve, "run", start)
    return calls


def test_serve_refuses_more_gpus_than_the_cluster_has(fake_ray, capsys):
    assert main(["serve", "--ray", "--replicas", "3", "--num-gpus-per-replica", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bertrt serve: error: --device cpu with --num-gpus-per-replica 1: the replicas would hold GPUs " \
                  "they do not use; pass --num-gpus-per-replica 0"
    assert fake_ray == []  # refused before any cluster started
    assert main(["serve", "--ray", "--replicas", "3", "--num-gpus-per-replica", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertrt serve: error: --replicas 3 x --num-gpus-per-replica 1 needs 3 GPU(s)")
    assert "the Ray cluster has 2 GPU(s) and 16 CPU(s) on 1 node(s)" in err and len(err.splitlines()) == 1
    assert fake_ray == ["init", "shutdown"]


def test_serve_refuses_a_fixed_gpu_index_before_starting_ray(fake_ray, capsys):
    assert main(["serve", "--ray", "--replicas", "2", "--num-gpus-per-replica", "1", "--device", "cuda:1"]) == 2
    assert "each replica sees only the GPU Ray gives it, as cuda:0" in capsys.readouterr().err
    assert fake_ray == []
