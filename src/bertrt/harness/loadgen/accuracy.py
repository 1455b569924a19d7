"""Accuracy mode, scored after the timed run as MLPerf's ``accuracy-squad.py`` does.

LoadGen writes every response of an accuracy run to ``mlperf_log_accuracy.json`` as
``[{"seq_id", "qsl_idx", "data": "<hex bytes>"}, ...]``; our responses are (len, 2) float32 logits.
We turn them back into start/end logits per feature, post-process them into answers and score
EM/F1 with our SQuAD metric over the questions whose windows are all in the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ACCURACY_LOG = "mlperf_log_accuracy.json"


def read_accuracy_log(path: str | Path) -> dict[int, np.ndarray]:
    """qsl_idx -> (len, 2) float32 logits from a LoadGen accuracy log (a repeated index keeps its
    first response)."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    logits: dict[int, np.ndarray] = {}
    for entry in entries:
        index = int(entry["qsl_idx"])
        if index not in logits:
            logits[index] = np.frombuffer(bytes.fromhex(entry["data"]), dtype=np.float32).reshape(-1, 2)
    return logits


def score(qsl, logits: dict[int, np.ndarray]) -> dict:
    """EM/F1 of the answers the logged logits give, over the QSL's whole questions.

    Args:
        qsl: the ``SquadQSL`` of the run (features, examples, complete_examples, data, articles).
        logits: from ``read_accuracy_log``.

    Returns:
        {"exact_match", "f1", "questions", "samples", "predictions"}; scores in percent.
    """
    from bertrt.tasks.squad import postprocess, read_squad_articles
    from bertrt.tasks.squad_metric import evaluate

    missing = [i for i in range(len(qsl)) if i not in logits]
    if missing:
        raise ValueError(f"the accuracy log has no response for {len(missing)} of {len(qsl)} samples "
                         f"(first: {missing[0]})")
    for i in range(len(qsl)):
        if logits[i].shape[0] != qsl.lengths[i]:
            raise ValueError(f"sample {i}: logged {logits[i].shape[0]} token logits for a "
                             f"{qsl.lengths[i]}-token sample")
    examples = qsl.examples[:qsl.complete_examples]
    if not examples:
        raise ValueError(f"no question has all its windows among the {len(qsl)} samples; raise --count")
    keep = [i for i, f in enumerate(qsl.features) if f.example_index < qsl.complete_examples]
    features = [qsl.features[i] for i in keep]
    predictions, _ = postprocess(examples, features, [logits[i][:, 0] for i in keep],
                                 [logits[i][:, 1] for i in keep])
    qids = {ex.qid for ex in examples}
    metrics = evaluate(_only_questions(read_squad_articles(qsl.data, qsl.articles), qids), predictions)
    return {**metrics, "questions": len(examples), "samples": len(keep), "predictions": predictions}


def _only_questions(articles: list[dict], qids: set[str]) -> list[dict]:
    """The articles cut down to the questions in ``qids`` (so unscored questions do not count 0)."""
    out = []
    for article in articles:
        paragraphs = []
        for para in article["paragraphs"]:
            qas = [qa for qa in para["qas"] if qa["id"] in qids]
            if qas:
                paragraphs.append({**para, "qas": qas})
        if paragraphs:
            out.append({**article, "paragraphs": paragraphs})
    return out
