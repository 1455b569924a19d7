"""Bare PyTorch state dicts and safetensors files, the errors every loader must name, and save_hf_folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from loader_helpers import TF_FIXTURE, padded, qa_max_diff, sample_sequences, tiny_hf
from safetensors.torch import save_file

from bertrt.config import ConfigError
from bertrt.weights import CheckpointError, load_checkpoint, save_hf_folder


def write_state(folder: Path, name: str, state: dict, config: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def hf_qa():
    return tiny_hf()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "weights.pth", "model.safetensors"])
def test_bare_state_dict(tmp_path, hf_qa, name):
    path = write_state(tmp_path, name, hf_qa.state_dict(), hf_qa.config.to_dict())
    ckpt = load_checkpoint(path)
    assert ckpt.heads == ("qa",)
    assert torch.equal(ckpt.tensors["embeddings.word"], hf_qa.bert.embeddings.word_embeddings.weight)
    assert qa_max_diff(hf_qa, ckpt) <= 1e-5


def test_state_dict_without_bert_prefix(tmp_path, hf_qa):
    """A bare BertModel state dict (no ``bert.``) loads too."""
    state = hf_qa.bert.state_dict()
    ckpt = load_checkpoint(write_state(tmp_path, "encoder.bin", state, hf_qa.config.to_dict()))
    assert ckpt.heads == () and torch.equal(ckpt.tensors["layers.1.ffn.out.bias"],
                                            state["encoder.layer.1.output.dense.bias"])


def test_needs_config_beside(tmp_path, hf_qa):
    path = write_state(tmp_path, "model.safetensors", hf_qa.state_dict(), None)
    with pytest.raises(CheckpointError, match="needs the model's config.json beside it"):
        load_checkpoint(path)


def _run_on_unpickle(marker: str) -> None:
    Path(marker).write_text("the pickle ran code")


class Payload:
    """An object whose unpickling calls a function: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _run_on_unpickle, (self.marker,)


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, hf_qa):
    marker = tmp_path / "ran.txt"
    state = {**hf_qa.state_dict(), "extra": Payload(marker)}
    path = write_state(tmp_path, "pytorch_model.bin", state, hf_qa.config.to_dict())
    with pytest.raises(CheckpointError, match="never unpickles arbitrary objects"):
        load_checkpoint(path)
    assert not marker.exists()
    # The file really does carry code: an unrestricted load runs it.
    torch.load(str(path), weights_only=False)
    assert marker.read_text() == "the pickle ran code"


def test_truncated_safetensors(tmp_path, hf_qa):
    path = write_state(tmp_path, "model.safetensors", hf_qa.state_dict(), hf_qa.config.to_dict())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(path)


def test_missing_tensor_is_named(tmp_path, hf_qa):
    state = dict(hf_qa.state_dict())
    del state["bert.encoder.layer.1.output.LayerNorm.bias"]
    with pytest.raises(CheckpointError, match=r"missing tensors: layers\.1\.ffn\.ln\.bias"):
        load_checkpoint(write_state(tmp_path, "m.safetensors", state, hf_qa.config.to_dict()))


def test_wrong_shape_is_named(tmp_path, hf_qa):
    state = dict(hf_qa.state_dict())
    state["bert.encoder.layer.0.intermediate.dense.bias"] = torch.zeros(65)
    with pytest.raises(CheckpointError, match=r"layers\.0\.ffn\.in\.bias has shape \(65,\), expected \(64,\)"):
        load_checkpoint(write_state(tmp_path, "m.safetensors", state, hf_qa.config.to_dict()))


def test_unknown_family_refused(tmp_path, hf_qa):
    config = {**hf_qa.config.to_dict(), "model_type": "deberta-v2"}
    with pytest.raises(ConfigError, match="model_type is 'deberta-v2'"):
        load_checkpoint(write_state(tmp_path, "m.safetensors", hf_qa.state_dict(), config))


def test_config_without_hidden_size_refused(tmp_path, hf_qa):
    config = {k: v for k, v in hf_qa.config.to_dict().items() if k != "hidden_size"}
    with pytest.raises(ConfigError, match="missing hidden_size"):
        load_checkpoint(write_state(tmp_path, "m.safetensors", hf_qa.state_dict(), config))


def test_unknown_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(path)


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path)


# --- save_hf_folder round trip ---------------------------------------------------------------------

@pytest.mark.parametrize("source", ["hf-classifier", "tf-squad"])
def test_save_hf_folder_round_trip(tmp_path, source):
    import transformers

    if source == "tf-squad":
        ckpt = load_checkpoint(TF_FIXTURE)  # fp16 pooler, bf16 QA bias: saved as they are
        cls = transformers.BertForQuestionAnswering
    else:
        model = tiny_hf("BertForSequenceClassification", num_labels=3)
        ckpt = load_checkpoint(write_state(tmp_path / "src", "m.safetensors", model.state_dict(),
                                           model.config.to_dict()))
        cls = transformers.BertForSequenceClassification
    out = save_hf_folder(ckpt, tmp_path / "saved")
    again = load_checkpoint(out)
    assert again.config == ckpt.config
    assert again.tensors.keys() == ckpt.tensors.keys()
    for name, tensor in ckpt.tensors.items():
        assert again.tensors[name].dtype == tensor.dtype and torch.equal(again.tensors[name], tensor), name
    assert (again.vocab_file is None) == (ckpt.vocab_file is None)

    # transformers reads the folder and computes what ReferenceBert computes on the original.
    hf = cls.from_pretrained(str(out), dtype=torch.float32).eval()
    if source == "tf-squad":
        assert qa_max_diff(hf, ckpt) <= 1e-5
    else:
        from bertrt.packed import pack_sequences
        from bertrt.reference import ReferenceBert

        ids, types = sample_sequences(64, (5, 11))
        with torch.no_grad():
            ours = ReferenceBert.from_checkpoint(ckpt).classify(pack_sequences(ids, types))
            theirs = hf(**padded(ids, types)).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
