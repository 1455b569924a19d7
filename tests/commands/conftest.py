"""Fixtures of the command tests (helpers in ``cli_helpers``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import SMALL_SQUAD, save_model


@pytest.fixture(scope="session")
def tiny_qa(tmp_path_factory) -> Path:
    """A 1-layer random BERT with a QA head (read-only: copy it before changing it)."""
    return save_model(tmp_path_factory.mktemp("models") / "tiny-qa")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """The same without any head."""
    return save_model(tmp_path_factory.mktemp("models") / "tiny-encoder", heads=())


@pytest.fixture
def model_copy(tiny_qa, tmp_path):
    """A fresh copy of the tiny QA model to edit: ``model_copy()`` -> its folder."""
    import shutil

    def copy(name: str = "model") -> Path:
        return Path(shutil.copytree(tiny_qa, tmp_path / name))
    return copy


@pytest.fixture
def squad_file(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_SQUAD), encoding="utf-8")
    return path




@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Path:
    """A CPU engine of the tiny random BERT (no vocab.txt): max_seq_length 64, max_batch 4."""
    from bertrt.engine import build
    from bertrt.weights import random_checkpoint

    from cli_helpers import tiny_config

    return build(random_checkpoint(tiny_config()), tmp_path_factory.mktemp("engines") / "tiny", precision="fp32",
                 max_seq_length=64, max_batch=4, device="cpu")
