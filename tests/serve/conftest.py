"""Fixtures for the server tests: the embedded model on the CPU, and apps run by a real uvicorn."""

from __future__ import annotations

import pytest
from serve_testing import GatedRunner, running

from bertrt.serve import ServedModel, ServeSettings, create_app


@pytest.fixture(scope="session")
def served() -> ServedModel:
    return ServedModel.load(device="cpu")


@pytest.fixture
def serve(served):
    """``serve(settings=..., model=...)`` -> a context manager giving a client of a running server."""
    def start(settings: ServeSettings = ServeSettings(), model: ServedModel | None = None, **kw):
        return running(create_app(model or served, settings, **kw))
    return start


@pytest.fixture
def gated(served):
    """A ServedModel of the embedded weights whose runner is a GatedRunner (``.runner``)."""
    runner = GatedRunner(served.runner)
    model = ServedModel(runner, served.tokenizer, name="gated", device="cpu")
    model.warm_up()
    runner.batches.clear()
    runner.entered.clear()
    return model
