"""Loading an engine, and every way a load must fail with a clear EngineError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertrt.engine import Engine, EngineError
from bertrt.engine.format import check_compute_capability, content_checksum, file_sha256


def _edit_spec(folder, *, sign: bool = True, **changes):
    """Change fields of engine.json, re-signed (so that the field itself is what a load checks)
    unless ``sign`` is False."""
    path = folder / "engine.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    if sign:
        spec["checksum"] = content_checksum({k: v for k, v in spec.items() if k != "checksum"})
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize("changes", [dict(max_batch=2), dict(config={"num_attention_heads": 1})])
def test_an_edited_description_is_refused(tiny_engine_dir, changes):
    before = json.loads((tiny_engine_dir / "engine.json").read_text())
    if "config" in changes:
        changes = dict(config={**before["config"], **changes["config"]})
    _edit_spec(tiny_engine_dir, sign=False, **changes)
    with pytest.raises(EngineError, match="does not match its checksum.*rebuild"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_an_edited_vocab_is_refused(minilm_engine_dir, tmp_path):
    import shutil

    folder = tmp_path / "engine"
    shutil.copytree(minilm_engine_dir, folder)
    vocab = folder / "vocab.txt"
    words = vocab.read_text(encoding="utf-8").splitlines()
    words[1000], words[1001] = words[1001], words[1000]
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    with pytest.raises(EngineError, match="vocab.txt: checksum mismatch"):
        Engine.load(folder, device="cpu")


def test_load_round_trip(tiny_engine_dir, tiny_checkpoint):
    engine = Engine.load(tiny_engine_dir, device="cpu")
    assert engine.device == torch.device("cpu") and engine.graphs is False
    assert engine.config == tiny_checkpoint.config and engine.heads == ("qa", "classifier")
    for name, tensor in engine.tensors().items():
        assert torch.equal(tensor, tiny_checkpoint.tensors[name]), name
    assert engine.vocab_file is None


def test_not_an_engine(tmp_path):
    with pytest.raises(EngineError, match="no such engine folder"):
        Engine.load(tmp_path / "absent")
    with pytest.raises(EngineError, match="no engine.json"):
        Engine.load(tmp_path)


def test_missing_weights(tiny_engine_dir):
    (tiny_engine_dir / "weights.safetensors").unlink()
    with pytest.raises(EngineError, match="weights.safetensors is missing"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_flipped_byte_is_a_checksum_error(tiny_engine_dir):
    weights = tiny_engine_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="checksum mismatch"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_truncated_weights(tiny_engine_dir):
    weights = tiny_engine_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(EngineError, match="truncated"):
        Engine.load(tiny_engine_dir, device="cpu")


@pytest.mark.parametrize("changes, message", [
    (dict(format_version=99), "format version 99"),
    (dict(bertrt_version="0.0.1"), "built by bertrt '0.0.1'"),
    (dict(format="something-else"), "not a bertrt engine"),
    (dict(precision="fp8"), "invalid engine description"),
    (dict(max_seq_length=1000), "max_position_embeddings"),
    (dict(compute_capability=[9]), "compute_capability"),
])
def test_bad_description(tiny_engine_dir, changes, message):
    _edit_spec(tiny_engine_dir, **changes)
    with pytest.raises(EngineError, match=message):
        Engine.load(tiny_engine_dir, device="cpu")


def test_missing_field(tiny_engine_dir):
    path = tiny_engine_dir / "engine.json"
    spec = json.loads(path.read_text())
    del spec["weights"]
    spec["checksum"] = content_checksum({k: v for k, v in spec.items() if k != "checksum"})
    path.write_text(json.dumps(spec))
    with pytest.raises(EngineError, match="missing field 'weights'"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_bad_json(tiny_engine_dir):
    (tiny_engine_dir / "engine.json").write_text('{"format": "bertrt-engine", ')
    with pytest.raises(EngineError, match="not valid JSON"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_weights_that_do_not_match_the_description(tiny_engine_dir):
    """A consistent checksum is not enough: names, shapes and dtype must match engine.json too."""
    weights = tiny_engine_dir / "weights.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v.half() for k, v in tensors.items()}, str(weights))
    _edit_spec(tiny_engine_dir, weights={"file": weights.name, "sha256": file_sha256(weights),
                                         "bytes": weights.stat().st_size})
    with pytest.raises(EngineError, match="engine.json says fp32"):
        Engine.load(tiny_engine_dir, device="cpu")
    del tensors["layers.1.ffn.out.bias"]
    save_file(tensors, str(weights))
    _edit_spec(tiny_engine_dir, weights={"file": weights.name, "sha256": file_sha256(weights),
                                         "bytes": weights.stat().st_size})
    with pytest.raises(EngineError, match="layers.1.ffn.out.bias"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_missing_vocab(minilm_engine_dir, tmp_path):
    import shutil

    copy = shutil.copytree(minilm_engine_dir, tmp_path / "e")
    (copy / "vocab.txt").unlink()
    with pytest.raises(EngineError, match="vocab.txt is missing"):
        Engine.load(copy, device="cpu")


def test_compute_capability_check():
    check_compute_capability((9, 0), (9, 0), source="e")
    check_compute_capability(None, (9, 0), source="e")   # a CPU build runs anywhere
    check_compute_capability((9, 0), None, source="e")   # any build loads onto the CPU
    with pytest.raises(EngineError, match="built for GPU compute capability 8.0, this GPU is 9.0"):
        check_compute_capability((8, 0), (9, 0), source="e")


def test_gpu_build_loads_on_cpu_but_not_on_another_gpu(tiny_engine_dir):
    _edit_spec(tiny_engine_dir, compute_capability=[1, 0])  # no real GPU has 1.0
    assert Engine.load(tiny_engine_dir, device="cpu").config.num_hidden_layers == 2
    if torch.cuda.is_available():
        with pytest.raises(EngineError, match="compute capability 1.0"):
            Engine.load(tiny_engine_dir, device="cuda")
    else:
        from bertrt.errors import DeviceError

        with pytest.raises(DeviceError, match="no CUDA GPU"):
            Engine.load(tiny_engine_dir, device="cuda")


def test_cli_reports_a_bad_engine_in_one_line(tiny_engine_dir, capsys):
    from bertrt.cli import main

    (tiny_engine_dir / "engine.json").write_text("nonsense")
    assert main(["perf", "--engine", str(tiny_engine_dir), "--device", "cpu", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertrt perf: error:") and "not valid JSON" in err and "\n" not in err
