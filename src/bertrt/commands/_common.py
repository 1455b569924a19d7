"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, *, engine: bool = True) -> None:
    parser.add_argument("--model", metavar="PATH",
                        help="checkpoint: Hugging Face folder, TensorFlow checkpoint, .onnx, state dict, or a "
                             "hub name when online (default: the embedded SQuAD-tuned MiniLM)")
    if engine:
        parser.add_argument("--engine", metavar="DIR", help="a saved engine from `bertrt build` (overrides --model)")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU when present, else CPU), cpu, cuda or cuda:N (default: auto)")
