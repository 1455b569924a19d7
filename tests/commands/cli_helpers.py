"""Helpers of the command tests: a tiny random QA model with its own small vocabulary (no download,
no real weights), a SQuAD file, and ``bertrt`` run in-process with checks of what it left behind."""

from __future__ import annotations

import os
from pathlib import Path

from bertrt.cli import main


WORDS = ("the cat sat on mat in kitchen of old house nile is longest river africa it flows north into "
         "mediterranean sea where did does what who when how why a an and to , . ? ! ' -").split()
VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz",
         *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]))

SMALL_SQUAD = {"version": "1.1", "data": [
    {"title": "Cats", "paragraphs": [{"context": "The cat sat on the mat in the kitchen of the old house.",
                                      "qas": [{"id": "q1", "question": "Where did the cat sit?",
                                               "answers": [{"text": "on the mat", "answer_start": 8}]}]}]},
    {"title": "Rivers", "paragraphs": [{"context": "The Nile is the longest river in Africa. It flows north "
                                                   "into the Mediterranean Sea.",
                                        "qas": [{"id": "q2", "question": "Where does the Nile flow into?",
                                                 "answers": [{"text": "the Mediterranean Sea",
                                                              "answer_start": 54}]}]}]},
]}


def tiny_config(**changes):
    from bertrt.config import BertConfig

    values = dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=512)
    values.update(changes)
    return BertConfig(**values)


def save_model(folder: Path, *, heads=("qa",), vocab: list[str] = VOCAB, **config_changes) -> Path:
    """A random tiny BERT saved as a Hugging Face folder with ``vocab`` as its vocab.txt."""
    from bertrt.weights import random_checkpoint, save_hf_folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    checkpoint = random_checkpoint(tiny_config(**config_changes), heads=heads, std=0.2)
    checkpoint.vocab_file = vocab_file
    save_hf_folder(checkpoint, folder)
    vocab_file.unlink()
    return folder


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``, by relative path."""
    items: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            items[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            items[os.path.relpath(path, root)] = Path(path).read_bytes()
    return items


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm's lines end in ``it/s]`` and similar) and warnings."""
    return [line for line in err.splitlines()
            if line.strip() and not line.startswith(("features:", "qa model:", "train", "perf:"))
            and ": warning: " not in line]


def fails(argv: list[str], capsys, *, code: int = 2, untouched: Path | None = None) -> str:
    """Run ``bertrt argv``; assert exit ``code``, exactly one error line and no traceback, and
    (with ``untouched``) that nothing under that folder changed. Returns the message."""
    before = snapshot(untouched) if untouched is not None else None
    got, out, err = run(argv, capsys)
    lines = error_lines(err)
    assert got == code, (got, out, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, lines
    prefix = f"bertrt {argv[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    if untouched is not None:
        assert snapshot(untouched) == before, "files changed"
    return lines[0][len(prefix):]


def warnings_of(err: str, command: str) -> list[str]:
    prefix = f"bertrt {command}: warning: "
    return [line[len(prefix):] for line in err.splitlines() if line.startswith(prefix)]
