"""The bertrt backend's CUDA-graph limit: from the options to the engine, and what it captures."""

from __future__ import annotations

import torch

from bertrt.harness.loadgen.backends import GRAPH_MAX_TOKENS, PackedBackend


class GraphedModel:
    """An engine's graph interface, recording what it is asked to capture."""

    graphs = True

    def __init__(self):
        self.graph_max_tokens = None
        self.captured: list[int] = []

    def capture(self, token_counts):
        self.captured += list(token_counts)


def test_the_limit_reaches_the_engine_and_bounds_the_captures():
    model = GraphedModel()
    backend = PackedBackend(model, torch.device("cpu"), "bertrt-engine", graph_max_tokens=16384)
    assert model.graph_max_tokens == 16384  # the engine replays graphs up to here, eager above
    backend.capture_graphs()
    assert max(model.captured) == 16384 and min(model.captured) == 64


def test_the_default_limit():
    model = GraphedModel()
    PackedBackend(model, torch.device("cpu"), "bertrt-engine").capture_graphs()
    assert model.graph_max_tokens == GRAPH_MAX_TOKENS == max(model.captured)


def test_make_backend_passes_the_limit(monkeypatch):
    from bertrt.harness.loadgen import backends

    made = {}
    monkeypatch.setattr(backends, "PackedBackend", lambda model, device, name, **kw: made.update(kw) or "backend")

    class FakeEngine:
        @staticmethod
        def load(engine, device):
            return "engine"

    monkeypatch.setattr("bertrt.engine.Engine", FakeEngine)
    assert backends.make_backend("bertrt", engine="e", device=torch.device("cpu"), graph_max_tokens=49152) == "backend"
    assert made == {"graph_max_tokens": 49152}
    backends.make_backend("bertrt", engine="e", device=torch.device("cpu"))
    assert made == {"graph_max_tokens": GRAPH_MAX_TOKENS}
