"""benchmarks/serve_load.py end to end on the CPU with a tiny model and tiny rates: the plumbing
(server, baseline, the open-loop clients or Locust, budget, report, plot), not the figures, which
come from the device."""

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


def _run(args: list[str], out: Path) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "serve_load.json").read_text())


def test_load_report_for_bertrt_and_the_baseline(tmp_path, tiny_qa, squad_dev):
    out = tmp_path / "load"
    report = _run(["--model", str(tiny_qa), "--device", "cpu", "--data", str(squad_dev), "--count", "40",
                   "--sweep", "fp16/w1/k1=4,8", "--sweep", "fp16/w1/k2=8", "--sweep", "fp16/w2/k1/shared=4",
                   "--baseline-rates", "4",
                   "--duration-s", "3", "--grace-s", "5", "--processes", "2", "--commit", "abc123"], out)
    # The CPU serves the fp32 reference: the sweeps say so; one server serves both (same workers).
    assert [s["name"] for s in report["sweeps"]] == ["fp32/w1/k1", "fp32/w1/k2", "fp32/w2/k1/shared"]
    assert [r["offered_qps"] for r in report["sweeps"][0]["rows"]] == [4, 8]
    assert report["sweeps"][1]["rows"][0]["offered_rps"] == 4  # 8 questions/s, 2 per request
    assert [r["offered_qps"] for r in report["baseline"]] == [4]
    for row in [r for sweep in report["sweeps"] for r in sweep["rows"]] + report["baseline"]:
        assert row["requests"] > 0 and row["failures"] == 0 and row["statuses"] == {"200": row["requests"]}, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["achieved_qps"] > 0
        # Open loop: what was answered is what was offered, within the schedule's rounding.
        assert abs(row["achieved_qps"] - row["offered_qps"]) <= 0.25 * row["offered_qps"], row
    assert report["sweeps"][0]["rows"][0]["mean_batch_windows"] >= 1
    shared = report["sweeps"][2]["rows"][0]
    assert "mean_batch_windows" not in shared  # /metrics is per worker
    # Two workers in front of one model process, whose own CPU use is reported beside the total.
    assert report["sweeps"][2]["model_process"] == "shared"
    assert 0 <= shared["model_process_cpu_cores"] <= shared["server_cpu_cores"]
    assert report["sweeps"][1]["exit_code"] == 0 and report["sweeps"][2]["exit_code"] == 0
    assert all(s["server_5xx"] == 0 for s in report["summary"]["sweeps"].values())
    assert report["engine_alone"]["fp32"]["questions"] == 40 and report["engine_alone"]["fp32"]["questions_per_s"] > 0
    assert report["environment"]["git_sha"] == "abc123"
    assert sorted(p.name for p in out.iterdir()) == ["serve_load.json", "serve_load_p99.png", "servers.log"]
    assert (out / "serve_load_p99.png").stat().st_size > 10_000


def test_rates_past_the_budget_are_skipped_and_recorded(tmp_path, tiny_qa, squad_dev):
    report = _run(["--model", str(tiny_qa), "--device", "cpu", "--data", str(squad_dev), "--count", "20",
                   "--sweep", "fp16/w1/k1=4,6", "--baseline-rates", "", "--duration-s", "2", "--grace-s", "2",
                   "--budget-s", "1"], tmp_path / "load")
    assert report["sweeps"][0]["skipped"] == "past --budget-s"
    assert [r["skipped"] for r in report["sweeps"][0]["rows"]] == ["past --budget-s"] * 2
    assert report["summary"]["sweeps"]["fp32/w1/k1"]["qps_within_p99_target"] == 0


def test_locust_drives_the_same_report(tmp_path, tiny_qa, squad_dev):
    # Not imported here: locust monkey-patches the standard library (gevent) on import.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (serve extra)")
    report = _run(["--model", str(tiny_qa), "--device", "cpu", "--data", str(squad_dev), "--count", "20",
                   "--sweep", "fp16/w1/k1=4", "--baseline-rates", "", "--duration-s", "3", "--client", "locust",
                   "--processes", "1"], tmp_path / "load")
    row = report["sweeps"][0]["rows"][0]
    assert row["requests"] > 0 and row["failures"] == 0 and row["p99_ms"] > 0
    assert report["conditions"]["client"] == "locust"


def test_sweeps_are_parsed_and_bad_ones_refused():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    serve_load = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = serve_load  # dataclasses look their module up there
    try:
        spec.loader.exec_module(serve_load)
    finally:
        del sys.modules["serve_load"]
    sweep = serve_load.Sweep.parse("fp8/w4/k2=1000,2500.5")
    assert (sweep.precision, sweep.workers, sweep.per_request, sweep.rates) == ("fp8", 4, 2, (1000.0, 2500.5))
    assert sweep.name == "fp8/w4/k2" and sweep.model_process is None
    shared = serve_load.Sweep.parse("fp16/w4/k1/per-worker=800")
    assert shared.model_process == "per-worker" and shared.name == "fp16/w4/k1/per-worker"
    for bad in ("fp16/w0/k1=10", "fp16/w1/k1=", "fp16=10", "fp4/w1/k1=10", "fp16/w2/k1/both=10"):
        with pytest.raises(Exception, match="expected PRECISION"):
            serve_load.Sweep.parse(bad)
