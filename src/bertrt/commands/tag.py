"""`bertrt tag`: token classification (NER), entities with character offsets."""

from __future__ import annotations

import argparse
import json

from bertrt.commands._common import add_model_args
from bertrt.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tag", help="tag entities in a text with a token-classification model",
        description="Label each word of a text with a token-classification checkpoint (a word takes its first "
                    "token's label), merge consecutive words of one entity type, and print each entity with "
                    "its character offsets.",
        epilog='example: bertrt tag --model ./ner-model --text "Ada Lovelace lived in London." --json')
    p.add_argument("--text", required=True, metavar="TEXT",
                   help="the text, or @FILE to read it from a UTF-8 file ('-' after @ reads stdin)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per entity: label, text, start, end (exclusive), score")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertrt.commands.qa import read_text_arg
    from bertrt.tasks.loading import load_for_task
    from bertrt.tasks.tagging import tag

    text = read_text_arg(args.text, "text")
    if not text.strip():
        raise UserError("the text is empty")
    entities = tag(load_for_task(args.model, "token-classification", device=args.device, engine=args.engine), text)
    for e in entities:
        if args.json:
            print(json.dumps({"label": e.label, "text": e.text, "start": e.start, "end": e.end,
                              "score": round(e.score, 4)}, ensure_ascii=False))
        else:
            print(f"{e.label}\t{e.start}\t{e.end}\t{e.score:.4f}\t{e.text}")
    return 0
