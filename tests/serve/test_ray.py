"""Ray Serve on the CPU: two replicas answer; one killed under load costs no hung request, every
accepted request completes or gets a clear error, and Ray Serve brings the replica back."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
from serve_testing import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

CONTEXT = "The cat sat on the mat in the kitchen of the old house."
ASK = {"question": "Where did the cat sit?", "context": CONTEXT}


def _running() -> int:
    deployment = serve.status().applications["bertrt"].deployments["bertrt"]
    return deployment.replica_states.get("RUNNING", 0)


def _replica_names() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::bertrt#bertrt")}


@pytest.fixture(scope="module")
def cluster():
    from bertrt.serve import ServeSettings
    from bertrt.serve.deployment import build, http_options

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # A port free when asked may be taken by one of Ray's own processes before its proxy binds it.
        settings = ServeSettings(timeout_s=20)
        for attempt in range(3):
            port = free_port()
            try:
                serve.start(http_options=http_options("127.0.0.1", port, settings))
                break
            except Exception:  # noqa: BLE001  (Ray wraps the bind failure in its own error types)
                serve.shutdown()
                if attempt == 2:
                    raise
        app = build(device="cpu", settings=settings, replicas=2, num_cpus_per_replica=1)
        serve.run(app, name="bertrt", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer(cluster):
    with httpx.Client(base_url=cluster, timeout=30) as client:
        answers = {client.post("/v1/qa", json=ASK).json()["answer"] for _ in range(6)}
        info = client.get("/v1/info").json()
    assert len(answers) == 1 and answers.pop() in CONTEXT
    assert info["device"] == "cpu" and _running() == 2 and len(_replica_names()) == 2


def test_a_replica_killed_under_load_fails_no_request_silently_and_comes_back(cluster):
    victim = sorted(_replica_names())[0]
    outcomes: list[int | str] = []

    def ask(i: int):
        try:
            r = httpx.post(f"{cluster}/v1/qa", json=ASK, timeout=30)
            return r.status_code, r.json()["answer"] if r.status_code == 200 else r.text
        except httpx.TimeoutException:
            return "hung", ""
        except httpx.HTTPError as exc:  # a connection dropped by the proxy is a clear error too
            return "transport", repr(exc)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(16)]
        time.sleep(0.3)
        in_flight = sum(not f.done() for f in futures)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        futures += [pool.submit(ask, i) for i in range(16, 48)]
        outcomes = [f.result(timeout=60) for f in futures]
    statuses = [s for s, _ in outcomes]
    assert in_flight > 0
    assert "hung" not in statuses
    # 408: the proxy's own timeout (deployment.http_options), for a request it could not finish.
    assert all(s in (200, 408) or (isinstance(s, int) and s >= 500) or s == "transport" for s in statuses), statuses
    assert statuses.count(200) >= len(statuses) // 2  # the other replica kept answering
    assert {a for s, a in outcomes if s == 200} <= {outcomes[statuses.index(200)][1]}
    # Ray Serve replaces the dead replica.
    deadline = time.monotonic() + 40
    while _running() < 2 or victim in (names := _replica_names()) or len(names) < 2:
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.5)
    assert httpx.post(f"{cluster}/v1/qa", json=ASK, timeout=30).status_code == 200


def test_the_live_cluster_is_read_for_the_up_front_check(cluster):
    from bertrt.errors import UserError
    from bertrt.serve.deployment import check_resources, cluster_nodes

    nodes = cluster_nodes()
    assert sum(n.get("CPU", 0) for n in nodes) == 4 and not any(n.get("GPU") for n in nodes)
    check_resources(nodes, replicas=2, num_gpus_per_replica=0, num_cpus_per_replica=1)
    with pytest.raises(UserError, match=r"needs 2 GPU\(s\) and 2 CPU\(s\); the Ray cluster has 0 GPU\(s\) and 4 CPU"):
        check_resources(nodes, replicas=2, num_gpus_per_replica=1, num_cpus_per_replica=1)


def test_the_proxy_times_out_only_after_the_app_would():
    from bertrt.serve import ServeSettings
    from bertrt.serve.deployment import http_options

    options = http_options("127.0.0.1", 8000, ServeSettings(timeout_s=7))
    # The app's own 504 comes first; the proxy's 408 only for what the app never answers.
    assert options["request_timeout_s"] > 7 and (options["host"], options["port"]) == ("127.0.0.1", 8000)
