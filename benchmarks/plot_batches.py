"""Plot LoadGen batch traces (the SUT's batches.json) side by side, one panel per trace:

    python benchmarks/plot_batches.py OUT.png LABEL=path/to/batches.json [LABEL=...]

(`bertrt loadgen --plot FILE` plots the run it makes.)
"""

from __future__ import annotations

import sys

from bertrt.harness.loadgen.trace import plot_batches, read_batches


def main(argv: list[str]) -> int:
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        print(__doc__, file=sys.stderr)
        return 2
    traces = [(label, read_batches(path)) for label, path in (a.split("=", 1) for a in argv[2:])]
    print(f"wrote {plot_batches(traces, argv[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
