"""The query sample library: SQuAD v1.1 dev features, tokenised once, before any timing.

One LoadGen sample is one feature (one 384-token window), so the full dev set at 384/128/64 is
10,833 samples. Everything is tokenised when the library is built, so ``load``/``unload`` (which
LoadGen times as part of nothing) only note which samples are resident.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertrt.errors import UserError


class SquadQSL:
    """Features of a SQuAD json as int32 token arrays, indexed by LoadGen's sample index.

    Args:
        data: SQuAD v1.1 json.
        tokenizer: a ``BertTokenizer`` for the model's vocabulary.
        articles: slice of the json's articles (None = all).
        count: keep only the first ``count`` features; UserError if there are fewer.

    Attributes:
        examples: the questions the kept features come from (``SquadExample``).
        complete_examples: how many leading examples have all their windows among the samples.
        features: the kept ``SquadFeature`` s, in sample-index order.
        input_ids, token_type_ids: per sample, (len,) int32.
        lengths: (count,) int64 token count of each sample.
    """

    def __init__(self, data: str | Path, tokenizer, *, articles: slice | None = None,
                 count: int | None = None, progress: bool = False):
        from bertrt.tasks.squad import FeatureConfig, make_features, read_squad

        self.data = Path(data)
        self.articles = articles
        examples = read_squad(self.data, articles)
        if not examples:
            raise UserError(f"{self.data}: no questions in articles {_describe(articles)}")
        # Every example gives at least one feature, so the first `count` examples are enough.
        kept = examples if count is None else examples[:count]
        features = make_features(kept, tokenizer, FeatureConfig(max_seq_length=384, doc_stride=128,
                                                                 max_query_length=64), progress=progress)
        if count is not None:
            if count > len(features):
                raise UserError(f"--count {count} is larger than the data: {self.data} articles "
                                f"{_describe(articles)} give {len(features)} samples")
            # The last kept example may lose trailing windows to the cut: score only whole examples.
            last = features[count - 1].example_index
            whole = count == len(features) or features[count].example_index != last
            features = features[:count]
            self.complete_examples = last + 1 if whole else last
        else:
            self.complete_examples = len(kept)
        self.examples = kept
        self.features = features
        self.input_ids = [np.asarray(f.input_ids, dtype=np.int32) for f in features]
        self.token_type_ids = [np.asarray(f.token_type_ids, dtype=np.int32) for f in features]
        self.lengths = np.asarray([len(f.input_ids) for f in features], dtype=np.int64)
        self.loaded: set[int] = set()

    def __len__(self) -> int:
        return len(self.features)

    def load(self, indices: list[int]) -> None:
        self.loaded.update(int(i) for i in indices)

    def unload(self, indices: list[int]) -> None:
        self.loaded.difference_update(int(i) for i in indices)

    def construct(self):
        """Register with LoadGen; returns its handle (free it with ``mlperf_loadgen.DestroyQSL``)."""
        import mlperf_loadgen as lg

        return lg.ConstructQSL(len(self), len(self), self.load, self.unload)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, token_type_ids) of one sample, each (len,) int32."""
        return self.input_ids[index], self.token_type_ids[index]


def _describe(articles: slice | None) -> str:
    if articles is None:
        return "(all)"
    return f"{'' if articles.start is None else articles.start}:{'' if articles.stop is None else articles.stop}"
