"""`bertrt build`: the destination is checked before the checkpoint is loaded or cast."""

from __future__ import annotations

import pytest

from cli_helpers import fails, run


def test_out_holding_unrelated_files(tmp_path, tiny_qa, capsys):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    assert fails(["build", "--model", tiny_qa, "--out", out, "--device", "cpu", "--precision", "fp32"], capsys,
                 untouched=tmp_path) == f"--out {out}: exists and holds files bertrt did not write; choose a new folder"


def test_out_is_a_regular_file(tmp_path, tiny_qa, capsys):
    out = tmp_path / "engine"
    out.write_text("not a folder")
    assert "exists and is a file, not a folder" in fails(
        ["build", "--model", tiny_qa, "--out", out, "--device", "cpu"], capsys, untouched=tmp_path)


def test_out_under_a_regular_file(tmp_path, tiny_qa, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert fails(["build", "--model", tiny_qa, "--out", blocker / "engine", "--device", "cpu"], capsys,
                 untouched=tmp_path) == f"--out {blocker / 'engine'}: {blocker} is a file, not a folder"


def test_out_is_the_model(tmp_path, model_copy, capsys):
    model = model_copy()
    assert "that is the input given by --model" in fails(
        ["build", "--model", model, "--out", model, "--device", "cpu"], capsys, untouched=tmp_path)


@pytest.mark.parametrize("flag", ["--max-batch", "--max-seq-length", "--max-tokens"])
def test_sizes_must_be_positive(tmp_path, tiny_qa, capsys, flag):
    assert fails(["build", "--model", tiny_qa, "--out", tmp_path / "e", flag, "0"], capsys,
                 untouched=tmp_path) == f"{flag} must be positive"


def test_bad_device(tmp_path, tiny_qa, capsys):
    assert "--device 'cuda:0:1': expected" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--device", "cuda:0:1"], capsys, untouched=tmp_path)


def test_an_engine_folder_is_rebuilt_in_place(tmp_path, tiny_qa, capsys):
    out = tmp_path / "engine"
    for _ in range(2):
        code, _, err = run(["build", "--model", tiny_qa, "--out", out, "--device", "cpu", "--precision", "fp32",
                            "--max-seq-length", "64", "--max-batch", "2"], capsys)
        assert code == 0, err
    assert (out / "engine.json").is_file()
