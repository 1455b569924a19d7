"""benchmarks/device_multi_gpu.py --dry-run on the CPU: every step's plumbing at toy size (cpu and
cpu,cpu for one and two GPUs, CPU replicas), not its figures, which come from a 2-GPU host."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_multi_gpu.py"


def _dry_run(tmp_path: Path, squad_dev: Path, *extra: str, timeout: int) -> dict:
    pytest.importorskip("mlperf_loadgen")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--data", str(squad_dev), "--out", str(out),
                           "--work", str(tmp_path / "work"), "--commit", "0123abc", *extra],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "multi_gpu.json").read_text())


def test_dry_run_loadgen_on_one_and_two_devices(tmp_path, squad_dev):
    report = _dry_run(tmp_path, squad_dev, "--skip", "serve", timeout=180)
    assert report["env"]["git_sha"] == "0123abc" and report["env"]["dry_run"] is True
    steps = {r["step"]: r for r in report["results"]}
    assert [s for s in steps if s.startswith("loadgen")] == [
        "loadgen_offline_1gpu", "loadgen_server_1gpu", "loadgen_offline_2gpu", "loadgen_server_2gpu"]
    for name in ("serve_ray_1replica", "serve_ray_2replica"):
        assert steps[name]["skipped"] == "skipped by --skip"
    for name, step in steps.items():
        if not name.startswith("loadgen"):
            continue
        assert "error" not in step, step
        run = step["report"]
        devices = run["devices"]
        assert len(devices) == (2 if name.endswith("2gpu") else 1) == len(step["devices_asked"])
        assert sum(d["samples"] for d in devices) == run["samples_completed"] > 0
        assert all(d["samples"] > 0 for d in devices), devices  # each device took a share
        assert run["unit"] == "samples/s" and run["result"] > 0


@pytest.mark.slow
def test_dry_run_serves_one_and_two_ray_replicas(tmp_path, squad_dev):
    for module in ("ray", "locust", "fastapi"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (serve extra)")
    report = _dry_run(tmp_path, squad_dev, "--skip", "loadgen", timeout=400)
    steps = {r["step"]: r for r in report["results"]}
    for replicas in (1, 2):
        step = steps[f"serve_ray_{replicas}replica"]
        assert "error" not in step, step
        assert step["replicas"] == replicas and step["exit_code"] == 0
        assert [r["offered_rps"] for r in step["rates"]] == [2, 4]
        assert all(r["requests"] > 0 and r["failures"] == 0 for r in step["rates"]), step["rates"]
