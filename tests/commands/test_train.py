"""`bertrt train-squad` / `train-classifier`: --out never destroys a folder bertrt did not write."""

from __future__ import annotations

import json

import pytest

from cli_helpers import fails, run, snapshot


def _train_squad(base, data, out, *extra):
    return ["train-squad", "--base", base, "--data", data, "--articles", "0:2", "--out", out, "--epochs", "1",
            "--batch-size", "2", "--device", "cpu", *extra]


@pytest.fixture
def pairs(tmp_path):
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{i % 2}\t{i}\t{i + 100}\tthe cat sat\tthe cat sat on the mat" for i in range(4)]
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_out_holding_unrelated_files_is_kept(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "thesis"
    (out / "chapter1").mkdir(parents=True)
    (out / "chapter1" / "draft.tex").write_text("years of work")
    message = fails(_train_squad(tiny_qa, squad_file, out), capsys, untouched=tmp_path)
    assert message == (f"--out {out}: exists and holds files bertrt did not write; choose a new folder, or pass "
                       "--overwrite to replace it (everything in it is deleted)")


def test_out_is_a_regular_file(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert fails(_train_squad(tiny_qa, squad_file, out), capsys, untouched=tmp_path) == (
        f"--out {out}: exists and is a file, not a folder; choose another path")


def test_out_is_the_base_model(tmp_path, squad_file, model_copy, capsys):
    base = model_copy()
    assert fails(_train_squad(base, squad_file, base), capsys, untouched=tmp_path) == (
        f"--out {base}: that is the input given by --base; choose another output path")


def test_out_contains_the_data(tmp_path, squad_file, tiny_qa, capsys):
    assert fails(_train_squad(tiny_qa, squad_file, tmp_path, "--overwrite"), capsys, untouched=tmp_path) == (
        f"--out {tmp_path}: the input {squad_file} (--data) is inside it; choose another output folder")


def test_distillation_options_without_a_teacher(tmp_path, squad_file, tiny_qa, capsys):
    assert fails(_train_squad(tiny_qa, squad_file, tmp_path / "o", "--distill-weight", "0.7"), capsys,
                 untouched=tmp_path) == "--distill-weight only has a meaning with --teacher; add --teacher or drop it"


@pytest.mark.parametrize("flag, value, message", [
    ("--warmup", "1.5", "--warmup is a fraction of the steps"),
    ("--epochs", "nan", "--epochs must be a finite number"),
    ("--lr", "0", "--epochs, --lr and --batch-size must be positive"),
    ("--lr", "inf", "--lr must be a finite number"),
    ("--device", "tpu", "--device 'tpu': expected auto, cpu, cuda or cuda:N"),
    ("--articles", "3:1", "--articles '3:1': an empty range"),
])
def test_bad_training_settings(tmp_path, squad_file, tiny_qa, capsys, flag, value, message):
    assert message in fails(_train_squad(tiny_qa, squad_file, tmp_path / "o", flag, value), capsys,
                            untouched=tmp_path)


def test_missing_data(tmp_path, tiny_qa, capsys):
    assert fails(_train_squad(tiny_qa, tmp_path / "dev.json", tmp_path / "o"), capsys, untouched=tmp_path) == (
        f"--data {tmp_path / 'dev.json'}: no such file")


def test_retraining_replaces_only_what_bertrt_wrote(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "qa-model"
    assert run(_train_squad(tiny_qa, squad_file, out), capsys)[0] == 0
    assert json.loads((out / ".bertrt-output").read_text()) == {"written_by": "bertrt", "kind": "model"}
    (out / "stale.txt").write_text("from an earlier run")
    code, _, err = run(_train_squad(tiny_qa, squad_file, out, "--seed", "1"), capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_overwrite_replaces_an_unrelated_folder(tmp_path, squad_file, tiny_qa, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "x.txt").write_text("x")
    code, _, err = run(_train_squad(tiny_qa, squad_file, out, "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".bertrt-output", "config.json", "model.safetensors", "tokenizer_config.json", "training_log.json",
         "vocab.txt"])


def test_classifier_out_holding_unrelated_files(tmp_path, pairs, tiny_encoder, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    assert "holds files bertrt did not write" in fails(
        ["train-classifier", "--base", tiny_encoder, "--train", pairs, "--out", out, "--device", "cpu"], capsys,
        untouched=tmp_path)


def test_classifier_train_file_not_utf8(tmp_path, tiny_encoder, capsys):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes(b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tcaf\xe9\tcafe\n")
    message = fails(["train-classifier", "--base", tiny_encoder, "--train", tsv, "--out", tmp_path / "o",
                     "--device", "cpu"], capsys, untouched=tmp_path)
    assert message == f"{tsv}: not UTF-8 text (bad byte at offset 49)"


def test_classifier_window_past_the_position_table(tmp_path, pairs, tiny_encoder, capsys):
    assert "max_seq_length 4096: the model's position table has only 512 rows" in fails(
        ["train-classifier", "--base", tiny_encoder, "--train", pairs, "--out", tmp_path / "o", "--device", "cpu",
         "--max-seq-length", "4096"], capsys, untouched=tmp_path)


def test_classifier_missing_exclude_ids(tmp_path, pairs, tiny_encoder, capsys):
    assert fails(["train-classifier", "--base", tiny_encoder, "--train", pairs, "--exclude-ids",
                  tmp_path / "ids.tsv", "--out", tmp_path / "o"], capsys, untouched=tmp_path) == (
        f"--exclude-ids {tmp_path / 'ids.tsv'}: no such file")


def test_classifier_everything_excluded(tmp_path, pairs, tiny_encoder, capsys):
    ids = tmp_path / "ids.tsv"
    ids.write_text("#1 ID\t#2 ID\n" + "".join(f"{i}\t{i + 100}\n" for i in range(4)))
    assert fails(["train-classifier", "--base", tiny_encoder, "--train", pairs, "--exclude-ids", ids, "--out",
                  tmp_path / "o", "--device", "cpu"], capsys, untouched=tmp_path) == (
        f"{pairs}: no sentence pairs to use (after the header and --exclude-ids)")


def test_training_data_without_answers(tmp_path, tiny_qa, capsys):
    import copy

    from cli_helpers import SMALL_SQUAD

    bare = copy.deepcopy(SMALL_SQUAD)
    for article in bare["data"]:
        article["paragraphs"][0]["qas"][0]["answers"] = []
    data = tmp_path / "test-set.json"
    data.write_text(json.dumps(bare))
    assert fails(_train_squad(tiny_qa, data, tmp_path / "o"), capsys, untouched=tmp_path) == (
        f"{data}: no question in articles 0:2 has an answer to train on (a test file?)")
