"""`bertrt evaluate` given bad files: one line naming the flag and the file."""

from __future__ import annotations

import copy
import json

import pytest

from cli_helpers import SMALL_SQUAD, fails


def _evaluate(data, predictions, *extra):
    return ["evaluate", "--data", data, "--predictions", predictions, *extra]


@pytest.fixture
def predictions(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"q1": "on the mat", "q2": "the Mediterranean Sea"}))
    return path


def test_predictions_not_json(tmp_path, squad_file, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    assert fails(_evaluate(squad_file, bad), capsys, untouched=tmp_path) == (
        f"--predictions {bad}: not valid JSON (Expecting property name enclosed in double quotes at line 1)")


def test_predictions_a_list(tmp_path, squad_file, capsys):
    bad = tmp_path / "p.json"
    bad.write_text('["on the mat"]')
    assert "expected a JSON object of qid -> answer" in fails(_evaluate(squad_file, bad), capsys, untouched=tmp_path)


def test_prediction_that_is_not_text(tmp_path, squad_file, capsys):
    bad = tmp_path / "p.json"
    bad.write_text('{"q1": 3}')
    assert "the answer to 'q1' is not a string" in fails(_evaluate(squad_file, bad), capsys, untouched=tmp_path)


def test_predictions_not_utf8(tmp_path, squad_file, capsys):
    bad = tmp_path / "p.json"
    bad.write_bytes(b'{"q1": "caf\xe9"}')
    assert fails(_evaluate(squad_file, bad), capsys, untouched=tmp_path) == (
        f"--predictions {bad}: not UTF-8 text (bad byte at offset 11)")


def test_data_is_a_folder(tmp_path, predictions, capsys):
    assert fails(_evaluate(tmp_path, predictions), capsys, untouched=tmp_path) == (
        f"--data {tmp_path}: is a folder, not a file")


def test_data_nested_too_deeply(tmp_path, predictions, capsys):
    data = tmp_path / "deep.json"
    data.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert fails(_evaluate(data, predictions), capsys, untouched=tmp_path) == (
        f"--data {data}: JSON nested too deeply to read")


def test_data_without_gold_answers(tmp_path, predictions, capsys):
    bare = copy.deepcopy(SMALL_SQUAD)
    bare["data"][1]["paragraphs"][0]["qas"][0]["answers"] = []
    data = tmp_path / "bare.json"
    data.write_text(json.dumps(bare))
    assert fails(_evaluate(data, predictions), capsys, untouched=tmp_path) == (
        f"--data {data}: question 'q2' has no gold answers to score against")


def test_answers_not_a_list(tmp_path, predictions, capsys):
    bad = copy.deepcopy(SMALL_SQUAD)
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"] = "on the mat"
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(bad))
    assert '"answers" must be a list' in fails(_evaluate(data, predictions), capsys, untouched=tmp_path)


def test_articles_past_the_end(tmp_path, squad_file, predictions, capsys):
    assert fails(_evaluate(squad_file, predictions, "--articles", "5:9"), capsys, untouched=tmp_path) == (
        f"--data {squad_file}: no questions in the chosen articles")


def test_one_article_number_means_that_article(squad_file, predictions, capsys):
    from cli_helpers import run

    code, out, err = run(_evaluate(squad_file, predictions, "--articles", "1"), capsys)
    assert code == 0, err
    assert json.loads(out) == {"exact_match": 100.0, "f1": 100.0}
