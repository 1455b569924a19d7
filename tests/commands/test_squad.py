"""`bertrt squad` given bad input or a dangerous --out: one line, nothing destroyed."""

from __future__ import annotations

import copy
import errno
import json

import pytest

from cli_helpers import SMALL_SQUAD, fails, run, save_model, snapshot, warnings_of


def _squad(data, out, *extra):
    return ["squad", "--data", data, "--out", out, "--batch-size", "2", *extra]


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_out_equal_to_data_keeps_the_data(tmp_path, squad_file, tiny_qa, capsys):
    message = fails(_squad(squad_file, squad_file, "--model", tiny_qa), capsys, untouched=tmp_path)
    assert message == f"--out {squad_file}: that is the input given by --data; choose another output path"


def test_nbest_file_would_replace_the_data(tmp_path, tiny_qa, capsys):
    data = _write(tmp_path / "nbest_predictions.json", SMALL_SQUAD)
    message = fails(_squad(data, tmp_path / "predictions.json", "--model", tiny_qa), capsys, untouched=tmp_path)
    assert message.startswith(f"--out (its n-best file) {data}: that is the input given by --data")


def test_a_second_run_needs_overwrite(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "run" / "predictions.json"
    assert run(_squad(squad_file, out, "--model", tiny_qa), capsys)[0] == 0
    assert fails(_squad(squad_file, out, "--model", tiny_qa), capsys, untouched=tmp_path) == (
        f"--out {out}: exists; choose another name, or pass --overwrite to replace it")


def test_out_named_like_the_nbest_file_keeps_both_names_apart(tmp_path, squad_file, tiny_qa, capsys):
    first = tmp_path / "predictions.json"
    assert run(_squad(squad_file, first, "--model", tiny_qa), capsys)[0] == 0
    kept = first.read_bytes()
    fails(_squad(squad_file, tmp_path / "nbest_predictions.json", "--model", tiny_qa), capsys, untouched=tmp_path)
    code, out, err = run(_squad(squad_file, tmp_path / "nbest_predictions.json", "--model", tiny_qa,
                                "--overwrite"), capsys)
    assert code == 0, err
    assert first.read_bytes() == kept  # the earlier predictions are not overwritten by n-best lists
    assert set(json.loads((tmp_path / "nbest_predictions.json").read_text())) == {"q1", "q2"}
    assert isinstance(json.loads((tmp_path / "nbest_nbest_predictions.json").read_text())["q1"], list)


def test_out_under_a_regular_file(tmp_path, squad_file, tiny_qa, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    message = fails(_squad(squad_file, blocker / "sub" / "p.json", "--model", tiny_qa), capsys, untouched=tmp_path)
    assert message == f"--out {blocker / 'sub' / 'p.json'}: {blocker} is a file, not a folder"


def test_out_is_a_folder(tmp_path, squad_file, tiny_qa, capsys):
    assert fails(_squad(squad_file, tmp_path, "--model", tiny_qa), capsys, untouched=tmp_path) == (
        f"--out {tmp_path}: is a folder; give a file name")


@pytest.mark.parametrize("flag, value", [("--n-best", "0"), ("--max-answer-length", "0"), ("--batch-size", "0"),
                                         ("--doc-stride", "-1"), ("--max-query-length", "0")])
def test_meaningless_sizes(tmp_path, squad_file, tiny_qa, capsys, flag, value):
    message = fails(_squad(squad_file, tmp_path / "p.json", "--model", tiny_qa, flag, value), capsys,
                    untouched=tmp_path)
    assert message == f"{flag} must be >= 1, got {value}"


@pytest.mark.parametrize("articles, message", [
    ("2:1", "an empty range"), ("-1:3", "cannot be negative"), ("1:2:3", "expected A:B"), ("x", "expected A:B")])
def test_bad_articles(tmp_path, squad_file, tiny_qa, capsys, articles, message):
    got = fails(_squad(squad_file, tmp_path / "p.json", "--model", tiny_qa, f"--articles={articles}"), capsys,
                untouched=tmp_path)
    assert got.startswith(f"--articles {articles!r}: ") and message in got


def test_window_longer_than_the_position_table(tmp_path, squad_file, capsys):
    model = save_model(tmp_path / "short", max_position_embeddings=96)
    message = fails(_squad(squad_file, tmp_path / "p.json", "--model", model, "--max-seq-length", "384"), capsys,
                    untouched=tmp_path)
    assert message.startswith("--max-seq-length 384: the model accepts at most 96 tokens")


def test_window_too_short_for_the_question(tmp_path, squad_file, tiny_qa, capsys):
    message = fails(_squad(squad_file, tmp_path / "p.json", "--model", tiny_qa, "--max-seq-length", "40"), capsys,
                    untouched=tmp_path)
    assert "leaves no room for the passage after a 64-token question" in message


def test_malformed_answers(tmp_path, tiny_qa, capsys):
    bad = copy.deepcopy(SMALL_SQUAD)
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"text": "on the mat", "answer_start": "8"}]
    data = _write(tmp_path / "bad.json", bad)
    message = fails(_squad(data, tmp_path / "p.json", "--model", tiny_qa), capsys, untouched=tmp_path)
    assert message.startswith(f"--data {data}: not a SQuAD json file (article 0 paragraph 0 question q1: "
                              '"answers" must be a list')


def test_data_nested_too_deeply(tmp_path, tiny_qa, capsys):
    data = tmp_path / "deep.json"
    data.write_text("[" * 100_000 + "]" * 100_000)
    assert "JSON nested too deeply" in fails(_squad(data, tmp_path / "p.json", "--model", tiny_qa), capsys,
                                              untouched=tmp_path)


def test_data_not_utf8_is_named(tmp_path, tiny_qa, capsys):
    data = tmp_path / "latin1.json"
    data.write_bytes(json.dumps(SMALL_SQUAD).replace("kitchen", "caf\u00e9").encode("latin-1"))
    message = fails(_squad(data, tmp_path / "p.json", "--model", tiny_qa), capsys, untouched=tmp_path)
    assert message.startswith(f"--data {data}: not a SQuAD json file (not UTF-8 text")


def test_missing_data(tmp_path, tiny_qa, capsys):
    assert fails(_squad(tmp_path / "dev.json", tmp_path / "p.json", "--model", tiny_qa), capsys,
                 untouched=tmp_path) == f"--data {tmp_path / 'dev.json'}: no such file"


def test_duplicate_ids_are_kept_once_with_a_warning(tmp_path, tiny_qa, capsys):
    dup = copy.deepcopy(SMALL_SQUAD)
    dup["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    data = _write(tmp_path / "dup.json", dup)
    code, out, err = run(_squad(data, tmp_path / "p.json", "--model", tiny_qa), capsys)
    assert code == 0, err
    assert warnings_of(err, "squad") == [f"{data}: 1 question(s) repeat an earlier id ('q1'); kept the first "
                                         "question of each id"]
    assert list(json.loads((tmp_path / "p.json").read_text())) == ["q1"]


def test_full_disk_leaves_the_old_predictions(tmp_path, squad_file, tiny_qa, capsys, monkeypatch):
    out = tmp_path / "p.json"
    out.write_text('{"q1": "old"}')
    real_dump = json.dump

    def full(obj, f, **kw):
        real_dump(obj, f, **kw)
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr("bertrt.tasks.squad.json.dump", full)
    message = fails(_squad(squad_file, out, "--model", tiny_qa, "--overwrite"), capsys, code=1, untouched=tmp_path)
    assert message.startswith("No space left on device: ") and message.endswith("(free some space or write elsewhere)")


def test_output_json_has_no_nan(tmp_path, squad_file, model_copy, capsys):
    from safetensors.torch import load_file, save_file

    folder = model_copy()
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if k.startswith("qa_outputs.weight"))
    tensors[name][0, 0] = float("inf")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    message = fails(_squad(squad_file, tmp_path / "p.json", "--model", folder), capsys, untouched=tmp_path)
    assert "tensor heads.qa.weight holds 1 NaN or infinite value(s)" in message
