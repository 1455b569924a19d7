import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "plot_floors.py"
PNG = b"\x89PNG\r\n\x1a\n"


def reports():
    rows = [{"system": "bertrt", "batch": 1, "seq": 384, "avg_ms": 1.2},
            {"system": "hf", "batch": 1, "seq": 384, "avg_ms": 9.0},
            {"system": "hf-graph", "batch": 1, "seq": 384, "avg_ms": 1.8},
            {"system": "bertrt", "batch": 128, "seq": 384, "avg_ms": 60.0},
            {"system": "hf", "batch": 128, "seq": 384, "avg_ms": 70.0},
            {"system": "bertrt", "batch": 8, "seq": 128, "avg_ms": 1.0}]  # no peer: left out
    engine = {"sections": {"perf_large": {"ok": True, "result": {"rows": rows}},
                           "perf_base": {"ok": False, "error": "skipped"}}}

    def floor(gemm_ms, attention_ms):
        return {"no_epilogue": {"ms_per_pass": gemm_ms}, "attention_ms_per_layer": {"fastest_ms": attention_ms}}

    floors = {"sections": {"floors": {"result": {"large_T384": floor(0.7, 0.005),
                                                 "large_T49152": floor(48.0, 0.2)}}}}
    return engine, floors


def test_bound_is_the_best_peer_over_gemms_plus_every_layers_fastest_attention():
    module = runpy.run_path(str(SCRIPT))
    rows = module["cells"](*reports())
    assert [(r["seq"], r["batch"]) for r in rows] == [(384, 1), (384, 128)]
    small, large = rows
    assert small["best_peer"] == "hf-graph" and small["ratio"] == pytest.approx(1.5)
    assert small["bound_ms"] == pytest.approx(0.7 + 24 * 0.005)
    assert small["ratio_bound"] == pytest.approx(1.8 / 0.82)
    assert large["ratio_bound"] == pytest.approx(70.0 / (48.0 + 24 * 0.2))  # 1.33: below the target
    table = module["markdown"](rows)
    assert table.count("(< 1.5x)") == 1 and "| Large | 384 | 128 |" in table


def test_writes_the_plot_and_the_table(tmp_path):
    engine, floors = reports()
    (tmp_path / "engine.json").write_text(json.dumps(engine))
    (tmp_path / "floors.json").write_text(json.dumps(floors))
    module = runpy.run_path(str(SCRIPT))
    assert module["main"]([str(tmp_path / "out.png"), str(tmp_path / "floors.json"), str(tmp_path / "engine.json"),
                           "--table", str(tmp_path / "out.md")]) == 0
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG
    assert "most any fp16 engine can reach" in (tmp_path / "out.md").read_text()
