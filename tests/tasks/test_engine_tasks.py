"""classify / embed / tag on a saved engine (``--engine``): a ModernBERT engine, which carries its
checkpoint's tokenizer.json and label names, gives the reference path's answers."""

from __future__ import annotations

import json

import pytest
import torch

from bertrt.cli import main
from bertrt.engine import Engine, build
from bertrt.tasks.loading import load_for_task
from bertrt.weights import CheckpointError
from task_helpers import CORPUS, modernbert_folder

transformers = pytest.importorskip("transformers")

TEXTS = CORPUS[:4]


def engine_for(folder, tmp_path):
    return build(folder, tmp_path / "engine", precision="fp32", device="cpu")


def run_json(capsys, *args) -> list[dict]:
    assert main([*args, "--json", "--device", "cpu"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_modernbert_engine_carries_its_tokenizer_and_labels(tmp_path):
    model, fast = modernbert_folder(tmp_path / "hf", "ModernBertForSequenceClassification", labels=["neg", "pos"])
    path = engine_for(tmp_path / "hf", tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["engine.json", "tokenizer.json", "tokenizer_config.json",
                                                      "weights.safetensors"]
    task_model = load_for_task(None, "text-classification", engine=path, device="cpu")
    assert isinstance(task_model.model, Engine) and task_model.labels == ("neg", "pos")
    assert task_model.tokenizer.pair(*(task_model.tokenizer.encode(t).ids for t in TEXTS[:2]))[0] == fast(
        TEXTS[0], TEXTS[1])["input_ids"]
    (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text() + " ")
    with pytest.raises(Exception, match="tokenizer.json: checksum mismatch"):
        Engine.load(path, device="cpu")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classify_on_the_engine_matches_hugging_face(pooling, tmp_path, capsys):
    model, fast = modernbert_folder(tmp_path / "hf", "ModernBertForSequenceClassification",
                                    labels=["neg", "pos", "mixed"], classifier_pooling=pooling)
    path = engine_for(tmp_path / "hf", tmp_path)
    rows = [run_json(capsys, "classify", "--engine", str(path), "--text", t)[0] for t in TEXTS]
    with torch.no_grad():
        probs = model(**fast(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    for row, p in zip(rows, probs):
        assert row["label"] == ["neg", "pos", "mixed"][int(p.argmax())]
        assert [row["probabilities"][k] for k in ("neg", "pos", "mixed")] == pytest.approx(p.tolist(), abs=1e-4)


def test_embed_and_tag_on_the_engine_give_the_reference_answers(tmp_path, capsys):
    modernbert_folder(tmp_path / "enc", "ModernBertModel", labels=["a", "b"])
    path = engine_for(tmp_path / "enc", tmp_path / "e1")
    args = ["embed", "--text", TEXTS[0], "--text", TEXTS[1], "--pooling", "mean"]
    assert main([*args, "--engine", str(path), "--device", "cpu"]) == 0
    ours = [json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()]
    assert main([*args, "--model", str(tmp_path / "enc"), "--device", "cpu"]) == 0
    ref = [json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()]
    assert torch.tensor(ours) == pytest.approx(torch.tensor(ref), abs=1e-4)

    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    modernbert_folder(tmp_path / "ner", "ModernBertForTokenClassification", labels=labels, seed=1)
    path = engine_for(tmp_path / "ner", tmp_path / "e2")
    ours = run_json(capsys, "tag", "--engine", str(path), "--text", TEXTS[1])
    ref = run_json(capsys, "tag", "--model", str(tmp_path / "ner"), "--text", TEXTS[1])
    assert [(d["label"], d["start"], d["end"]) for d in ours] == [(d["label"], d["start"], d["end"]) for d in ref]
    assert [d["score"] for d in ours] == pytest.approx([d["score"] for d in ref], abs=1e-4)
    with pytest.raises(CheckpointError, match="needs a sequence-classification head, but this engine has a token"):
        load_for_task(None, "text-classification", engine=path, device="cpu")


def test_pipelines_take_a_modernbert_engine_and_its_checkpoint(tmp_path):
    import bertrt

    model, fast = modernbert_folder(tmp_path / "hf", "ModernBertForSequenceClassification", labels=["neg", "pos"])
    path = engine_for(tmp_path / "hf", tmp_path)
    on_engine = bertrt.pipeline("text-classification", engine=path, device="cpu")
    on_reference = bertrt.pipeline("text-classification", model=tmp_path / "hf", device="cpu")
    assert type(on_engine.model).__name__ == "Engine"
    with torch.no_grad():
        probs = model(**fast(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    for got in (on_engine(TEXTS), on_reference(TEXTS)):
        assert [g["label"] for g in got] == [f"LABEL_{int(i)}" for i in probs.argmax(-1)]
        assert [g["score"] for g in got] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-4)
    vectors = bertrt.pipeline("feature-extraction", engine=path, device="cpu")(TEXTS[:2])
    assert vectors.shape == (2, 54)


def test_the_server_model_takes_a_modernbert_engine(tmp_path):
    import numpy as np

    from bertrt.serve.model import ServedModel

    model, fast = modernbert_folder(tmp_path / "hf", "ModernBertForSequenceClassification", labels=["neg", "pos"])
    served = ServedModel.load(engine=engine_for(tmp_path / "hf", tmp_path), device="cpu")
    ids = fast(TEXTS[0])["input_ids"]
    logits = served.run("classify", [np.asarray(ids, dtype=np.int32)], [np.zeros(len(ids), dtype=np.int32)]).result()
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits
    assert torch.from_numpy(logits) == pytest.approx(want, abs=1e-4)
    served.warm_up()
