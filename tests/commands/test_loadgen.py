"""`bertrt loadgen`: bad settings and outputs refused before LoadGen starts; runs bounded and interruptible."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mlperf_loadgen")

from cli_helpers import fails, run, snapshot, warnings_of  # noqa: E402


def _loadgen(data, model, out, *extra):
    return ["loadgen", "--data", data, "--model", model, "--out", out, "--device", "cpu", *extra]


def test_out_is_a_file(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "report.txt"
    out.write_text("keep")
    assert fails(_loadgen(squad_file, tiny_qa, out), capsys, untouched=tmp_path) == (
        f"--out {out}: exists and is a file, not a folder; choose another path")


def test_out_holding_unrelated_files(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "mlperf_log_summary.txt").write_text("a run by another tool")
    assert "holds files bertrt did not write" in fails(_loadgen(squad_file, tiny_qa, out), capsys,
                                                       untouched=tmp_path)


def test_out_containing_the_data(tmp_path, squad_file, tiny_qa, capsys):
    assert fails(_loadgen(squad_file, tiny_qa, tmp_path, "--overwrite"), capsys, untouched=tmp_path) == (
        f"--out {tmp_path}: the input {squad_file} (--data) is inside it; choose another output folder")


@pytest.mark.parametrize("extra, message", [
    (["--target-latency-ms", "50"], "--target-latency-ms has no meaning in the Offline scenario"),
    (["--scenario", "SingleStream", "--target-qps", "10"], "--target-qps has no meaning in the SingleStream"),
    (["--mode", "accuracy", "--min-duration", "5"], "--min-duration only apply to --mode performance"),
    (["--target-qps", "inf"], "--target-qps must be a finite number"),
    (["--device", "cuda:x"], "--device 'cuda:x': expected auto, cpu, cuda or cuda:N"),
])
def test_settings_that_mean_nothing(tmp_path, squad_file, tiny_qa, capsys, extra, message):
    assert message in fails(_loadgen(squad_file, tiny_qa, tmp_path / "out", *extra), capsys, untouched=tmp_path)


def test_plot_would_replace_a_file(tmp_path, squad_file, tiny_qa, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "figure.png"
    plot.write_bytes(b"an earlier figure")
    assert fails(_loadgen(squad_file, tiny_qa, tmp_path / "out", "--plot", plot), capsys, untouched=tmp_path) == (
        f"--plot {plot}: exists; choose another name, or pass --overwrite to replace it")


def test_a_tiny_performance_run_is_fitted_and_replaces_only_its_own_output(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "out"
    started = time.monotonic()
    code, stdout, err = run(_loadgen(squad_file, tiny_qa, out, "--scenario", "SingleStream", "--count", "2"), capsys)
    assert code == 0, err
    assert time.monotonic() - started < 60  # LoadGen's bert defaults alone would ask for 600 s
    assert warnings_of(err, "loadgen") == [
        "2 samples, fewer than the full 10,833: the performance run is fitted to them: min_query_count 2 "
        "(LoadGen's bert default: 100), min_duration 0 s (default: 600 s); not a valid MLPerf run (give "
        "--min-query-count and --min-duration to choose)"]
    assert json.loads((out / "report.json").read_text())["samples_in_qsl"] == 2
    (out / "stale.txt").write_text("left by hand")
    code, _, err = run(_loadgen(squad_file, tiny_qa, out, "--scenario", "SingleStream", "--count", "2"), capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "mlperf_log_summary.txt").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ctrl_c_ends_a_run_within_seconds_and_keeps_the_previous_output(tmp_path, squad_file, tiny_qa):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bertrt-output").write_text(json.dumps({"written_by": "bertrt", "kind": "loadgen"}))
    (out / "report.json").write_text('{"an": "earlier run"}')
    before = snapshot(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertrt.cli", *map(str, _loadgen(
        squad_file, tiny_qa, out, "--scenario", "Server", "--target-qps", "2", "--min-duration", "600"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(Path(tmp_path).glob(".out.*/mlperf_log_detail.txt")):  # LoadGen has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 5
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "bertrt loadgen: interrupted"
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".out.*"))


def test_position_table_shorter_than_the_mlperf_window(tmp_path, squad_file, capsys):
    from cli_helpers import save_model

    model = save_model(tmp_path / "short", max_position_embeddings=128)
    assert fails(_loadgen(squad_file, model, tmp_path / "out", "--count", "2"), capsys, untouched=tmp_path) == (
        "the model's position table has 128 rows; MLPerf BERT reads SQuAD through 384-token windows (use "
        "`bertrt squad` for shorter ones)")


def _loadgen_on(data, model, out, devices, *extra):
    return ["loadgen", "--data", data, "--model", model, "--out", out, "--devices", devices, *extra]


@pytest.mark.parametrize("devices, extra, message", [
    ("gpu,cpu", [], "--devices 'gpu,cpu': expected all alone, or a comma-separated list of cpu, cuda or cuda:N "
                    "(got 'gpu' in the list)"),
    ("cpu:1", [], "--devices 'cpu:1': expected all alone, or a comma-separated list of cpu, cuda or cuda:N"),
    ("cpu,,cpu", [], "(got '' in the list)"),
    ("all,cuda:0", [], "(got 'all' in the list)"),
    ("cuda:1,cuda:1", [], "--devices 'cuda:1,cuda:1': cuda:1 is listed twice; each GPU runs one engine"),
    ("cpu,cuda", [], "--devices 'cpu,cuda': mixes CPU and CUDA devices; list only GPUs, or only cpu to test"),
    ("cpu,cpu", ["--device", "cpu"], "--device cpu and --devices cpu,cpu: give one of them"),
    ("cpu,cpu", ["--backend", "onnxruntime"], "--devices: the onnxruntime backend runs on one device"),
])
def test_bad_devices(tmp_path, squad_file, tiny_qa, capsys, devices, extra, message):
    assert message in fails(_loadgen_on(squad_file, tiny_qa, tmp_path / "out", devices, *extra), capsys,
                            untouched=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("devices, message", [
    ("cuda:0,cuda:1", "--devices cuda:0,cuda:1: no CUDA GPU is available here (to test on a CPU, list CPU "
                      "devices: --devices cpu,cpu)"),
    ("all", "--devices all: no CUDA GPU is visible here (to test on a CPU, list CPU devices: --devices cpu,cpu)"),
])
def test_cuda_devices_without_a_gpu(tmp_path, squad_file, tiny_qa, capsys, devices, message):
    assert fails(_loadgen_on(squad_file, tiny_qa, tmp_path / "out", devices), capsys, untouched=tmp_path) == message


def test_two_cpu_devices_report_each_device(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(_loadgen_on(squad_file, tiny_qa, out, "cpu,cpu", "--mode", "accuracy"), capsys)
    assert code == 0, err
    devices = json.loads((out / "report.json").read_text())["devices"]
    assert [d["device"] for d in devices] == ["cpu", "cpu"] and sum(d["samples"] for d in devices) == 2
    assert "per device: cpu " in stdout
