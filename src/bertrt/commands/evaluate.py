"""`bertrt evaluate`: the SQuAD v1.1 metric on a predictions file, like the official script."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score predictions.json against SQuAD v1.1 (exact match and F1)",
        description="Score a predictions file (question id -> answer text) against a SQuAD v1.1 dataset "
                    "with the official v1.1 metric. Prints {\"exact_match\": ..., \"f1\": ...}.")
    p.add_argument("--data", required=True, metavar="FILE", help="SQuAD v1.1 json (e.g. dev-v1.1.json)")
    p.add_argument("--predictions", required=True, metavar="FILE", help="predictions.json: {qid: answer text}")
    p.add_argument("--articles", metavar="A:B",
                   help="score only articles A..B-1 (file order), e.g. 32:48 for the held-out split")
    p.set_defaults(func=run)


def load_json(path: str, what: str):
    """The JSON in file ``path``; UserError naming ``what`` (the flag) and the file otherwise."""
    from bertrt.errors import UserError

    file = Path(path)
    if file.is_dir() or not file.exists():
        raise UserError(f"{what} {path}: " + ("is a folder, not a file" if file.is_dir() else "no such file"))
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise UserError(f"{what} {path}: JSON nested too deeply to read") from None


def run(args: argparse.Namespace) -> int:
    from bertrt.errors import UserError
    from bertrt.tasks.squad import read_squad
    from bertrt.tasks.squad_metric import evaluate

    from bertrt.tasks.squad import parse_articles

    chosen = parse_articles(args.articles)
    data = load_json(args.data, "--data")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(f"--data {args.data}: not a SQuAD file (no 'data' list)")
    predictions = load_json(args.predictions, "--predictions")
    if not isinstance(predictions, dict):
        raise UserError(f"--predictions {args.predictions}: expected a JSON object of qid -> answer")
    wrong = next((qid for qid, text in predictions.items() if not isinstance(text, str)), None)
    if wrong is not None:
        raise UserError(f"--predictions {args.predictions}: the answer to {wrong!r} is not a string "
                        "(expected qid -> answer text)")
    try:
        examples = read_squad(args.data, chosen)  # checks the structure and the answers
    except ValueError as exc:
        raise UserError(f"--data {exc}") from None
    if not examples:
        raise UserError(f"--data {args.data}: no questions in the chosen articles")
    unanswerable = next((e.qid for e in examples if not e.answers), None)
    if unanswerable is not None:
        raise UserError(f"--data {args.data}: question {unanswerable!r} has no gold answers to score against")
    articles = data["data"] if chosen is None else data["data"][chosen]
    print(json.dumps(evaluate(articles, predictions)))
    return 0
