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


def _squad(tmp_path):
    import json

    from cli_helpers import SMALL_SQUAD

    data = tmp_path / "squad.json"
    data.write_text(json.dumps(SMALL_SQUAD))
    return data


def test_low_precision_needs_calibration_data_or_a_cache(tmp_path, tiny_qa, capsys):
    assert "--precision fp8 needs --calib-data FILE" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "fp8", "--device", "cpu"], capsys,
        untouched=tmp_path)


def test_calibration_options_without_low_precision(tmp_path, tiny_qa, capsys):
    data = _squad(tmp_path)
    assert "--calib-data apply to --precision fp8 or int8, not fp16" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--calib-data", data, "--device", "cpu"], capsys,
        untouched=tmp_path)


@pytest.mark.parametrize("method", ["median", "percentile:100", "percentile:x"])
def test_bad_calibration_method(tmp_path, tiny_qa, capsys, method):
    data = _squad(tmp_path)
    assert f"calibration method {method!r}" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "int8", "--calib-data", data,
         "--calib-method", method, "--device", "cpu"], capsys, untouched=tmp_path)


def test_calibration_cache_under_a_regular_file(tmp_path, tiny_qa, capsys):
    data, blocker = _squad(tmp_path), tmp_path / "file"
    blocker.write_text("x")
    assert f"--calib-cache {blocker / 'c.json'}: {blocker} is a file, not a folder" == fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "fp8", "--calib-data", data,
         "--calib-cache", blocker / "c.json", "--device", "cpu"], capsys, untouched=tmp_path)


def test_calibration_cache_that_is_the_data(tmp_path, tiny_qa, capsys):
    data = _squad(tmp_path)
    assert "--calib-cache and --calib-data name the same file" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "fp8", "--calib-data", data,
         "--calib-cache", data, "--device", "cpu"], capsys, untouched=tmp_path)


def test_out_is_the_calibration_data(tmp_path, tiny_qa, capsys):
    data = _squad(tmp_path)
    assert "--calib-data" in fails(
        ["build", "--model", tiny_qa, "--out", data, "--precision", "fp8", "--calib-data", data, "--device", "cpu"],
        capsys, untouched=tmp_path)


def test_a_calibration_cache_that_is_not_one(tmp_path, tiny_qa, capsys):
    cache = tmp_path / "c.json"
    cache.write_text('{"format": "tensorrt"}')
    assert "not a bertrt calibration cache" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "fp8", "--calib-cache", cache,
         "--device", "cpu"], capsys, untouched=tmp_path)


def test_calibration_articles_that_select_nothing(tmp_path, tiny_qa, capsys):
    data = _squad(tmp_path)
    assert "selects none" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "int8", "--calib-data", data,
         "--calib-articles", "5:9", "--device", "cpu"], capsys, untouched=tmp_path)


def test_too_little_calibration_data(tmp_path, tiny_qa, capsys):
    data = _squad(tmp_path)
    assert "give 2 windows; calibration needs at least 8" in fails(
        ["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "int8", "--calib-data", data,
         "--device", "cpu"], capsys, untouched=tmp_path)


def test_an_int8_engine_is_built_and_its_cache_written(tmp_path, tiny_qa, capsys):
    import json

    from cli_helpers import SMALL_SQUAD

    articles = [{"title": f"{a['title']} {n}", "paragraphs": [
        {"context": p["context"], "qas": [{**q, "id": f"{q['id']}-{n}"} for q in p["qas"]]} for p in a["paragraphs"]]}
        for n in range(5) for a in SMALL_SQUAD["data"]]
    data = tmp_path / "squad.json"  # ten articles: enough windows to calibrate on
    data.write_text(json.dumps({"version": "1.1", "data": articles}))
    code, _, err = run(["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "int8",
                        "--calib-data", data, "--calib-cache", tmp_path / "c.json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert (tmp_path / "c.json").is_file() and (tmp_path / "e" / "engine.json").is_file()
    # ... and its CPU simulation answers SQuAD like any engine
    code, out, err = run(["squad", "--engine", tmp_path / "e", "--device", "cpu", "--data", data,
                          "--out", tmp_path / "predictions.json"], capsys)
    assert code == 0, err
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert set(predictions) == {q["id"] for a in articles for p in a["paragraphs"] for q in p["qas"]}


@pytest.mark.parametrize("flags, rounding, attention", [
    (["--fp8-rounding", "epilogue"], True, "fp16"),
    (["--fp8-rounding", "pass", "--fp8-attention"], False, "fp8"),
])
def test_fp8_recipe_flags_reach_the_engine(tmp_path, capsys, flags, rounding, attention):
    import json

    data = _ten_articles(tmp_path)
    code, _, err = run(["build", "--random", "minilm", "--out", tmp_path / "e", "--precision", "fp8",
                        "--calib-data", data, "--calib-num", "8", "--calib-method", "percentile:99.9",
                        "--device", "cpu", *flags], capsys)
    assert code == 0, err
    recipe = json.loads((tmp_path / "e" / "engine.json").read_text())["quantization"]
    assert (recipe["epilogue_rounding"], recipe["attention"], recipe["method"]) == (rounding, attention,
                                                                                    "percentile:99.9")


@pytest.mark.parametrize("flag", [["--fp8-rounding", "epilogue"], ["--fp8-attention"]])
def test_fp8_flags_without_fp8(tmp_path, tiny_qa, capsys, flag):
    message = fails(["build", "--model", tiny_qa, "--out", tmp_path / "e", "--precision", "int8", "--calib-data",
                     tmp_path / "none.json", "--device", "cpu", *flag], capsys, untouched=tmp_path)
    assert "apply to --precision fp8, not int8" in message


def _ten_articles(tmp_path):
    import json

    from cli_helpers import SMALL_SQUAD

    articles = [{"title": f"{a['title']} {n}", "paragraphs": [
        {"context": p["context"], "qas": [{**q, "id": f"{q['id']}-{n}"} for q in p["qas"]]} for p in a["paragraphs"]]}
        for n in range(5) for a in SMALL_SQUAD["data"]]
    data = tmp_path / "squad.json"
    data.write_text(json.dumps({"version": "1.1", "data": articles}))
    return data


def test_random_weights_calibrate_with_the_default_vocabulary(tmp_path, capsys):
    import json

    data = _ten_articles(tmp_path)
    code, out, err = run(["build", "--random", "minilm", "--out", tmp_path / "e", "--precision", "fp8",
                          "--calib-data", data, "--calib-num", "8", "--device", "cpu"], capsys)
    assert code == 0, err
    spec = json.loads((tmp_path / "e" / "engine.json").read_text())
    assert spec["quantization"]["method"] == "max" and spec["quantization"]["epilogue_rounding"] is False
    assert spec["quantization"]["calibration"]["features"] >= 8
