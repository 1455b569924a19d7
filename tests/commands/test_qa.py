"""`bertrt qa` given bad input: one line, the right exit code, nothing changed on disk."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli_helpers import VOCAB, fails, run, save_model, snapshot, warnings_of

Q = ["--question", "Where did the cat sit?"]
C = ["--context", "The cat sat on the mat in the kitchen."]


@pytest.mark.parametrize("device, message", [
    ("gpu", "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
    ("cpu:1", "--device 'cpu:1': expected auto, cpu, cuda or cuda:N"),
    ("cuda:-1", "--device 'cuda:-1': expected"),
    ("", "--device '': expected"),
])
def test_malformed_device(tiny_qa, capsys, device, message):
    assert message in fails(["qa", *C, *Q, "--model", tiny_qa, "--device", device], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tiny_qa, capsys):
    assert "--device cuda:0: no CUDA GPU is available here (use --device cpu)" in fails(
        ["qa", *C, *Q, "--model", tiny_qa, "--device", "cuda:0"], capsys)


def test_context_file_is_a_folder(tmp_path, capsys):
    assert f"--context @{tmp_path}: is a folder, not a file" in fails(["qa", "--context", f"@{tmp_path}", *Q], capsys)


def test_non_utf8_question_file_is_named(tmp_path, capsys):
    path = tmp_path / "question.txt"
    path.write_bytes(b"Where is the caf\xe9?")
    message = fails(["qa", *C, "--question", f"@{path}"], capsys, untouched=tmp_path)
    assert message == f"--question @{path}: the file is not UTF-8 text (bad byte at offset 16)"


def test_both_from_stdin(capsys):
    assert "cannot both read standard input" in fails(["qa", "--context", "@-", "--question", "@-"], capsys)


def test_nan_weight_is_refused_naming_the_tensor(model_copy, capsys):
    from safetensors.torch import load_file, save_file

    folder = model_copy()
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if "attention.self.query.weight" in k)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    message = fails(["qa", *C, *Q, "--model", folder], capsys, untouched=folder.parent)
    assert "tensor layers.0.attn.qkv.weight holds 1 NaN or infinite value(s)" in message


@pytest.mark.parametrize("field, value, message", [
    ("num_attention_heads", True, "num_attention_heads must be an integer from 1 to 1,024, got True"),
    ("layer_norm_eps", -1e-12, "layer_norm_eps must be a number between 0 and 1"),
    ("layer_norm_eps", "1e-12", "layer_norm_eps must be a number between 0 and 1"),
    ("num_hidden_layers", 300_000_000, "num_hidden_layers must be an integer from 1 to 1,000"),
    ("hidden_size", 16.0, "hidden_size must be an integer"),
    ("vocab_size", -5, "vocab_size must be an integer"),
])
def test_bad_config_values(model_copy, capsys, field, value, message):
    folder = model_copy()
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    got = fails(["qa", *C, *Q, "--model", folder], capsys, untouched=folder.parent)
    assert got.startswith(str(folder / "config.json")) and message in got


def test_config_nested_too_deeply(model_copy, capsys):
    folder = model_copy()
    (folder / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    assert "JSON nested too deeply" in fails(["qa", *C, *Q, "--model", folder], capsys, untouched=folder.parent)


def test_config_not_utf8_is_named(model_copy, capsys):
    folder = model_copy()
    (folder / "config.json").write_bytes(b'{"model_type": "b\xe9rt"}')
    message = fails(["qa", *C, *Q, "--model", folder], capsys, untouched=folder.parent)
    assert message.startswith(str(folder / "config.json")) and "not UTF-8" in message


def test_vocab_larger_than_the_embedding_table(model_copy, capsys):
    folder = model_copy()
    (folder / "vocab.txt").write_text("\n".join(VOCAB + ["extra1", "extra2"]) + "\n", encoding="utf-8")
    message = fails(["qa", *C, *Q, "--model", folder], capsys, untouched=folder.parent)
    assert f"{len(VOCAB) + 2} tokens, but the model's embedding table has {len(VOCAB)} rows" in message


def test_model_without_a_qa_head(tiny_encoder, capsys):
    assert "has no question-answering head" in fails(["qa", *C, *Q, "--model", tiny_encoder], capsys)


def test_random_engine_without_vocab(tmp_path, capsys):
    from bertrt.engine import build
    from bertrt.weights import random_checkpoint

    from cli_helpers import tiny_config

    engine = build(random_checkpoint(tiny_config()), tmp_path / "engine", precision="fp32", max_seq_length=64,
                   max_batch=2, device="cpu")
    message = fails(["qa", *C, *Q, "--engine", engine, "--device", "cpu"], capsys, untouched=tmp_path)
    assert "the engine has no vocab.txt" in message


def test_missing_model_path(tmp_path, capsys):
    assert "no such file or folder" in fails(["qa", *C, *Q, "--model", tmp_path / "nothing"], capsys)


def test_short_position_table_clamps_the_window_with_a_warning(tmp_path, capsys):
    folder = save_model(tmp_path / "short", max_position_embeddings=48)
    passage = " ".join(["the old house is in africa ."] * 20)
    code, out, err = run(["qa", "--context", passage, *Q, "--model", folder, "--json"], capsys)
    assert code == 0, err
    assert warnings_of(err, "qa") == ["the model accepts at most 48 tokens (position table or engine limit): "
                                      "reading passages through 48-token windows instead of 384"]
    answer = json.loads(out)
    assert passage[answer["start"]:answer["end"]] == answer["answer"] and math.isfinite(answer["score"])


def test_long_question_is_cut_with_a_warning(tiny_qa, capsys):
    code, out, err = run(["qa", *C, "--question", " ".join(["where"] * 80) + "?", "--model", tiny_qa], capsys)
    assert code == 0, err
    assert warnings_of(err, "qa") == ["1 question(s) longer than max_query_length 64 tokens (longest: 81) "
                                      "were cut to their first 64 tokens"]


def test_non_utf8_argument(capsys):
    code, out, err = run(["qa", "--context", "caf\udce9", *Q], capsys)
    assert code == 2 and out == ""
    assert err == "bertrt: error: argument 3 (caf\\udce9) is not valid UTF-8: pass file names and text in UTF-8\n"
