"""The SUT's per-batch trace (``batches.json`` in a run's output folder), its summary and its plot.

One row per finished batch, times in seconds since the SUT started: when its oldest sample was
issued, when the batch was launched, when the backend's launch call returned (the host's share of
starting it), when its result came back and when LoadGen had taken the responses; then its
samples and tokens, how many samples were still pending at its launch, and which of the run's
devices ran it (an index into the report's ``devices``). So a sample's latency
splits into waiting (issue to launch: the queue, and a worker waking up), service (the backend,
of which "launch" is host work) and completion (handing the results to LoadGen). A stall (a kernel
compiling inside the timed run, a queue that does not drain) shows as one slow batch followed
by a run of full ones. Older traces (benchmarks/results/h100/loadgen_server_stall_fused.json) lack
the issue, launch-return and completion columns, and traces before several devices the device
column; rows are read by column name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

COLUMNS = ("issued_s", "launched_s", "submitted_s", "done_s", "completed_s", "samples", "tokens",
           "pending_at_launch", "device")
TRACE_FILE = "batches.json"
# Phases of a batch's life: name -> (from column, to column).
PHASES = {"wait": ("issued_s", "launched_s"), "service": ("launched_s", "done_s"),
          "launch": ("launched_s", "submitted_s"), "complete": ("done_s", "completed_s")}


def write_batches(path: str | Path, rows: Sequence[Sequence[float]]) -> dict:
    """Write the SUT's trace rows (tuples in ``COLUMNS`` order); returns the trace as written."""
    trace = {"columns": list(COLUMNS), "rows": [list(r) for r in rows]}
    Path(path).write_text(json.dumps(trace) + "\n")
    return trace


def rows_of(trace: dict) -> list[dict]:
    """A trace's rows (``{"columns": [...], "rows": [[...], ...]}``) as dicts keyed by its columns."""
    return [dict(zip(trace["columns"], row)) for row in trace["rows"]]


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """p50 / p90 / p99 / max in ms of each phase (``PHASES``) over the batches that record it.

    Under SingleStream a batch is one query, so the phases add up to LoadGen's latency (less
    LoadGen's own calls); under Offline "wait" is from the start of the run."""
    summary = {}
    for name, (first, last) in PHASES.items():
        ms = [1000 * (r[last] - r[first]) for r in rows if first in r and last in r]
        if ms:
            p50, p90, p99 = np.percentile(ms, [50, 90, 99])
            summary[name] = {"p50": round(float(p50), 4), "p90": round(float(p90), 4),
                             "p99": round(float(p99), 4), "max": round(max(ms), 4)}
    return summary


def read_batches(path: str | Path) -> list[dict]:
    """The rows of a ``batches.json`` as dicts keyed by ``COLUMNS``."""
    return rows_of(json.loads(Path(path).read_text()))


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
