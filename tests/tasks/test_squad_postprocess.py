"""Running a QA model on packed features, post-processing logits to spans, writing predictions."""

import json

import numpy as np
import pytest
import torch

from bertrt.config import BertConfig
from bertrt.reference import ReferenceBert
from bertrt.tasks.squad import (FeatureConfig, SquadExample, make_features, postprocess,
                                run_qa_model, write_predictions)

CONTEXT = "In 1898, Marie Curie and Pierre Curie discovered Polonium in Paris, France."


def _example(context=CONTEXT, question="Who discovered polonium?", qid="q0"):
    return SquadExample(qid=qid, title="t", article_index=0, context=context, question=question,
                        answers=[])


def _token_index(feature, context, word):
    """Index in the feature of the first passage token whose text is ``word``."""
    for i, o in enumerate(feature.token_offsets):
        if o is not None and context[o[0]:o[1]] == word:
            return i
    raise AssertionError(word)


def _logits(feature, start=None, end=None):
    s = np.full(len(feature.input_ids), -10.0, dtype=np.float32)
    e = s.copy()
    for i, v in (start or {}).items():
        s[i] = v
    for i, v in (end or {}).items():
        e[i] = v
    return s, e


def test_postprocess_returns_cased_span(tokenizer):
    ex = _example()
    f, = make_features([ex], tokenizer)
    marie, curie = _token_index(f, CONTEXT, "Marie"), _token_index(f, CONTEXT, "rie")  # Cu ##rie
    s, e = _logits(f, {marie: 8.0, 0: 20.0, 1: 15.0}, {curie: 7.0, 0: 20.0, marie - 1: 30.0})
    # With the top 3 starts and ends: [CLS] and question tokens are never answers, and the best
    # end (just before "Marie") comes before the only valid start.
    predictions, nbest = postprocess([ex], [f], [s], [e], n_best_size=3)
    assert predictions == {"q0": "Marie Curie"}
    best = nbest["q0"][0]
    assert (best["start"], best["end"]) == (CONTEXT.index("Marie"), CONTEXT.index("Marie") + 11)
    assert best["start_logit"] == 8.0 and best["end_logit"] == 7.0
    probs = [n["probability"] for n in nbest["q0"]]
    assert abs(sum(probs) - 1) < 1e-9 and probs == sorted(probs, reverse=True)
    assert [n["text"] for n in nbest["q0"]] == ["Marie Curie"]
    _, nbest = postprocess([ex], [f], [s], [e])
    assert nbest["q0"][0]["text"] == "In 1898,"  # -10 + 30 beats 8 + 7 once all starts are in
    assert len({n["text"] for n in nbest["q0"]}) == len(nbest["q0"]) == 20


def test_postprocess_max_answer_length_and_accents(tokenizer):
    context = "The prize went to José Müller-Ørsted of Zürich last year."
    ex = _example(context, "Who won?")
    f, = make_features([ex], tokenizer)
    jose, orsted = _token_index(f, context, "José"), _token_index(f, context, "ed")  # Ø ##rst ##ed
    s, e = _logits(f, {jose: 9.0}, {orsted: 9.0, jose: 1.0})
    assert postprocess([ex], [f], [s], [e])[0]["q0"] == "José Müller-Ørsted"
    # Too long a span for max_answer_length: the next best, single-token span wins.
    assert postprocess([ex], [f], [s], [e], max_answer_length=2)[0]["q0"] == "José"


def test_postprocess_empty_when_nothing_valid(tokenizer):
    ex = _example()
    f, = make_features([ex], tokenizer)
    assert f.token_type_ids[1] == f.token_type_ids[2] == 0
    # Only question tokens in the top-1 starts and ends.
    s, e = _logits(f, {1: 9.0}, {2: 9.0})
    predictions, nbest = postprocess([ex], [f], [s], [e], n_best_size=1)
    assert predictions == {"q0": ""}
    assert nbest["q0"] == [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0,
                            "start": 0, "end": 0}]


def test_postprocess_uses_max_context_window(tokenizer):
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    context = " ".join(words[i % len(words)] + str(i % 2) for i in range(40))
    ex = _example(context, "which?")
    config = FeatureConfig(max_seq_length=24, doc_stride=6, max_query_length=8)
    features = make_features([ex], tokenizer, config)
    assert len(features) > 3
    # The first passage token of the second window has more context in the first window. Aim the
    # highest logits at it there, lower ones at a later token that has its max context there.
    f_bad = features[1]
    passage = [i for i, o in enumerate(f_bad.token_offsets) if o is not None]
    bad = passage[0]
    assert not f_bad.token_is_max_context[bad]
    good = next(i for i in passage if f_bad.token_is_max_context[i])
    logits = [_logits(f) for f in features]
    k = features.index(f_bad)
    logits[k] = _logits(f_bad, {bad: 9.0, good: 3.0}, {bad: 9.0, good: 3.0})
    predictions, _ = postprocess([ex], features, [s for s, _ in logits], [e for _, e in logits])
    o = f_bad.token_offsets[good]
    assert predictions["q0"] == context[o[0]:o[1]]


def test_postprocess_combines_windows_of_each_example(tokenizer):
    a, b = _example(qid="a"), _example(context="Berlin is the capital of Germany.", question="Capital?", qid="b")
    fa, fb = make_features([a, b], tokenizer)
    assert (fa.example_index, fb.example_index) == (0, 1)
    sa, ea = _logits(fa, {_token_index(fa, CONTEXT, "Paris"): 4.0}, {_token_index(fa, CONTEXT, "France"): 4.0})
    sb, eb = _logits(fb, {_token_index(fb, b.context, "Berlin"): 4.0}, {_token_index(fb, b.context, "Berlin"): 4.0})
    predictions, _ = postprocess([a, b], [fa, fb], [sa, sb], [ea, eb])
    assert predictions == {"a": "Paris, France", "b": "Berlin"}
    with pytest.raises(ValueError, match="features"):
        postprocess([a, b], [fa, fb], [sa], [ea, eb])


class _IdModel(torch.nn.Module):
    """qa_logits = (input id, position id): lets the test check the packing and the split."""

    def __init__(self):
        super().__init__()
        self.device = torch.device("cpu")
        self.calls = 0

    def qa_logits(self, batch):
        assert torch.is_inference_mode_enabled()
        self.calls += 1
        return torch.stack([batch.input_ids, batch.position_ids], dim=-1).float()


def test_run_qa_model_splits_back_per_feature(tokenizer):
    examples = [_example(CONTEXT * k, qid=str(k)) for k in range(1, 8)]
    features = make_features(examples, tokenizer, FeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=16))
    model = _IdModel()
    starts, ends = run_qa_model(model, features, batch_size=3)
    assert model.calls == -(-len(features) // 3)
    assert len(starts) == len(ends) == len(features)
    for f, s, e in zip(features, starts, ends):
        assert s.dtype == np.float32 and s.shape == (len(f.input_ids),)
        assert s.tolist() == f.input_ids
        assert e.tolist() == list(range(len(f.input_ids)))


def test_run_qa_model_reference_packed_equals_single(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    model = ReferenceBert(config, heads=("qa",))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    features = make_features([_example(CONTEXT * 3), _example("Short one.", "Q?")], tokenizer,
                             FeatureConfig(max_seq_length=48, doc_stride=16, max_query_length=8))
    starts, ends = run_qa_model(model, features, batch_size=4)
    for i, f in enumerate(features):
        s1, e1 = run_qa_model(model, [f])
        np.testing.assert_allclose(starts[i], s1[0], atol=1e-5)
        np.testing.assert_allclose(ends[i], e1[0], atol=1e-5)


def test_write_predictions_writes_both_files_atomically(tmp_path):
    out = tmp_path / "run" / "predictions.json"
    nbest = {"q0": [{"text": "Zürich", "probability": 1.0, "start_logit": 1.5, "end_logit": 2.0,
                     "start": 3, "end": 9}]}
    write_predictions({"q0": "Zürich"}, nbest, out)
    write_predictions({"q0": "Zürich", "q1": ""}, nbest, out)  # overwrites in place
    assert json.loads(out.read_text(encoding="utf-8")) == {"q0": "Zürich", "q1": ""}
    assert json.loads((out.parent / "nbest_predictions.json").read_text(encoding="utf-8")) == nbest
    assert sorted(p.name for p in out.parent.iterdir()) == ["nbest_predictions.json", "predictions.json"]


@pytest.mark.parametrize("n_best_size,max_answer_length,levels", [(20, 30, None), (5, 3, None), (20, 30, 4)])
def test_postprocess_matches_the_original_loops(tokenizer, n_best_size, max_answer_length, levels):
    """The vectorised candidate search gives what original BERT's nested loops give: the same
    n-best lists, in the same order, ties (``levels``: logits rounded to a few values) included."""
    from bertrt.tasks.squad import postprocess_ref

    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "Müller", "1898,"]
    rng = np.random.default_rng(3)
    examples = [_example(" ".join(words[(i * k) % len(words)] + str(i % 3) for i in range(10 + 23 * k)),
                         f"which {k}?", qid=f"q{k}") for k in range(6)]
    config = FeatureConfig(max_seq_length=32, doc_stride=8, max_query_length=8)
    features = make_features(examples, tokenizer, config)
    assert len(features) > 2 * len(examples)  # several windows per example
    starts, ends = [], []
    for f in features:
        s, e = rng.standard_normal((2, len(f.input_ids))).astype(np.float32)
        if levels:
            s, e = np.round(s * levels / 3), np.round(e * levels / 3)
        starts.append(s.astype(np.float32))
        ends.append(e.astype(np.float32))
    got = postprocess(examples, features, starts, ends, n_best_size=n_best_size, max_answer_length=max_answer_length)
    want = postprocess_ref(examples, features, starts, ends, n_best_size=n_best_size,
                           max_answer_length=max_answer_length)
    assert got == want
