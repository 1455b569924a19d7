"""benchmarks/device_families.py --dry-run: every family through the loop the GPU run takes (tiny models,
Triton's interpreter, CPU timings), and its report as tables.py draws it."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from bertrt.config import BertConfig, ConfigError, check_engine_support

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "device_families.py"
TABLES = Path(__file__).parents[2] / "benchmarks" / "tables.py"
pytest.importorskip("transformers")


def engine_refusal(module, name: str) -> str | None:
    """check_engine_support's message for the family's tiny config, None when the engine runs it."""
    config = module["hf_config"](module["FAMILIES"][name], dry=True)
    try:
        check_engine_support(BertConfig.from_dict(config.to_dict()))
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.slow  # ~30 s on two cores: seven tiny models, every kernel through the interpreter
def test_dry_run_measures_every_family(tmp_path, interpret):
    module = runpy.run_path(str(SCRIPT))
    assert module["main"](["--dry-run", "--out", str(tmp_path), "--commit", "c0ffee"]) == 0
    report = json.loads((tmp_path / "families.json").read_text())
    assert report["commit"] == report["environment"]["git_sha"] == "c0ffee"
    assert report["environment"]["git_sha_from"] == "argument" and report["dry_run"] is True
    families = report["families"]
    assert list(families) == ["bert", "roberta", "xlm-roberta", "distilbert", "electra", "megatron-bert", "modernbert"]
    settings = module["DRY_RUN"]
    for name, entry in families.items():
        refusal = engine_refusal(module, name)
        if refusal is not None:  # ModernBERT until the engine runs it
            assert entry["ok"] is None and entry["skipped"] == f"not supported by the engine: {refusal}"
            continue
        assert entry["ok"] is True, (name, entry)
        assert entry["engine"]["precision"] == "fp16" and entry["model"]["model_type"] == name
        numerics = entry["numerics"]
        assert numerics["tokens"] == sum(settings.long_lengths if module["FAMILIES"][name].long else settings.lengths)
        for output in ("qa_logits", "hidden"):
            o = numerics["outputs"][output]
            for key in ("engine_max_abs_err", "hf_fp16_max_abs_err", "ratio", "reference_max_abs"):
                assert isinstance(o[key], float) and math.isfinite(o[key]), (name, output, key, o[key])
            # fp16 moves the answers, but only by rounding: both errors small against the values.
            assert 0 < o["engine_max_abs_err"] < 0.05 * o["reference_max_abs"], (name, output, o)
            assert 0 < o["hf_fp16_max_abs_err"] < 0.05 * o["reference_max_abs"], (name, output, o)
            assert o["pass"] == (o["engine_max_abs_err"] <= 2 * o["hf_fp16_max_abs_err"])
        assert numerics["pass"] == all(o["pass"] for o in numerics["outputs"].values())
        cells = entry["speed"]["cells"]
        assert [(c["batch"], c["seq"]) for c in cells] == list(settings.shapes)
        for cell in cells:
            assert cell["bertrt_avg_ms"] > 0 and set(cell["peers"]) == {"hf"} and cell["best_peer"] == "hf"
            assert cell["speedup"] == pytest.approx(cell["peers"]["hf"]["avg_ms"] / cell["bertrt_avg_ms"])
        assert all(r["iterations"] == settings.iterations for r in entry["speed"]["rows"])
        if module["FAMILIES"][name].long:
            assert [(c["batch"], c["seq"]) for c in entry["speed_long"]["cells"]] == list(settings.long_shapes)
    # Drawn by tables.py as a results folder would be.
    tables = runpy.run_path(str(TABLES))
    text = "\n".join(tables["families_section"](report))
    for name in families:
        assert f"| {name} |" in text


@pytest.mark.slow  # one tiny family through the interpreter
def test_a_failing_family_is_recorded_and_the_next_runs(tmp_path, interpret, monkeypatch):
    module = runpy.run_path(str(SCRIPT))
    main = module["main"]
    make = main.__globals__["hf_config"]

    def hf_config(family, *, dry):
        if family.prefix == "Bert":
            raise RuntimeError("no such model")
        return make(family, dry=dry)

    monkeypatch.setitem(main.__globals__, "hf_config", hf_config)
    assert main(["--dry-run", "--out", str(tmp_path), "--families", "bert", "megatron-bert"]) == 1
    families = json.loads((tmp_path / "families.json").read_text())["families"]
    assert families["bert"]["ok"] is False and families["bert"]["error"] == "RuntimeError: no such model"
    assert "in hf_config" in families["bert"]["traceback"]
    assert families["megatron-bert"]["ok"] is True and families["megatron-bert"]["numerics"]["outputs"]


def test_families_past_the_budget_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # what --dry-run sets, restored after the test
    module = runpy.run_path(str(SCRIPT))
    assert module["main"](["--dry-run", "--out", str(tmp_path), "--families", "bert", "--budget-s", "-1"]) == 0
    entry = json.loads((tmp_path / "families.json").read_text())["families"]["bert"]
    assert entry == {"ok": None, "skipped": "out of time at 0 s (budget -1 s)"}
