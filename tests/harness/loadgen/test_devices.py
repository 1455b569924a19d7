"""Several devices behind one SUT queue, under the real LoadGen on the CPU: every sample answered
exactly once, every device doing work, the same answers as one device, and a failing device that
ends the run clearly instead of hanging it.

Two kinds of "device": fake backends (exact about what comes back, and able to fail on cue), and
two CPU reference models of a tiny random BERT over real SQuAD features (``--devices cpu,cpu``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time

import numpy as np
import pytest

lg = pytest.importorskip("mlperf_loadgen")

from bertrt.harness.loadgen import HarnessOptions, Mode, Scenario  # noqa: E402
from bertrt.harness.loadgen.accuracy import read_accuracy_log  # noqa: E402
from bertrt.harness.loadgen.backends import DeviceBackends  # noqa: E402
from bertrt.harness.loadgen.runner import prepare, run_test  # noqa: E402
from bertrt.harness.loadgen.sut import BatchingSUT  # noqa: E402
from bertrt.harness.loadgen.trace import COLUMNS  # noqa: E402
from loadgen_fakes import FakeBackend, FakeQSL, drive  # noqa: E402

# Far longer than any of these runs takes on a loaded 2-core CI machine (a few seconds each).
RUN_TIMEOUT_S = 120


@pytest.fixture
def completions(monkeypatch) -> collections.Counter:
    """How many times each LoadGen response id was completed (through the real QuerySamplesComplete)."""
    counts: collections.Counter = collections.Counter()
    real = lg.QuerySamplesComplete
    lock = threading.Lock()

    def counting(responses):
        with lock:
            counts.update(r.id for r in responses)
        real(responses)

    monkeypatch.setattr(lg, "QuerySamplesComplete", counting)
    return counts


def within_timeout(function, *args, timeout_s: float = RUN_TIMEOUT_S, **kwargs):
    """``function(*args, **kwargs)`` on a daemon thread; fails the test (instead of hanging it) if it
    has not returned within ``timeout_s``. Returns its value or raises its exception."""
    result: dict = {}

    def target():
        try:
            result["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (raised again on the test's thread)
            result["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), f"the run did not end within {timeout_s} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


class DeviceFake(FakeBackend):
    """A fake backend on a named device, failing (``fail_after`` batches in) on cue."""

    def __init__(self, device: str, *, delay_s: float = 0.0, fail_after: int | None = None):
        super().__init__(delay_s=delay_s)
        self.device, self.fail_after = device, fail_after
        self.threads: set[str] = set()

    def run(self, input_ids, token_type_ids):
        self.threads.add(threading.current_thread().name)
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError(f"{self.device} lost")
        return super().run(input_ids, token_type_ids)


def _drive(out, options: HarnessOptions, qsl, backend) -> BatchingSUT:
    """LoadGen against the SUT, as ``run_test`` does, without scoring (the fake QSL has no questions)."""
    sut = BatchingSUT(backend, qsl, scenario=options.scenario, max_batch_tokens=options.batch_tokens(),
                      latency_target_s=(options.target_latency_ms or 100) / 1000).start()
    return drive(sut, qsl, options, out)


def _check_exact(out, qsl, completions) -> None:
    """Each sample answered once, with its own tokens' logits."""
    assert sorted(completions.values()) == [1] * len(completions)
    logits = read_accuracy_log(out / "mlperf_log_accuracy.json")
    assert sorted(logits) == list(range(len(qsl)))
    for i, value in logits.items():
        np.testing.assert_array_equal(value[:, 0], qsl.input_ids[i])
        np.testing.assert_array_equal(value[:, 1], qsl.token_type_ids[i])


@pytest.mark.parametrize("scenario", [Scenario.OFFLINE, Scenario.SERVER])
def test_two_devices_answer_every_sample_once_from_one_queue(tmp_path, completions, scenario):
    qsl = FakeQSL(300)
    # One device twice as slow: each worker takes a batch when its device is free.
    fast, slow = DeviceFake("fake:0", delay_s=0.002), DeviceFake("fake:1", delay_s=0.004)
    server = dict(target_qps=2000, target_latency_ms=5000) if scenario is Scenario.SERVER else {}
    options = HarnessOptions(scenario=scenario, mode=Mode.ACCURACY, max_batch_tokens=600, **server)
    sut = within_timeout(_drive, tmp_path, options, qsl, DeviceBackends([fast, slow]))
    assert sut.error is None
    _check_exact(tmp_path, qsl, completions)
    assert len(completions) == len(qsl) == sut.samples
    # Each device was driven by its own worker thread, and both did work.
    assert fast.threads and slow.threads and not fast.threads & slow.threads
    devices = sut.device_counters()
    assert [d["device"] for d in devices] == ["fake:0", "fake:1"]
    assert [d["batches"] for d in devices] == [len(fast.batches), len(slow.batches)]
    assert all(d["samples"] > 0 and d["busy_s"] > 0 for d in devices)
    assert sum(d["samples"] for d in devices) == len(qsl)
    assert sum(d["batches"] for d in devices) == sut.batches
    assert sum(d["share"] for d in devices) == pytest.approx(1.0, abs=1e-3)
    # The trace names each batch's device, and its rows add up per device.
    rows = [dict(zip(COLUMNS, row)) for row in sut.trace]
    for index, d in enumerate(devices):
        assert sum(r["samples"] for r in rows if r["device"] == index) == d["samples"]


def test_one_device_reports_itself(tmp_path, completions):
    qsl, backend = FakeQSL(40), DeviceFake("fake:0")
    options = HarnessOptions(scenario=Scenario.OFFLINE, min_duration_s=0.01, min_query_count=40, out=tmp_path / "run")
    report = within_timeout(run_test, options, qsl, backend)
    assert sorted(completions.values()) == [1] * 40 and len(completions) >= 40
    assert [(d["device"], d["samples"], d["share"]) for d in report["devices"]] == [("fake:0", len(completions), 1.0)]


@pytest.mark.parametrize("scenario", [Scenario.OFFLINE, Scenario.SERVER])
def test_a_device_failing_mid_run_ends_the_run_clearly(tmp_path, completions, scenario):
    """The failing batch and every later one are answered empty at once (no sample is left
    unanswered or answered twice), and the run raises the first error with its device."""
    qsl = FakeQSL(200)
    good, bad = DeviceFake("fake:0", delay_s=0.003), DeviceFake("fake:1", delay_s=0.003, fail_after=2)
    server = dict(target_qps=1000, target_latency_ms=5000) if scenario is Scenario.SERVER else {}
    options = HarnessOptions(scenario=scenario, out=tmp_path / "run", max_batch_tokens=300, min_duration_s=0.01,
                             min_query_count=len(qsl), **server)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"the fake backend on fake:1 failed during the run: fake:1 lost "
                                           r"\(\d+ of the run's samples were answered empty\)"):
        within_timeout(run_test, options, qsl, DeviceBackends([good, bad]))
    assert time.monotonic() - started < RUN_TIMEOUT_S / 2
    assert sorted(completions.values()) == [1] * len(completions) and len(completions) >= len(qsl)
    assert len(bad.batches) == 2  # nothing more was run on the failed device
    assert not (options.out / "report.json").exists()  # a failed run leaves no report behind


# --- two CPU reference models of a tiny random BERT (``--devices cpu,cpu``) ---------------------

COUNT = 24


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory):
    """A 2-layer random BERT (hidden 64) with a QA head and the default model's vocabulary."""
    from bertrt.config import BertConfig
    from bertrt.weights import load_checkpoint, random_checkpoint, save_hf_folder

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    checkpoint = dataclasses.replace(random_checkpoint(config, heads=("qa",), std=0.2),
                                     vocab_file=load_checkpoint(None).vocab_file)
    return save_hf_folder(checkpoint, tmp_path_factory.mktemp("tiny") / "qa")


@pytest.fixture(scope="module")
def prepared(tiny_qa, squad_dev):
    """QSL and backend for one CPU device and for two."""
    base = HarnessOptions(model=str(tiny_qa), data=squad_dev, articles=slice(0, 2), count=COUNT, device="cpu")
    one = prepare(base)
    two = prepare(dataclasses.replace(base, device="auto", devices="cpu,cpu"))
    return base, one, two


def test_cpu_devices_load_one_model_each(prepared):
    _, (_, one), (_, two) = prepared
    assert isinstance(two, DeviceBackends) and not isinstance(one, DeviceBackends)
    assert [str(d) for d in two.devices] == ["cpu", "cpu"]
    first, second = two.backends
    assert first.model is not second.model and first.name == one.name == "bertrt-reference"


@pytest.mark.parametrize("scenario", [Scenario.OFFLINE, Scenario.SERVER])
def test_two_cpu_devices_answer_as_one_device(tmp_path, prepared, completions, scenario):
    base, (qsl, one), (qsl2, two) = prepared
    server = dict(target_qps=200, target_latency_ms=10000) if scenario is Scenario.SERVER else {}
    runs = {}
    for name, (q, backend) in {"one": (qsl, one), "two": (qsl2, two)}.items():
        # Small batches, so the two devices share the samples.
        options = dataclasses.replace(base, scenario=scenario, mode=Mode.ACCURACY, out=tmp_path / name,
                                      max_batch_tokens=600, **server)
        completions.clear()
        runs[name] = within_timeout(run_test, options, q, backend)
        assert sorted(completions.values()) == [1] * COUNT
    devices = runs["two"]["devices"]
    assert len(devices) == 2 and all(d["samples"] > 0 and d["batches"] > 0 for d in devices), devices
    assert sum(d["samples"] for d in devices) == COUNT
    # The same predictions, and the same logits up to fp32 summation order in other batch shapes.
    ours = {k: json.loads((tmp_path / k / "predictions.json").read_text()) for k in runs}
    assert ours["one"] == ours["two"] and len(ours["one"]) > 0
    assert runs["one"]["accuracy"]["f1"] == runs["two"]["accuracy"]["f1"]
    one_logits, two_logits = (read_accuracy_log(tmp_path / k / "mlperf_log_accuracy.json") for k in runs)
    assert sorted(one_logits) == sorted(two_logits) == list(range(COUNT))
    for i in one_logits:
        np.testing.assert_allclose(two_logits[i], one_logits[i], rtol=1e-4, atol=1e-5)


def test_two_cpu_devices_single_stream(tmp_path, prepared, completions):
    base, _, (qsl, two) = prepared
    options = dataclasses.replace(base, scenario=Scenario.SINGLE_STREAM, min_query_count=16, min_duration_s=0.05,
                                  out=tmp_path / "ss")
    report = within_timeout(run_test, options, qsl, two)
    assert report["samples_completed"] == report["batches"] >= 16
    assert sorted(completions.values()) == [1] * len(completions)
    assert sum(d["samples"] for d in report["devices"]) == report["samples_completed"]


def test_each_worker_makes_its_gpu_current_on_its_own_thread(tmp_path, completions, monkeypatch):
    """What a CUDA device's worker does first, seen through a recorded ``torch.cuda.set_device``
    (no GPU needed): its own index, on its own thread; a device without an index is left alone."""
    import torch

    made_current: list[tuple[str, int]] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: made_current.append(
        (threading.current_thread().name, index)))
    qsl = FakeQSL(100)
    backends = [DeviceFake("fake:0"), DeviceFake("fake:1"), DeviceFake("fake:2")]
    for backend, device in zip(backends, (torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda"))):
        backend.device = device
    options = HarnessOptions(scenario=Scenario.OFFLINE, mode=Mode.ACCURACY, max_batch_tokens=400)
    sut = within_timeout(_drive, tmp_path, options, qsl, DeviceBackends(backends))
    assert sut.error is None and sorted(completions.values()) == [1] * len(qsl)
    assert sorted(made_current) == [("sut-worker-0", 1), ("sut-worker-1", 0)]
    assert [d["device"] for d in sut.device_counters()] == ["cuda:1", "cuda:0", "cuda"]


def test_a_worker_that_cannot_take_its_gpu_fails_the_run_instead_of_hanging(tmp_path, completions, monkeypatch):
    import torch

    def refuse(index):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index}")

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    qsl = FakeQSL(50)
    backend = DeviceFake("fake:0")
    backend.device = torch.device("cuda", 3)
    options = HarnessOptions(scenario=Scenario.OFFLINE, mode=Mode.ACCURACY)
    sut = within_timeout(_drive, tmp_path, options, qsl, backend)
    assert "invalid device ordinal 3" in str(sut.error) and sut.error_device == "cuda:3"
    assert sorted(completions.values()) == [1] * len(qsl) and not backend.batches
