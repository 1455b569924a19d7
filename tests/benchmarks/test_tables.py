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


def test_the_families_tables(tmp_path):
    module = runpy.run_path(str(SCRIPT))
    folder = tmp_path / "h200"
    folder.mkdir()
    env = {"device_name": "NVIDIA H200", "date": "2026-12-01T10:00:00+00:00", "git_sha": "a" * 40}
    outputs = {"qa_logits": {"engine_max_abs_err": 0.0021, "hf_fp16_max_abs_err": 0.0034, "ratio": 0.62},
               "hidden": {"engine_max_abs_err": "nan", "hf_fp16_max_abs_err": 0.0051, "ratio": "nan"}}
    cells = [{"batch": 32, "seq": 128, "bertrt_avg_ms": 1.7, "bertrt_p50_ms": 1.69, "best_peer": "hf-graph",
              "peers": {"hf": {"avg_ms": 2.9}, "hf-graph": {"avg_ms": 2.4}}, "speedup": 2.4 / 1.7,
              "meets_target": True},
             {"batch": 1, "seq": 128, "bertrt_avg_ms": 0.5, "bertrt_p50_ms": 0.5, "best_peer": "hf",
              "peers": {"hf": {"avg_ms": 0.6}}, "speedup": 1.2, "meets_target": False}]
    report = {"environment": env, "settings": {"iterations": 200, "warmup": 20, "error_ratio": 2.0},
              "families": {"electra": {"ok": False, "numerics": {"outputs": outputs, "pass": False},
                                       "speed": {"cells": cells}},
                           "megatron-bert": {"ok": False, "build": {"error": "OutOfMemoryError: CUDA"}},
                           "modernbert": {"ok": None, "skipped": "not supported by the engine: the GPU engine runs"}}}
    (folder / "families.json").write_text(json.dumps(report))
    text = module["readme"](folder)
    assert "| electra | 0.0021 / 0.0034 (0.62x) | nan / 0.0051 (nan) | no |" in text
    assert "| electra | 128 | 32 | 1.70 / 1.69 | 2.90 | 2.40 | 1.41x |" in text
    assert "| electra | 128 | 1 | 0.50 / 0.50 | 0.60 | - | 1.20x (< 1.3x) |" in text
    assert "| megatron-bert | failed in build | | |" in text
    assert "| modernbert | not supported by the engine | | |" in text
    assert "200 iterations after 20 warm-up, peers" in text and "source aaaaaaa" in text
    assert "| `families.json` | every BERT family" in text
