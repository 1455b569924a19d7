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
    from bertrt.cli import UserError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def run(args: argparse.Namespace) -> int:
    from bertrt.cli import UserError
    from bertrt.tasks.squad import parse_articles
    from bertrt.tasks.squad_metric import evaluate

    data = load_json(args.data, "--data")
    if not isinstance(data, dict) or "data" not in data:
        raise UserError(f"--data {args.data}: not a SQuAD file (no 'data' list)")
    predictions = load_json(args.predictions, "--predictions")
    if not isinstance(predictions, dict):
        raise UserError(f"--predictions {args.predictions}: expected a JSON object of qid -> answer")
    articles = data["data"]
    chosen = parse_articles(args.articles)
    if chosen is not None:
        articles = articles[chosen]
    print(json.dumps(evaluate(articles, predictions)))
    return 0
