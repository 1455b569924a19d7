"""benchmarks/serve_overhead.py end to end on a few requests: the plumbing (server child, client,
CPU accounting, sources in turn, report), not the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_overhead.py"
SRC = Path(__file__).resolve().parents[2] / "src"


def test_overhead_report_for_each_source_runner_and_size(tmp_path, squad_dev):
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(squad_dev), "--requests", "24",
                           "--warm-requests", "8", "--concurrency", "4", "--per-request", "1", "3",
                           "--source", f"a={SRC}", "--source", f"b={SRC}", "--runner", "instant", "launch-bound",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["source"], r["runner"], r["questions_per_request"]): r for r in report["rows"]}
    assert set(rows) == {(s, r, k) for s in "ab" for r in ("instant", "launch-bound") for k in (1, 3)}
    for row in rows.values():
        assert row["statuses"] == {"200": 24}
        assert row["cpu_ms_per_request"] > 0 and row["requests_per_s_per_core"] > 0
        assert row["batches"] >= 1 and row["mean_batch_windows"] >= 1
    assert report["conditions"]["sources"] == {"a": str(SRC), "b": str(SRC)}


def test_overhead_report_splits_the_model_process_from_its_workers(tmp_path, squad_dev):
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(squad_dev), "--requests", "300",
                           "--warm-requests", "50", "--concurrency", "8", "--per-request", "2", "--workers", "1",
                           "--contexts", "in-order", "fresh", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["contexts"]: r for r in report["rows"]}
    assert set(rows) == {"in-order", "fresh"}
    row = rows["in-order"]
    assert row["statuses"] == {"200": 300} and row["workers"] == 1 and report["conditions"]["workers"] == 1
    assert row["model_process_cpu_ms_per_request"] > 0 and row["workers_cpu_ms_per_request"] > 0
    assert row["cpu_ms_per_request"] == pytest.approx(
        row["model_process_cpu_ms_per_request"] + row["workers_cpu_ms_per_request"], abs=0.01)
    assert "serve-worker-0" in row["model_process_threads_cpu_ms_per_request"]  # the batcher's thread
