"""`bertrt perf`: options that mean nothing, sizes the engine cannot run, outputs checked first."""

from __future__ import annotations

import pytest

from cli_helpers import fails, run, warnings_of


def _perf(engine, *extra):
    return ["perf", "--engine", engine, "--peers", "none", "--device", "cpu", "--no-progress", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--precision", "fp16"], "--precision only applies to a --model engine"),
    (["--data", "dev.json"], "--data only has a meaning with --workload; add --workload or drop it"),
    (["--max-features", "8"], "--max-features only has a meaning with --workload"),
    (["--iterations", "0"], "--iterations must be positive"),
    (["--peers", "tensorrt"], "--peers: unknown tensorrt"),
    (["-b", "0"], "batch sizes and sequence lengths positive"),
    (["--device", "GPU0"], "--device 'GPU0': expected auto, cpu, cuda or cuda:N"),
])
def test_meaningless_options(tiny_engine, capsys, extra, message):
    assert message in fails(_perf(tiny_engine, *extra), capsys, untouched=tiny_engine)


def test_every_length_beyond_the_engine(tiny_engine, capsys):
    assert fails(_perf(tiny_engine, "-s", "128", "512", "-b", "1", "--iterations", "1", "--warmup", "0"),
                 capsys) == "-s/--seq-lengths: every length exceeds the engine's max_seq_length 64: nothing to time"


def test_lengths_beyond_the_engine_are_skipped_with_a_warning(tiny_engine, capsys):
    code, out, err = run(_perf(tiny_engine, "-s", "16", "512", "-b", "1", "--iterations", "2", "--warmup", "0"),
                         capsys)
    assert code == 0, err
    assert warnings_of(err, "perf") == ["skipping sequence length(s) 512: longer than the engine's max_seq_length 64"]
    assert "16" in out and "512" not in out.split("warm-up")[-1]


def test_cpu_defaults_are_fitted_with_a_warning(tmp_path, capsys):
    from bertrt.engine import build
    from bertrt.weights import random_checkpoint

    from cli_helpers import tiny_config

    engine = build(random_checkpoint(tiny_config()), tmp_path / "engine", precision="fp32", max_seq_length=128,
                   max_batch=8, device="cpu")
    code, out, err = run(_perf(engine), capsys)
    assert code == 0, err
    assert warnings_of(err, "perf") == ["on the CPU: --batch-sizes 1 8, --seq-lengths 128, --iterations 10, "
                                        "--warmup 2 (the GPU defaults would take hours here)"]
    assert "10 iterations after 2 warm-up" in out


def test_json_would_replace_a_file(tmp_path, tiny_engine, capsys):
    report = tmp_path / "perf.json"
    report.write_text('{"earlier": true}')
    assert fails(_perf(tiny_engine, "--json", report), capsys, untouched=tmp_path) == (
        f"--json {report}: exists; choose another name, or pass --overwrite to replace it")


def test_json_and_plot_are_the_same_file(tmp_path, tiny_engine, capsys):
    pytest.importorskip("matplotlib")
    same = tmp_path / "out.png"
    assert fails(_perf(tiny_engine, "--json", same, "--plot", same), capsys, untouched=tmp_path) == (
        f"--json {same}: the run also writes its --plot there; choose another name")


def test_plot_and_json_written_whole(tmp_path, tiny_engine, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run(_perf(tiny_engine, "-s", "16", "-b", "1", "--iterations", "2", "--warmup", "0",
                               "--json", tmp_path / "perf.json", "--plot", tmp_path / "perf.png"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["perf.json", "perf.png"]  # no temporary file left
    assert (tmp_path / "perf.png").read_bytes().startswith(b"\x89PNG")
