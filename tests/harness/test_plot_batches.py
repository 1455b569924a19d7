import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "plot_batches.py"


def test_plots_batch_traces(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [[0.01 * i, 0.01 * i + 0.02, 4, 700 + i, 0] for i in range(50)]
    trace = tmp_path / "batches.json"
    trace.write_text(json.dumps({"columns": ["launched_s", "done_s", "samples", "tokens", "pending_at_launch"],
                                 "rows": rows}))
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "plot.png"
    assert main(["plot_batches.py", str(out), f"a run={trace}", f"again={trace}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot_batches.py", str(out)]) == 2  # no trace: usage on stderr
    assert "LABEL=" in capsys.readouterr().err
