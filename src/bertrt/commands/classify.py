"""`bertrt classify`: labels and probabilities for texts or text pairs; accuracy and F1 on a labelled
MRPC-style TSV; ``--rerank`` sorts passages by a cross-encoder's score."""

from __future__ import annotations

import argparse
import json

from bertrt.errors import UserError


def register(subparsers) -> None:
    from bertrt.commands._common import add_model_args

    p = subparsers.add_parser(
        "classify", help="classify texts or sentence pairs; rerank passages with a cross-encoder",
        description="Classify a text (or a sentence pair) with a sequence-classification checkpoint. --input "
                    "reads a TSV: one text, or text<TAB>pair, per line; a GLUE MRPC file (header 'Quality ...', "
                    "label<TAB>id1<TAB>id2<TAB>s1<TAB>s2) is scored too: accuracy and F1 of label 1. --rerank "
                    "scores (query, passage) pairs with a one-logit cross-encoder and prints them best first.",
        epilog='examples: bertrt classify --model ./mrpc-model --input dev.tsv --json\n'
               '          bertrt classify --model ./reranker --rerank --text "what is bert" '
               '--pair "BERT is an encoder." --pair "Paris is in France."')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", metavar="TEXT", help="the text (with --rerank: the query)")
    source.add_argument("--input", metavar="TSV", help="a UTF-8 TSV file ('-': stdin); see above")
    p.add_argument("--pair", action="append", metavar="TEXT",
                   help="the second text of a sentence pair (with --rerank: a passage; repeat for more)")
    p.add_argument("--rerank", action="store_true",
                   help="score (query, passage) pairs with a one-logit cross-encoder and sort them, best first "
                        "(--input: query<TAB>passage lines, ranked per query)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="tokens per input, special tokens included (default: the model's limit)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="inputs per forward pass (default 32)")
    add_model_args(p)
    p.set_defaults(func=run)


def _rows(path: str) -> list[list[str]]:
    from bertrt.commands.embed import read_lines

    return [line.split("\t") for line in read_lines(path) if line.strip()]


def _print_prediction(pred, args, **extra) -> None:
    if args.json:
        print(json.dumps({"label": pred.label, "score": round(pred.score, 6),
                          "probabilities": {k: round(v, 6) for k, v in pred.probabilities.items()}, **extra},
                         ensure_ascii=False))
    else:
        print(f"{pred.label}\t{pred.score:.4f}")


def _rerank(task_model, args) -> int:
    from bertrt.tasks.classification import rerank

    if args.text is not None:
        if not args.pair:
            raise UserError("--rerank needs passages: give one --pair PASSAGE per passage")
        queries = {args.text: list(args.pair)}
    else:
        queries = {}
        for number, row in enumerate(_rows(args.input), start=1):
            if len(row) != 2:
                raise UserError(f"--input {args.input}:{number}: --rerank expects query<TAB>passage lines")
            queries.setdefault(row[0], []).append(row[1])
    for query, passages in queries.items():
        for r in rerank(task_model, query, passages, max_length=args.max_length, batch_size=args.batch_size):
            if args.json:
                print(json.dumps({"query": query, "index": r.index, "score": round(r.score, 6),
                                  "passage": r.passage}, ensure_ascii=False))
            else:
                print(f"{r.score:.4f}\t{r.index}\t{r.passage}")
    return 0


def run(args: argparse.Namespace) -> int:
    from bertrt.tasks.classification import classify, evaluate_pairs
    from bertrt.tasks.loading import load_for_task
    from bertrt.tasks.train import read_pair_tsv

    if args.pair and args.input is not None:
        raise UserError("--pair goes with --text; with --input put the pair in the TSV's second column")
    if args.pair and len(args.pair) > 1 and not args.rerank:
        raise UserError("one --pair per --text (several passages need --rerank)")
    task_model = load_for_task(args.model, "text-classification", device=args.device, engine=args.engine)
    if args.rerank:
        return _rerank(task_model, args)
    options = dict(max_length=args.max_length, batch_size=args.batch_size)
    if args.text is not None:
        if not args.text.strip():
            raise UserError("the text is empty")
        _print_prediction(classify(task_model, [args.text], args.pair, **options)[0], args)
        return 0
    rows = _rows(args.input)
    if not rows:
        raise UserError(f"--input {args.input}: no lines to classify")
    if rows[0][0] == "Quality" and args.input != "-":  # GLUE MRPC, labelled
        examples = read_pair_tsv(args.input)
        preds, metrics = evaluate_pairs(task_model, [e.first for e in examples], [e.second for e in examples],
                                        [e.label for e in examples], **options)
        for pred, example in zip(preds, examples):
            _print_prediction(pred, args, gold=example.label)
        if args.json:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
        else:
            print(f"accuracy {metrics['accuracy']:.2f}  f1 {metrics['f1']:.2f}  ({metrics['count']} pairs)")
        return 0
    widths = {len(r) for r in rows}
    if not widths <= {1, 2} or len(widths) != 1:
        raise UserError(f"--input {args.input}: expected every line to be a text, or every line text<TAB>pair")
    pairs = [r[1] for r in rows] if widths == {2} else None
    for pred in classify(task_model, [r[0] for r in rows], pairs, **options):
        _print_prediction(pred, args)
    return 0
