"""Sequence classification, MRPC scoring and reranking against Hugging Face, and the classify command."""

from __future__ import annotations

import json

import pytest
import torch

from bertrt.cli import main
from bertrt.tasks.classification import classify, evaluate_pairs, rerank
from bertrt.tasks.loading import load_for_task
from bertrt.weights import CheckpointError
from task_helpers import bert_folder, roberta_folder

transformers = pytest.importorskip("transformers")

FIRSTS = ["He said the deal was off.", "Ada Lovelace lived in London.", "Short one.", "The quick brown fox."]
SECONDS = ["The deal, he said, was off.", "She lived in Paris.", "A much longer second sentence of the pair, "
           "long enough to be cut first when the pair does not fit.", "A lazy dog."]


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mrpc")
    model, tok = bert_folder(folder, "BertForSequenceClassification", labels=["different", "equivalent"])
    return folder, model, tok


def hf_logits(model, tok, firsts, seconds=None, **kwargs):
    inputs = tok(firsts, seconds, padding=True, truncation=True, return_tensors="pt", **kwargs)
    with torch.no_grad():
        return model(**inputs).logits


def test_pairs_match_hugging_face_with_label_names(pair_model):
    folder, model, tok = pair_model
    task_model = load_for_task(folder, "text-classification")
    preds = classify(task_model, FIRSTS, SECONDS, max_length=24)  # cuts the long pair as HF does
    theirs = hf_logits(model, tok, FIRSTS, SECONDS, max_length=24)
    assert (torch.tensor([p.logits for p in preds]) - theirs).abs().max().item() <= 1e-4
    probs = theirs.softmax(-1)
    for pred, row in zip(preds, probs):
        assert pred.label == ["different", "equivalent"][int(row.argmax())]
        assert pred.score == pytest.approx(float(row.max()), abs=1e-5)
        assert sum(pred.probabilities.values()) == pytest.approx(1.0)
    single = classify(task_model, FIRSTS)
    assert (torch.tensor([p.logits for p in single]) - hf_logits(model, tok, FIRSTS)).abs().max().item() <= 1e-4


def test_mrpc_tsv_accuracy_and_f1(pair_model, tmp_path, capsys):
    folder, model, tok = pair_model
    predicted = hf_logits(model, tok, FIRSTS, SECONDS).argmax(-1).tolist()
    gold = [1, 0, 1, 1]
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{g}\t{i}\t{i + 100}\t{a}\t{b}" for i, (g, a, b) in enumerate(zip(gold, FIRSTS, SECONDS))]
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["classify", "--model", str(folder), "--input", str(tmp_path / "dev.tsv"), "--json",
                 "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["gold"] for line in lines[:-1]] == gold
    assert [["different", "equivalent"].index(line["label"]) for line in lines[:-1]] == predicted
    tp = sum(p == g == 1 for p, g in zip(predicted, gold))
    fp = sum(p == 1 and g == 0 for p, g in zip(predicted, gold))
    fn = sum(p == 0 and g == 1 for p, g in zip(predicted, gold))
    assert lines[-1]["accuracy"] == pytest.approx(100 * sum(p == g for p, g in zip(predicted, gold)) / 4, abs=1e-3)
    assert lines[-1]["f1"] == pytest.approx(100 * 2 * tp / max(1, 2 * tp + fp + fn), abs=1e-3)
    assert lines[-1]["count"] == 4
    _, metrics = evaluate_pairs(load_for_task(folder, "text-classification"), FIRSTS, SECONDS, gold)
    assert metrics["accuracy"] == pytest.approx(lines[-1]["accuracy"], abs=1e-3)


def test_classify_command_text_and_pair(pair_model, capsys):
    folder, model, tok = pair_model
    assert main(["classify", "--model", str(folder), "--text", FIRSTS[0], "--pair", SECONDS[0],
                 "--device", "cpu"]) == 0
    label, score = capsys.readouterr().out.strip().split("\t")
    probs = hf_logits(model, tok, FIRSTS[:1], SECONDS[:1]).softmax(-1)[0]
    assert label == ["different", "equivalent"][int(probs.argmax())]
    assert float(score) == pytest.approx(float(probs.max()), abs=1e-4)


def test_rerank_sorts_by_the_cross_encoder_score(tmp_path, capsys):
    model, tok = roberta_folder(tmp_path / "ce", "RobertaForSequenceClassification", num_labels=1)
    query = "what is an encoder"
    passages = FIRSTS + SECONDS
    theirs = hf_logits(model, tok, [query] * len(passages), passages, max_length=64)[:, 0]
    ranked = rerank(load_for_task(tmp_path / "ce", "text-classification"), query, passages, max_length=64)
    assert [r.index for r in ranked] == theirs.argsort(descending=True).tolist()
    assert max(abs(r.score - float(theirs[r.index])) for r in ranked) <= 1e-4
    args = ["classify", "--model", str(tmp_path / "ce"), "--rerank", "--text", query, "--device", "cpu",
            "--max-length", "64"]
    assert main(args + [x for p in passages[:3] for x in ("--pair", p)]) == 0
    indices = [int(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert indices == theirs[:3].argsort(descending=True).tolist()


def test_rerank_refuses_a_multi_label_classifier(pair_model):
    with pytest.raises(ValueError, match="one-logit cross-encoder.*2 labels \\(different, equivalent\\)"):
        rerank(load_for_task(pair_model[0], "text-classification"), "q", ["a", "b"])


def test_a_token_classifier_is_refused_naming_its_head(tmp_path, capsys):
    bert_folder(tmp_path / "ner", "BertForTokenClassification", labels=["O", "B-PER", "I-PER"])
    with pytest.raises(CheckpointError, match="has a token-classification head \\(BertForTokenClassification\\)"):
        load_for_task(tmp_path / "ner", "text-classification")
    assert main(["classify", "--model", str(tmp_path / "ner"), "--text", "hi", "--device", "cpu"]) == 2
    assert "run it with `bertrt tag`" in capsys.readouterr().err


def test_plain_tsv_of_pairs_and_input_errors(pair_model, tmp_path, capsys):
    folder, model, tok = pair_model
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in zip(FIRSTS, SECONDS)), encoding="utf-8")
    assert main(["classify", "--model", str(folder), "--input", str(tmp_path / "pairs.tsv"), "--device", "cpu"]) == 0
    scores = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    theirs = hf_logits(model, tok, FIRSTS, SECONDS).softmax(-1).max(-1).values
    assert torch.allclose(torch.tensor(scores), theirs, atol=1e-4)
    (tmp_path / "mixed.tsv").write_text("one text\ntwo\ttexts\n", encoding="utf-8")
    assert main(["classify", "--model", str(folder), "--input", str(tmp_path / "mixed.tsv"), "--device", "cpu"]) == 2
    assert "every line to be a text, or every line text<TAB>pair" in capsys.readouterr().err
    assert main(["classify", "--model", str(folder), "--text", "a", "--pair", "b", "--pair", "c",
                 "--device", "cpu"]) == 2
    assert "several passages need --rerank" in capsys.readouterr().err
