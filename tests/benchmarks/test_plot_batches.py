import gzip
import json
import runpy
from pathlib import Path

import pytest

from bertrt.harness.loadgen.trace import COLUMNS, plot_batches, read_batches, summarize, write_batches

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "plot_batches.py"
PNG = b"\x89PNG\r\n\x1a\n"


def test_trace_round_trips(tmp_path):
    rows = [[0.01 * i, 0.01 * i + 0.001, 0.01 * i + 0.002, 0.01 * i + 0.02, 0.01 * i + 0.0205, 4, 700 + i, 3, i % 2]
            for i in range(5)]
    write_batches(tmp_path / "batches.json", rows)
    got = read_batches(tmp_path / "batches.json")
    assert [list(r.values()) for r in got] == rows and list(got[0]) == list(COLUMNS)


def test_summary_splits_each_batch_into_phases():
    # Batch i waits (i % 10) + 1 ms, runs 5 ms (0.25 of it launching), and takes 0.5 ms to hand over.
    rows = []
    for i in range(100):
        launched = i + 0.001 * (i % 10 + 1)
        times = (i, launched, launched + 0.00025, launched + 0.005, launched + 0.0055)
        rows.append(dict(zip(COLUMNS, (*times, 1, 100, 0))))
    summary = summarize(rows)
    assert summary["launch"]["p50"] == pytest.approx(0.25)
    assert summary["wait"]["max"] == pytest.approx(10.0) and summary["wait"]["p50"] == pytest.approx(5.5)
    assert summary["service"]["p50"] == pytest.approx(5.0) and summary["service"]["max"] == pytest.approx(5.0)
    assert summary["complete"]["p99"] == pytest.approx(0.5)
    # A trace from before issue and completion times were recorded: only the service phase.
    old = [{"launched_s": 0.0, "done_s": 0.002, "samples": 1, "tokens": 9, "pending_at_launch": 0}]
    assert summarize(old) == {"service": {"p50": 2.0, "p90": 2.0, "p99": 2.0, "max": 2.0}}


def test_plots_several_traces(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [[0.01 * i, 0.01 * i, 0.01 * i, 0.01 * i + (0.5 if i == 20 else 0.02), 0.01 * i + 0.03, 4, 700 + i, 0]
            for i in range(50)]
    write_batches(tmp_path / "batches.json", rows)
    assert plot_batches([("one", read_batches(tmp_path / "batches.json")), ("empty", [])],
                        tmp_path / "a.png").read_bytes()[:8] == PNG
    main = runpy.run_path(str(SCRIPT))["main"]
    trace = tmp_path / "batches.json"
    assert main(["plot_batches.py", str(tmp_path / "b.png"), f"a run={trace}", f"again={trace}"]) == 0
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG
    results = tmp_path / "loadgen_results.json"  # device_loadgen.py's file, traces inside
    results.write_text(json.dumps({"results": [{"step": "bertrt_server", "batch_trace": json.loads(trace.read_text())}]}))
    assert main(["plot_batches.py", str(tmp_path / "d.png"), f"server={results}#bertrt_server"]) == 0
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG
    packed = tmp_path / "loadgen_results.json.gz"  # as device_loadgen.py now writes it
    packed.write_bytes(gzip.compress(results.read_bytes()))
    assert main(["plot_batches.py", str(tmp_path / "g.png"), f"server={packed}#bertrt_server"]) == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit, match="no batch trace"):
        main(["plot_batches.py", str(tmp_path / "e.png"), f"x={results}#bertrt_offline"])
    assert main(["plot_batches.py", str(tmp_path / "c.png")]) == 2  # no trace: usage on stderr
    assert "LABEL=" in capsys.readouterr().err
