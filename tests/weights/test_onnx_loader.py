"""ONNX files exported by torch.onnx.export from transformers BERTs, loaded back into canonical weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from loader_helpers import padded, qa_max_diff, sample_sequences, tiny_hf

from bertrt.packed import pack_sequences
from bertrt.reference import ReferenceBert
from bertrt.weights import CheckpointError, load_checkpoint

pytest.importorskip("onnx")


def export(model, folder, *, dynamo: bool, name: str = "model.onnx", config: bool = True):
    ids, types = sample_sequences(model.config.vocab_size, (6, 6))
    inputs = padded(ids, types)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        kwargs = dict(dynamic_shapes=({0: "batch", 1: "seq"},) * 3) if dynamo else dict(dynamic_axes=axes)
        torch.onnx.export(model, tuple(inputs[n] for n in names), str(path), input_names=names,
                          opset_version=18 if dynamo else 17, dynamo=dynamo, **kwargs)
    if config:
        model.config.to_json_file(str(folder / "config.json"))
    return path


@pytest.mark.parametrize("randomize", [True, False], ids=["random", "hf-init"])
def test_torchscript_export_qa(tmp_path, randomize):
    # HF's own init (biases 0, LayerNorm 1) makes the exporter share one initializer between many
    # parameters through Identity nodes; random values give every parameter its own.
    model = tiny_hf(randomize=randomize)
    path = export(model, tmp_path, dynamo=False)
    ckpt = load_checkpoint(path)
    assert ckpt.heads == ("qa",) and not ckpt.has_pooler
    state = model.state_dict()
    q = state["bert.encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(ckpt.tensors["layers.1.attn.qkv.weight"][:32], q)
    assert qa_max_diff(model, ckpt) <= 1e-5


def test_torchscript_export_classifier(tmp_path):
    model = tiny_hf("BertForSequenceClassification", num_labels=3)
    path = export(model, tmp_path, dynamo=False)
    ckpt = load_checkpoint(path)
    assert ckpt.heads == ("classifier",) and ckpt.has_pooler and ckpt.config.num_labels == 3
    ids, types = sample_sequences(64, (9, 4, 12))
    with torch.no_grad():
        ours = ReferenceBert.from_checkpoint(ckpt).classify(pack_sequences(ids, types))
        theirs = model(**padded(ids, types)).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_dynamo_export_qa(tmp_path):
    """The torch.export-based exporter leaves Linear weights anonymous: mapped by graph structure."""
    pytest.importorskip("onnxscript")
    model = tiny_hf()
    path = export(model, tmp_path, dynamo=True)
    import onnx

    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    assert "bert.encoder.layer.0.attention.self.query.weight" not in names  # really anonymous
    ckpt = load_checkpoint(path)
    assert ckpt.heads == ("qa",)
    assert qa_max_diff(model, ckpt) <= 1e-5


def test_vocab_beside_is_picked_up(tmp_path):
    path = export(tiny_hf(), tmp_path, dynamo=False)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    assert load_checkpoint(path).vocab_file == tmp_path / "vocab.txt"


def test_config_required(tmp_path):
    path = export(tiny_hf(), tmp_path, dynamo=False, config=False)
    with pytest.raises(CheckpointError, match="config.json must be beside"):
        load_checkpoint(path)


def test_config_that_does_not_match(tmp_path):
    path = export(tiny_hf(), tmp_path, dynamo=False)
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace(
        '"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    with pytest.raises(CheckpointError, match="layers.2.attn.qkv.weight"):
        load_checkpoint(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    tiny_hf().config.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(CheckpointError, match="cannot read ONNX model"):
        load_checkpoint(path)


@pytest.mark.parametrize("cls_name", ["BertForQuestionAnswering", "BertForSequenceClassification"])
def test_name_and_structure_agree(tmp_path, cls_name):
    """Both ways of reading a TorchScript export give every tensor, and the same ones."""
    import onnx

    from bertrt.config import BertConfig
    from bertrt.weights import onnx_graph, onnx_loader
    from bertrt.weights.schema import from_hf_names

    model = tiny_hf(cls_name, **({"num_labels": 3} if "Classification" in cls_name else {}))
    path = export(model, tmp_path, dynamo=False)
    config = BertConfig.from_json(tmp_path / "config.json")
    graph = onnx_graph.Graph(onnx.load(str(path)).graph)
    by_name = from_hf_names(onnx_graph.named_state(graph), config, source="name")
    by_structure = from_hf_names(onnx_loader._structural_state(graph, config), config, source="structure")
    assert by_name.keys() == by_structure.keys()
    assert all(torch.equal(by_name[k], by_structure[k]) for k in by_name)
    assert load_checkpoint(path).tensors.keys() == by_name.keys()
