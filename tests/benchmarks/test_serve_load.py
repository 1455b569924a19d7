"""benchmarks/serve_load.py end to end on the CPU with a tiny model and tiny rates: the plumbing
(server, baseline, Locust headless, report, plot), not the figures, which come from the device."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory) -> Path:
    from bertrt.config import BertConfig
    from bertrt.weights import load_checkpoint, random_checkpoint, save_hf_folder

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    checkpoint = dataclasses.replace(random_checkpoint(config, heads=("qa",)), vocab_file=load_checkpoint(None).vocab_file)
    return save_hf_folder(checkpoint, tmp_path_factory.mktemp("tiny") / "qa")


def test_load_report_for_bertrt_and_the_baseline(tmp_path, tiny_qa, squad_dev):
    # Not imported here: locust monkey-patches the standard library (gevent) on import.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (serve extra)")
    out = tmp_path / "load"
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_qa), "--device", "cpu", "--data",
                           str(squad_dev), "--count", "40", "--rates", "4,8", "--baseline-rates", "4",
                           "--duration-s", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "serve_load.json").read_text())
    assert [r["offered_rps"] for r in report["bertrt"]] == [4, 8]
    assert [r["offered_rps"] for r in report["baseline"]] == [4]
    for row in report["bertrt"] + report["baseline"]:
        assert row["requests"] > 0 and row["failures"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["achieved_rps"] > 0
    assert report["bertrt"][0]["mean_batch_windows"] >= 1
    assert report["summary"]["server_5xx"] == 0 and report["bertrt_exit_code"] == 0
    assert report["engine_alone"]["questions"] == 40 and report["engine_alone"]["questions_per_s"] > 0
    assert (out / "serve_load_p99.png").stat().st_size > 10_000
