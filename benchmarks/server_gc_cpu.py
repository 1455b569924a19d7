"""Do Python's garbage collections land inside a LoadGen Server run? A CPU experiment.

    python benchmarks/server_gc_cpu.py plain|freeze [OUT.json]

The real SQuAD v1.1 dev QSL (10,833 samples, tokenised), the real batching SUT, and a fake backend
that sleeps as long as the H100 engine takes per token (~700k tokens/s). Server at 3,650 samples/s
for 20 s, with every collection timed through ``gc.callbacks`` ("freeze": inside
``runner.frozen_heap``, whose own up-front collection is counted too). Prints and writes the
collections by generation, the batch service times and LoadGen's verdict.
"""
import gc, glob, json, os, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
import mlperf_loadgen as lg
from bertrt.harness.loadgen import HarnessOptions, Scenario
from bertrt.harness.loadgen.qsl import SquadQSL
from bertrt.harness.loadgen.runner import frozen_heap
from bertrt.harness.loadgen.settings import loadgen_settings, log_settings
from bertrt.harness.loadgen.sut import BatchingSUT
from bertrt.tokenizer import BertTokenizer
from bertrt.weights import DEFAULT_MODEL_DIR
import torch  # noqa: F401  (its objects are part of the real heap)

class Backend:
    padded, name = False, "fake"
    max_tokens = 49152
    def run(self, ids, types):
        time.sleep(sum(len(x) for x in ids) / 700_000)  # ~700k tokens/s, about the H100 engine's rate
        return np.zeros((sum(len(x) for x in ids), 2), np.float32)

freeze = sys.argv[1] == "freeze"
qsl = SquadQSL(glob.glob(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/**/dev-v1.1.json"), recursive=True)[0], BertTokenizer(DEFAULT_MODEL_DIR / "vocab.txt"))
events, start = [], {}
def cb(phase, info):
    if phase == "start": start["t"] = time.perf_counter()
    else: events.append((info["generation"], 1000 * (time.perf_counter() - start["t"])))
options = HarnessOptions(scenario=Scenario.SERVER, target_qps=3650, target_latency_ms=130, min_duration_s=20, out="/tmp/gcx/out")
os.makedirs("/tmp/gcx/out", exist_ok=True)
sut = BatchingSUT(Backend(), qsl, scenario=Scenario.SERVER, max_batch_tokens=49152, latency_target_s=0.13).start()
h, qh = sut.construct(), qsl.construct()
gc.callbacks.append(cb)
ctx = frozen_heap() if freeze else __import__("contextlib").nullcontext()
with ctx:
    lg.StartTestWithLogSettings(h, qh, loadgen_settings(options, len(qsl)), log_settings("/tmp/gcx/out"), "/tmp/gcx/out/audit.config")
gc.callbacks.remove(cb)
sut.stop()
by_gen = {g: [ms for gg, ms in events if gg == g] for g in (0, 1, 2)}
summary = {g: {"count": len(v), "max_ms": round(max(v), 2) if v else 0, "total_ms": round(sum(v), 1)} for g, v in by_gen.items()}
svc = [1000 * (r[2] - r[1]) for r in sut.trace]
result = {"frozen": freeze, "gc": summary, "batches": len(svc), "service_ms_p50": round(float(np.median(svc)), 1),
          "service_ms_max": round(max(svc), 1), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
for line in open("/tmp/gcx/out/mlperf_log_summary.txt"):
    if line.startswith(("Result is", "99.00 percentile latency", "Completed samples per second")):
        key, _, value = line.partition(":")
        result[key.strip()] = value.strip()
print(json.dumps(result))
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1) + "\n")
