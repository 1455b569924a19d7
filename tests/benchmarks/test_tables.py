"""The results READMEs are generated from the JSON beside them, and stay so."""

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "tables.py"


def test_committed_readmes_match_their_json():
    module = runpy.run_path(str(SCRIPT))
    assert module["main"](["--check"]) == 0, "a results README is stale: run python benchmarks/tables.py"


def test_a_folder_gets_its_tables_and_a_line_per_file(tmp_path):
    module = runpy.run_path(str(SCRIPT))
    folder = tmp_path / "h200"
    folder.mkdir()
    env = {"device_name": "NVIDIA H200", "date": "2026-11-30T14:44:26+00:00", "torch": "2.11", "git_sha": "f" * 40}
    rows = [{"system": "bertrt", "batch": 1, "seq": 128, "avg_ms": 1.0, "p99_ms": 1.1},
            {"system": "hf", "batch": 1, "seq": 128, "avg_ms": 8.0, "p99_ms": 9.0},
            {"system": "hf-graph", "batch": 1, "seq": 128, "avg_ms": 1.5, "p99_ms": 1.6}]
    report = {"environment": env, "settings": {"iterations": 200, "warmup": 20},
              "sections": {"perf_large": {"ok": True, "result": {"rows": rows}}}}
    (folder / "latency_large.json").write_text(json.dumps(report))
    (folder / "notes.txt").write_text("x")
    text = module["readme"](folder)
    assert "| Large | 128 | 1 | 1.00 / 1.10 | 8.00 | 1.50 | 1.50x |" in text
    assert "source fffffff" in text and "200 iterations after 20 warm-up" in text
    assert "| `notes.txt` |  |" in text and "| `latency_large.json` |" in text
    assert module["main"](["--results", str(tmp_path), "--check"]) == 1
    assert module["main"](["--results", str(tmp_path)]) == 0
    assert module["main"](["--results", str(tmp_path), "--check"]) == 0
