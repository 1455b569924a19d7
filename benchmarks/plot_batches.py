"""Plot LoadGen batch traces (the SUT's batches.json): each batch's service time against when it
was launched, one panel per trace, so a stall (a compile, a queue that does not drain) stands out.

    python benchmarks/plot_batches.py OUT.png LABEL=path/to/batches.json [LABEL=...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> list[dict]:
    trace = json.loads(path.read_text())
    return [dict(zip(trace["columns"], row)) for row in trace["rows"]]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = [(label, load(Path(path))) for label, path in (a.split("=", 1) for a in argv[2:])]
    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 2.6 * len(traces)), sharex=True, squeeze=False)
    for ax, (label, rows) in zip(axes[:, 0], traces):
        launched = [r["launched_s"] for r in rows]
        service = [1000 * (r["done_s"] - r["launched_s"]) for r in rows]
        ax.scatter(launched, service, s=4, c=[r["tokens"] for r in rows], cmap="viridis")
        ax.set_ylabel("batch ms")
        ax.set_title(f"{label}: {len(rows)} batches, slowest {max(service):.0f} ms", fontsize=10)
        ax.set_yscale("log")
    axes[-1, 0].set_xlabel("seconds into the run (colour: tokens in the batch)")
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
