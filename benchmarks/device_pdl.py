"""A/B of programmatic dependent launch (``bertrt.ops._triton.PDL_ENABLED``) in one process.

    PYTHONPATH=src python3 benchmarks/device_pdl.py $OUT/pdl.json [rounds]

Builds random BERT-Large and BERT-Base fp16 engines once, loads each twice (one copy captures its
CUDA graphs with dependent launches off, the other with them on), checks that both give the same
logits, and times the copies in turn (A B A B ...) at batch 1 and 8 x 128 and 384 tokens, the
shapes where launch gaps are a visible part of a pass. Writes the averages per round as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertrt.engine import Engine, build
from bertrt.harness.perf import environment, synthetic_inputs, time_iterations
from bertrt.ops import _triton
from bertrt.packed import pack_padded
from bertrt.config import STANDARD_CONFIGS
from bertrt.weights import random_checkpoint

CELLS = [(1, 128), (8, 128), (1, 384), (8, 384)]


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("pdl.json")
    rounds = int(argv[2]) if len(argv) > 2 else 3
    report = {"kind": "bertrt-pdl-ab", "environment": environment(torch.device("cuda")), "models": {}}
    device = torch.device("cuda")
    for model in ("large", "base"):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            path = build(random_checkpoint(STANDARD_CONFIGS[model]), f"{folder}/engine", precision="fp16")
            engines = {}
            for setting in (False, True):
                _triton.PDL_ENABLED = setting
                engines[setting] = Engine.load(path, device=device)
                for batch, seq in CELLS:  # capture now, under this setting
                    ids, types = synthetic_inputs(batch, seq, engines[setting].config.vocab_size, device=device)
                    engines[setting].qa_logits(pack_padded(ids, torch.ones_like(ids), types))
        rows = {}
        for batch, seq in CELLS:
            ids, types = synthetic_inputs(batch, seq, engines[True].config.vocab_size, device=device)
            packed = pack_padded(ids, torch.ones_like(ids), types)
            off, on = (engines[s].qa_logits(packed) for s in (False, True))
            times = {"off": [], "on": []}
            for _ in range(rounds):
                for name, setting in (("off", False), ("on", True)):
                    t = time_iterations(lambda e=engines[setting]: e.qa_logits(packed), iterations=300, warmup=30,
                                        device=device)
                    times[name].append(statistics.fmean(t))
            rows[f"b{batch}_s{seq}"] = {"avg_ms_off": times["off"], "avg_ms_on": times["on"],
                                        "max_abs_diff": (off - on).abs().max().item(),
                                        "speedup": statistics.median(times["off"]) / statistics.median(times["on"])}
            print(f"{model} b{batch} s{seq}: off {[round(x, 3) for x in times['off']]} "
                  f"on {[round(x, 3) for x in times['on']]} diff {rows[f'b{batch}_s{seq}']['max_abs_diff']:.2e}",
                  flush=True)
        report["models"][model] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        del engines
        torch.cuda.empty_cache()
    _triton.PDL_ENABLED = True
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
