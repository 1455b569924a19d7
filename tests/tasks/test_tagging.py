"""Token classification with word-level aggregation against Hugging Face's pipeline, and the tag command."""

from __future__ import annotations

import json

import pytest

from bertrt.cli import main
from bertrt.tasks.loading import load_for_task
from bertrt.tasks.tagging import Word, group_words, tag, tag_words
from bertrt.weights import CheckpointError
from task_helpers import bert_folder, roberta_folder

transformers = pytest.importorskip("transformers")

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = ["Ada Lovelace lived in London with Charles Babbage.", "  Zebra-stripes in Café naïve, 東京!  ",
         "unbelievably long words get split into wordpieces"]


def hf_entities(folder, text):
    pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy="first",
                                 device="cpu")
    return [(e["entity_group"], e["start"], e["end"]) for e in pipe(text)]


def test_entities_match_the_hugging_face_pipeline(tmp_path):
    folder = tmp_path / "bert"
    for seed in range(3):
        bert_folder(folder, "BertForTokenClassification", labels=LABELS, seed=seed)
        task_model = load_for_task(folder, "token-classification")
        for text in TEXTS:
            ours = tag(task_model, text)
            assert all(text[e.start:e.end] == e.text and e.text == e.text.strip() for e in ours)
            assert [(e.label, e.start, e.end) for e in ours] == hf_entities(folder, text)


def test_roberta_words_take_their_first_tokens_label(tmp_path):
    """Hugging Face's pipeline splits byte-level BPE words by a spacing rule (and reports lone-space
    tokens as empty entities); here words are the pre-tokenizer's, so compare labels token by token."""
    folder = tmp_path / "roberta"
    roberta_folder(folder, "RobertaForTokenClassification", num_labels=5)
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "id2label": dict(enumerate(LABELS))}))
    task_model = load_for_task(folder, "token-classification")
    pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy="none",
                                 ignore_labels=[], device="cpu")
    for text in TEXTS:
        theirs = {}
        for t in pipe(text):  # the first token at each start (byte pieces of one character share it)
            if t["start"] < t["end"]:
                theirs.setdefault(t["start"], (t["entity"], t["score"]))
        words = tag_words(task_model, text)
        assert words and all(text[w.start:w.end] == text[w.start:w.end].strip() != "" for w in words)
        for w in words:
            assert theirs[w.start][0] == w.label and theirs[w.start][1] == pytest.approx(w.score, abs=1e-4)
        assert [e.text for e in tag(task_model, text)] == [text[e.start:e.end] for e in tag(task_model, text)]


def test_grouping_rules():
    text = "Ada Lovelace met Bob in Paris"
    words = [Word("B-PER", 0.9, 0, 3), Word("I-PER", 0.7, 4, 12), Word("O", 0.99, 13, 16),
             Word("B-PER", 0.8, 17, 20), Word("O", 0.9, 21, 23), Word("I-LOC", 0.6, 24, 29)]
    entities = group_words(text, words)
    assert [(e.label, e.text) for e in entities] == [("PER", "Ada Lovelace"), ("PER", "Bob"), ("LOC", "Paris")]
    assert entities[0].score == pytest.approx(0.8)
    # A B- tag starts a new entity even right after one of the same type.
    split = group_words("Ada Bob", [Word("B-PER", 1.0, 0, 3), Word("B-PER", 1.0, 4, 7)])
    assert [e.text for e in split] == ["Ada", "Bob"]


def test_texts_longer_than_the_window_are_tagged_throughout(tmp_path):
    bert_folder(tmp_path / "ner", "BertForTokenClassification", labels=LABELS)
    task_model = load_for_task(tmp_path / "ner", "token-classification")
    text = " ".join(["Ada Lovelace lived in London."] * 30)  # ~180 tokens, windows of 62
    words = tag_words(task_model, text)
    assert len(words) == 30 * 6 and words[-1].end == len(text)
    assert [text[w.start:w.end] for w in words[:6]] == ["Ada", "Lovelace", "lived", "in", "London", "."]


def test_tag_command_and_head_refusal(tmp_path, capsys):
    bert_folder(tmp_path / "ner", "BertForTokenClassification", labels=LABELS, seed=1)
    text = TEXTS[0]
    assert main(["tag", "--model", str(tmp_path / "ner"), "--text", text, "--json", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = tag(load_for_task(tmp_path / "ner", "token-classification"), text)
    assert [(d["label"], d["start"], d["end"], d["text"]) for d in lines] == [
        (e.label, e.start, e.end, e.text) for e in expected]
    bert_folder(tmp_path / "cls", "BertForSequenceClassification", labels=["neg", "pos"])
    with pytest.raises(CheckpointError, match="has a sequence-classification head"):
        load_for_task(tmp_path / "cls", "token-classification")
    assert main(["tag", "--model", str(tmp_path / "cls"), "--text", text, "--device", "cpu"]) == 2
    assert "run it with `bertrt classify`" in capsys.readouterr().err
