"""Plot LoadGen batch traces (the SUT's batches.json) side by side, one panel per trace:

    python benchmarks/plot_batches.py OUT.png LABEL=path/to/batches.json [LABEL=...]
    python benchmarks/plot_batches.py OUT.png LABEL=loadgen_results.json.gz#bertrt_server

The second form reads a step's trace from device_loadgen.py's results file (gzipped or not). (`bertrt loadgen
--plot FILE` plots the run it makes.)
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from bertrt.harness.loadgen.trace import plot_batches, read_batches, rows_of


def _rows(path: str) -> list[dict]:
    if "#" not in path:
        return read_batches(path)
    results, step = path.split("#", 1)
    # device_loadgen.py writes its results gzipped (a device call carries at most 64 MiB of tree).
    text = gzip.decompress(Path(results).read_bytes()).decode() if results.endswith(".gz") else Path(results).read_text()
    found = [r for r in json.loads(text)["results"] if r.get("step") == step]
    if not found or "batch_trace" not in found[0]:
        raise SystemExit(f"{results}: no batch trace for step {step!r}")
    return rows_of(found[0]["batch_trace"])


def main(argv: list[str]) -> int:
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    traces = [(label, _rows(path)) for label, path in (a.split("=", 1) for a in argv[2:])]
    print(f"wrote {plot_batches(traces, argv[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
