"""Building and saving an engine: the files, engine.json, atomic replacement, limits, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from bertrt import __version__
from bertrt.cli import main
from bertrt.engine import EngineError, build
from bertrt.engine.format import FORMAT_VERSION
from bertrt.weights.schema import encoder_shapes


def test_engine_folder_and_description(minilm_engine_dir, minilm_qa):
    assert sorted(p.name for p in minilm_engine_dir.iterdir()) == ["engine.json", "vocab.txt", "weights.safetensors"]
    spec = json.loads((minilm_engine_dir / "engine.json").read_text())
    weights = minilm_engine_dir / "weights.safetensors"
    assert spec["format"] == "bertrt-engine" and spec["format_version"] == FORMAT_VERSION
    assert spec["bertrt_version"] == __version__
    assert spec["config"] == dataclasses.asdict(minilm_qa.config)
    assert (spec["precision"], spec["max_seq_length"], spec["max_batch"], spec["max_tokens"]) == ("fp32", 128, 4, 256)
    assert spec["compute_capability"] is None  # built with device="cpu"
    assert spec["heads"] == ["qa"] and spec["has_pooler"] is True
    assert spec["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert spec["weights"]["bytes"] == weights.stat().st_size
    assert spec["vocab"]["sha256"] == hashlib.sha256((minilm_engine_dir / "vocab.txt").read_bytes()).hexdigest()
    assert (minilm_engine_dir / "vocab.txt").read_bytes() == minilm_qa.vocab_file.read_bytes()


def test_fp16_build_stores_canonical_tensors_in_fp16(tiny_checkpoint, tmp_path):
    out = build(tiny_checkpoint, tmp_path / "e16", precision="fp16", device="cpu")
    tensors = load_file(str(out / "weights.safetensors"))
    assert set(tensors) == set(tiny_checkpoint.tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    for name, shape in encoder_shapes(tiny_checkpoint.config).items():
        assert tuple(tensors[name].shape) == shape
    torch.testing.assert_close(tensors["layers.1.ffn.in.weight"].float(),
                               tiny_checkpoint.tensors["layers.1.ffn.in.weight"], atol=1e-3, rtol=1e-3)
    assert json.loads((out / "engine.json").read_text())["vocab"] is None  # random weights: no vocab


def test_rebuild_replaces_engine_and_leaves_no_temporaries(tiny_checkpoint, tmp_path):
    out = tmp_path / "engine"
    build(tiny_checkpoint, out, precision="fp32", device="cpu")
    build(tiny_checkpoint, out, precision="bf16", device="cpu")
    assert json.loads((out / "engine.json").read_text())["precision"] == "bf16"
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_engine(tiny_checkpoint, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(EngineError, match="not a bertrt engine"):
        build(tiny_checkpoint, precious, precision="fp32", device="cpu")
    assert (precious / "cat.jpg").read_bytes() == b"meow"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize("limits, message", [
    (dict(max_seq_length=65), "max_position_embeddings"),
    (dict(max_seq_length=64, max_tokens=32), "at least max_seq_length"),
    (dict(max_batch=0), "max_batch"),
])
def test_bad_limits_are_refused(tiny_checkpoint, tmp_path, limits, message):
    with pytest.raises(EngineError, match=message):
        build(tiny_checkpoint, tmp_path / "e", precision="fp32", device="cpu", **limits)
    assert not (tmp_path / "e").exists()


def test_default_limits_follow_the_model(tiny_checkpoint, tmp_path):
    spec = json.loads((build(tiny_checkpoint, tmp_path / "e", device="cpu") / "engine.json").read_text())
    assert spec["precision"] == "fp16"
    assert spec["max_seq_length"] == 64  # min(384, max_position_embeddings)
    assert spec["max_tokens"] == spec["max_batch"] * 64


def test_cli_build(minilm_qa, tmp_path, capsys):
    out = tmp_path / "cli-engine"
    code = main(["build", "--model", str(minilm_qa.source), "--out", str(out), "--precision", "fp32",
                 "--max-seq-length", "256", "--device", "cpu"])
    assert code == 0
    assert "built" in capsys.readouterr().out
    spec = json.loads((out / "engine.json").read_text())
    assert spec["max_seq_length"] == 256 and spec["heads"] == []  # MiniLM itself has no QA head


def test_cli_build_rejects_bad_input(tmp_path, capsys):
    assert main(["build", "--random", "minilm", "--out", str(tmp_path / "e"), "--max-batch", "0"]) == 2
    assert "--max-batch must be positive" in capsys.readouterr().err
    assert main(["build", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()


def test_a_model_the_engine_does_not_run_is_refused_before_any_work(tiny_checkpoint, tmp_path):
    import dataclasses

    from bertrt.errors import ConfigError
    from bertrt.weights.schema import Checkpoint

    relu = dataclasses.replace(tiny_checkpoint.config, hidden_act="relu")
    with pytest.raises(ConfigError, match="hidden_act 'relu'.*reference path"):
        build(Checkpoint(relu, dict(tiny_checkpoint.tensors)), tmp_path / "e", device="cpu")
    assert not (tmp_path / "e").exists()
