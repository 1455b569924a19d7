"""`bertrt qa`: answer one question about one passage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertrt.commands._common import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "qa", help="answer a question about a passage",
        description="Answer a question about a passage (extractive QA). Passages longer than the model's "
                    "window are read through overlapping windows, never truncated.",
        epilog='example: bertrt qa --context @passage.txt --question "What is TensorRT?" --json')
    p.add_argument("--context", required=True, metavar="TEXT",
                   help="the passage, or @FILE to read it from a UTF-8 text file ('-' after @ reads stdin)")
    p.add_argument("--question", required=True, metavar="TEXT", help="the question")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON with the answer, its score and character offsets")
    p.set_defaults(func=run)


def read_text_arg(value: str, what: str) -> str:
    """A literal value, or the contents of @FILE (UTF-8)."""
    from bertrt.cli import UserError

    if not value.startswith("@"):
        return value
    name = value[1:]
    if name == "-":
        return sys.stdin.read()
    path = Path(name)
    if not path.is_file():
        raise UserError(f"--{what} {value}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"--{what} {value}: the file is not UTF-8 text (bad byte at offset {exc.start})") from exc


def run(args: argparse.Namespace) -> int:
    from bertrt.cli import UserError
    from bertrt.loading import load_qa
    from bertrt.tasks.qa import answer_question

    context = read_text_arg(args.context, "context")
    question = read_text_arg(args.question, "question")
    if not context.strip():
        raise UserError("the context is empty: give a passage to search for the answer")
    if not question.strip():
        raise UserError("the question is empty")
    model, tokenizer = load_qa(args.model, device=args.device, engine=args.engine)
    answer = answer_question(model, tokenizer, question, context)
    if args.json:
        print(json.dumps({"answer": answer.text, "score": round(float(answer.score), 4),
                          "start": answer.start, "end": answer.end}, ensure_ascii=False))
    else:
        print(answer.text if answer.text else "(no answer found)")
    return 0
