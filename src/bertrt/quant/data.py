"""Calibration data: windows of SQuAD questions (the held-out articles are never read), packed.

Everything about the data is checked here, before any model runs: the file exists and is SQuAD,
the articles exist, and there are enough windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path

import torch

from bertrt.quant.calibration import MIN_FEATURES
from bertrt.quant.recipe import QuantError

DEFAULT_FEATURES = 512
BATCH = 32  # windows per calibration forward pass
HELD_OUT = slice(32, 48)  # SQuAD dev articles bertrt's results are scored on


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """Where and how to calibrate a low-precision build.

    Args:
        data: a SQuAD v1.1 json file (None: only ``cache`` may supply the scales).
        articles: which articles of it (file order); default 0-31.
        num: most windows to use (a fixed random draw when there are more).
        method: ``bertrt.quant.recipe.METHODS``; default the format's (``recipe.DEFAULT_METHOD``).
        cache: a calibration cache to reuse when it exists (and matches the weights), and to write
            otherwise.
        progress: show a progress bar.
    """

    data: str | Path | None = None
    articles: slice = dataclasses.field(default_factory=lambda: slice(0, 32))
    num: int = DEFAULT_FEATURES
    method: str | None = None
    cache: str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from bertrt.quant.recipe import parse_method

        if self.method is not None:
            parse_method(self.method)
        if not isinstance(self.num, int) or isinstance(self.num, bool) or self.num <= 0:
            raise QuantError(f"the number of calibration windows must be a positive integer, got {self.num!r}")

    def describe(self) -> str:
        a = self.articles
        return f"{a.start if a.start is not None else ''}:{a.stop if a.stop is not None else ''}"


def check_data(settings: CalibrationSettings) -> Path:
    """The data file, once it can be read (QuantError naming it otherwise)."""
    if settings.data is None:
        raise QuantError("a low-precision build needs calibration data (--calib-data FILE, SQuAD json) or an "
                         "existing --calib-cache")
    path = Path(settings.data)
    if not path.is_file():
        raise QuantError(f"--calib-data {path}: no such file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise QuantError(f"--calib-data {path}: cannot be read ({exc.strerror})") from exc
    return path


def calibration_batches(settings: CalibrationSettings, tokenizer, *, max_seq_length: int):
    """(packed batches, data description) of up to ``settings.num`` windows of the chosen articles."""
    from bertrt.packed import pack_sequences
    from bertrt.tasks.squad import FeatureConfig, make_features, read_squad, read_squad_articles

    path = check_data(settings)
    try:
        articles = read_squad_articles(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QuantError(f"--calib-data {path}: not a SQuAD json file ({exc})") from exc
    chosen = range(len(articles))[settings.articles]
    if not chosen:
        raise QuantError(f"--calib-data {path} has {len(articles)} articles; --calib-articles "
                         f"{settings.describe()} selects none")
    if set(chosen) & set(range(len(articles))[HELD_OUT]):
        warnings.warn(f"calibrating on articles {settings.describe()}, which include 32-47: bertrt's accuracy "
                      "figures are scored on those", UserWarning, stacklevel=2)
    examples = read_squad(path, settings.articles)
    features = make_features(examples, tokenizer, FeatureConfig(max_seq_length=max_seq_length))
    if len(features) < MIN_FEATURES:
        raise QuantError(f"--calib-data {path}: articles {settings.describe()} give {len(features)} windows; "
                         f"calibration needs at least {MIN_FEATURES}")
    if len(features) < settings.num:
        warnings.warn(f"calibration asked for {settings.num} windows; articles {settings.describe()} have "
                      f"{len(features)}: using them all", UserWarning, stacklevel=2)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0)).tolist()
    chosen_features = [features[i] for i in sorted(order[:settings.num])]
    batches = [pack_sequences([f.input_ids for f in chosen_features[i:i + BATCH]],
                              [f.token_type_ids for f in chosen_features[i:i + BATCH]])
               for i in range(0, len(chosen_features), BATCH)]
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    data = {"file": path.name, "sha256": sha, "articles": settings.describe(), "features": len(chosen_features)}
    return batches, data
