"""The SUT's per-batch trace (``batches.json`` in a run's output folder) and its plot.

One row per finished batch: when it was launched and when its result came back (seconds since the
SUT started), its samples and tokens, and how many samples were still pending at its launch. A
stall (a kernel compiling inside the timed run, a queue that does not drain) shows as one slow
batch followed by a run of full ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

COLUMNS = ("launched_s", "done_s", "samples", "tokens", "pending_at_launch")
TRACE_FILE = "batches.json"


def write_batches(path: str | Path, rows: Sequence[Sequence[float]]) -> None:
    Path(path).write_text(json.dumps({"columns": list(COLUMNS), "rows": [list(r) for r in rows]}) + "\n")


def read_batches(path: str | Path) -> list[dict]:
    """The rows of a ``batches.json`` as dicts keyed by ``COLUMNS``."""
    trace = json.loads(Path(path).read_text())
    return [dict(zip(trace["columns"], row)) for row in trace["rows"]]


def plot_batches(traces: Sequence[tuple[str, list[dict]]], path: str | Path) -> Path:
    """Each batch's service time against its launch time, one panel per (label, rows); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 2.6 * len(traces)), sharex=True, squeeze=False)
    for ax, (label, rows) in zip(axes[:, 0], traces):
        service = [1000 * (r["done_s"] - r["launched_s"]) for r in rows]
        ax.scatter([r["launched_s"] for r in rows], service, s=4, c=[r["tokens"] for r in rows], cmap="viridis")
        ax.set_ylabel("batch ms")
        ax.set_yscale("log")
        slowest = f", slowest {max(service):.0f} ms" if service else ""
        ax.set_title(f"{label}: {len(rows)} batches{slowest}", fontsize=10)
    axes[-1, 0].set_xlabel("seconds into the run (colour: tokens in the batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
