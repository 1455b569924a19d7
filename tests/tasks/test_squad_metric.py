"""SQuAD v1.1 metric: hand-checked cases and the gold answers of the whole dev set."""

import json

import pytest

from bertrt.tasks.squad_metric import evaluate, exact_match_score, f1_score, normalize_answer


@pytest.mark.parametrize("raw, normalized", [
    ("The  Quick, brown FOX!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("Theater Anna anthem", "theater anna anthem"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("rock–paper “scissors”", "rock–paper “scissors”"),  # only ASCII punctuation goes
    ("the-end", "theend"),  # punctuation goes before articles are looked for
    ("rock–a–roll", "rock– –roll"),  # an article becomes a space, splitting the token
    ("  \tA\n", ""),
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match_score("The Eiffel Tower.", "eiffel tower")
    assert not exact_match_score("Eiffel Tower", "the tower")
    assert f1_score("Denver Broncos", "denver broncos!") == 1.0
    # pred {big, red, dog}, truth {red, dog, barking}: P = R = 2/3.
    assert f1_score("the big red dog", "red dog barking") == pytest.approx(2 / 3)
    # Counts matter: one shared "dog" of three predicted, P = 1/3, R = 1, F1 = 0.5.
    assert f1_score("dog dog dog", "dog") == pytest.approx(0.5)
    assert f1_score("Paris", "London") == 0.0
    assert f1_score("", "London") == 0.0
    # Answers that normalise to nothing match exactly but, as in the official script, share no
    # token (one dev question lists "." among its gold answers).
    assert exact_match_score(".", "the") and f1_score(".", "the") == 0.0


def _dataset(*qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in answers]}
        for qid, answers in qas]}]}]


def test_evaluate_averages_over_all_questions(capsys):
    data = _dataset(("q1", ["Denver Broncos", "Broncos"]), ("q2", ["red dog barking"]), ("q3", ["x"]))
    result = evaluate(data, {"q1": "the Broncos", "q2": "big red dog", "extra": "ignored"})
    assert result["exact_match"] == pytest.approx(100 / 3)  # q1 matches its second gold answer
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert "Unanswered question q3 will receive score 0." in capsys.readouterr().err
    assert evaluate(data, {"q1": "Broncos", "q2": "red dog barking", "q3": "X."}) == {
        "exact_match": 100.0, "f1": 100.0}


def test_gold_answers_score_100_on_dev(squad_dev):
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    gold = {qa["id"]: qa["answers"][0]["text"] for a in data for p in a["paragraphs"] for qa in p["qas"]}
    assert len(gold) == 10570
    assert evaluate(data, gold) == {"exact_match": 100.0, "f1": 100.0}
    # Dropping one answer costs exactly one question out of 10570.
    gold.pop(next(iter(gold)))
    assert evaluate(data, gold)["exact_match"] == pytest.approx(100 * 10569 / 10570)
