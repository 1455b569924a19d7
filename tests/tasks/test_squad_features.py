"""SQuAD features: reading, windows (original BERT run_squad.py), offsets and training targets."""

import pytest

from bertrt.errors import BertrtWarning
from bertrt.tasks.squad import (FeatureConfig, SquadExample, doc_spans, make_features, max_context_flags,
                                read_squad, read_squad_articles)
from bertrt.tasks.squad_metric import normalize_answer

WORDS = ["apple", "river", "house", "green", "table", "music", "water", "light", "stone", "cloud"]


def _example(context, question="what is it?", answers=(), qid="q0"):
    return SquadExample(qid=qid, title="t", article_index=0, context=context, question=question,
                        answers=list(answers))


def _long_passage(tokenizer, n_words):
    for w in WORDS:  # each filler word must be one WordPiece token for the arithmetic below
        assert len(tokenizer.encode(w).ids) == 1, w
    return " ".join(WORDS[i % len(WORDS)].capitalize() if i % 7 == 0 else WORDS[i % len(WORDS)]
                    for i in range(n_words))


def _passage_starts(feature):
    """Indices in the feature of its passage tokens."""
    return [i for i, o in enumerate(feature.token_offsets) if o is not None]


# --- reading -----------------------------------------------------------------------------------


def test_read_squad_dev(squad_dev):
    examples = read_squad(squad_dev)
    assert len(examples) == 10570
    assert len({e.qid for e in examples}) == 10570
    first = examples[0]
    assert first.article_index == 0 and first.title == "Super_Bowl_50"
    for a in first.answers:
        assert first.context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]

    some = read_squad(squad_dev, articles=slice(2, 4))
    assert {e.article_index for e in some} == {2, 3}
    data = read_squad_articles(squad_dev, articles=slice(2, 4))
    assert len(some) == sum(len(p["qas"]) for a in data for p in a["paragraphs"])


@pytest.mark.parametrize("content, message", [
    ("not json at all", "not valid JSON"),
    ("[1, 2]", '"data"'),
    ('{"data": [{"title": "x"}]}', "paragraphs"),
    ('{"data": [{"paragraphs": [{"context": "c"}]}]}', "qas"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]}', '"id"'),
])
def test_read_squad_rejects_other_files(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="not a SQuAD json file") as err:
        read_squad(path)
    assert message in str(err.value)


# --- windows -----------------------------------------------------------------------------------


def test_full_dev_gives_10833_features(squad_dev, tokenizer):
    examples = read_squad(squad_dev)
    features = make_features(examples, tokenizer)
    assert len(features) == 10833  # the count MLPerf and NVIDIA quote for BERT at 384/128/64
    assert max(len(f.input_ids) for f in features) == 384
    assert {f.example_index for f in features} == set(range(len(examples)))


def test_doc_spans_step_is_stride_not_overlap():
    # 30 tokens, windows of 13: start at 0 and step by min(13, 4).
    assert doc_spans(30, 13, 4) == [(0, 13), (4, 13), (8, 13), (12, 13), (16, 13), (20, 10)]
    # A stride larger than the window steps by the window: no overlap, no gap.
    assert doc_spans(30, 13, 50) == [(0, 13), (13, 13), (26, 4)]
    assert doc_spans(13, 13, 4) == [(0, 13)]
    assert doc_spans(0, 13, 4) == []


def test_max_context_by_hand():
    spans = doc_spans(30, 13, 4)
    flags = [dict(zip(range(s, s + n), max_context_flags(spans, i))) for i, (s, n) in enumerate(spans)]
    # Token 10: windows 0, 1, 2 give min(10, 2), min(6, 6), min(2, 10): window 1.
    assert [f.get(10) for f in flags] == [False, True, False, None, None, None]
    # Token 12: windows 1 and 2 tie at min(8, 4) = min(4, 8) = 4 (same length): the first wins.
    assert [f.get(12) for f in flags] == [False, True, False, False, None, None]
    # Token 29 is only in the last window, token 0 only in the first.
    assert flags[-1][29] and flags[0][0]
    # Token 7 in windows 0..9 and 5..9: equal min(7, 2) = min(2, 2); the longer window wins
    # through the 0.01 * length term.
    assert max_context_flags([(0, 10), (5, 5)], 0)[7] is True
    assert max_context_flags([(0, 10), (5, 5)], 1) == [False] * 5
    assert max_context_flags([(0, 5), (0, 10)], 1)[2] is True  # and a later, longer one too


def test_windows_on_long_passage(tokenizer):
    context = _long_passage(tokenizer, 1000)
    question = "what is it?"
    q_ids = tokenizer.encode(question).ids
    features = make_features([_example(context, question)], tokenizer)
    max_doc = 384 - len(q_ids) - 3

    starts = []
    covered = {}
    for f in features:
        assert len(f.input_ids) <= 384
        assert len(f.input_ids) == len(f.token_type_ids) == len(f.token_offsets) == len(f.token_is_max_context)
        assert f.input_ids[:len(q_ids) + 2] == [tokenizer.cls_id, *q_ids, tokenizer.sep_id]
        assert f.input_ids[-1] == tokenizer.sep_id
        assert f.token_type_ids == [0] * (len(q_ids) + 2) + [1] * (len(f.input_ids) - len(q_ids) - 2)
        passage = _passage_starts(f)
        assert passage == list(range(len(q_ids) + 2, len(f.input_ids) - 1))
        word_index = [len(context[:f.token_offsets[i][0]].split()) for i in passage]
        starts.append(word_index[0])
        assert word_index == list(range(word_index[0], word_index[0] + len(passage)))
        for i, w in zip(passage, word_index):
            # offsets index the original (cased) context
            start, end = f.token_offsets[i]
            assert context[start:end] == context.split()[w]
            covered.setdefault(w, []).append(f.token_is_max_context[i])
        assert not any(f.token_is_max_context[i] for i in range(len(f.input_ids)) if i not in passage)

    assert starts == list(range(0, 128 * len(starts), 128))
    assert starts[-1] + max_doc >= 1000 > starts[-2] + max_doc  # the last window reaches the end
    assert sorted(covered) == list(range(1000))  # every passage token is in some window
    assert all(sum(flags) == 1 for flags in covered.values())  # ... and scored in exactly one
    # Token 200 is in windows 0 (0..376) and 1 (128..504): min(200, 176) beats min(72, 304).
    assert covered[200] == [True, False]
    # Token 300 is in windows 0, 1, 2 (256..632): min(172, 204) = 172 is the best (window 1).
    assert covered[300] == [False, True, False]


def test_small_config_and_question_truncation(tokenizer):
    context = _long_passage(tokenizer, 30)
    question = " ".join(["why"] * 10)
    config = FeatureConfig(max_seq_length=20, doc_stride=4, max_query_length=5)
    with pytest.warns(BertrtWarning, match=r"1 question\(s\) longer than max_query_length 5 tokens \(longest: 10\)"):
        features = make_features([_example(context, question)], tokenizer, config)
    assert [f.input_ids[1:6] for f in features] == [[tokenizer.encode("why").ids[0]] * 5] * 6
    assert [len(context[:f.token_offsets[7][0]].split()) for f in features] == [0, 4, 8, 12, 16, 20]
    assert all(len(f.input_ids) <= 20 for f in features)


def test_feature_config_rejects_impossible_geometry():
    with pytest.raises(ValueError, match="no room"):
        FeatureConfig(max_seq_length=64, max_query_length=64)
    with pytest.raises(ValueError, match="positive"):
        FeatureConfig(doc_stride=0)


def test_offsets_skip_unusual_whitespace(tokenizer):
    context = "Caf\u00e9\u00a0Na\u00efve\u200b  zero\u2009width\n\tend."
    f, = make_features([_example(context)], tokenizer)
    texts = [context[o[0]:o[1]] for o in f.token_offsets if o is not None]
    assert texts == ["Café", "Naïve", "zero", "width", "end", "."]


# --- training targets --------------------------------------------------------------------------


def test_training_targets_recover_gold_answers(squad_dev, tokenizer):
    examples = read_squad(squad_dev, articles=slice(0, 32))
    features = make_features(examples, tokenizer, training=True)
    found, exact = set(), 0
    targets = 0
    for f in features:
        if f.start_position == f.end_position == 0:
            continue
        targets += 1
        ex = examples[f.example_index]
        assert 0 < f.start_position <= f.end_position < len(f.input_ids) - 1
        assert f.token_offsets[f.start_position] is not None and f.token_offsets[f.end_position] is not None
        text = ex.context[f.token_offsets[f.start_position][0]:f.token_offsets[f.end_position][1]]
        gold = ex.answers[0]["text"]
        exact += text == gold
        assert normalize_answer(gold) in normalize_answer(text) or gold in text
        found.add(f.example_index)
    assert exact >= 0.99 * targets
    assert len(found) >= 0.99 * len(examples)
    # Without training=True there are no targets.
    assert all(f.start_position == f.end_position == 0 for f in make_features(examples[:50], tokenizer))


def test_training_target_outside_window_is_cls(tokenizer):
    context = _long_passage(tokenizer, 1000) + " The answer is Zanzibar."
    start = context.index("Zanzibar")
    ex = _example(context, answers=[{"text": "Zanzibar", "answer_start": start}])
    features = make_features([ex], tokenizer, training=True)
    assert len(features) > 3
    with_answer = [f for f in features if f.start_position]
    assert with_answer and with_answer[-1] is features[-1]
    for f in with_answer:
        s, e = f.token_offsets[f.start_position][0], f.token_offsets[f.end_position][1]
        assert context[s:e] == "Zanzibar"
    assert features[0].start_position == features[0].end_position == 0


@pytest.mark.parametrize("text, expected", [("32:48", slice(32, 48)), (":32", slice(None, 32)), ("32:", slice(32, None)),
                                            ("5", slice(5, 6)), (None, None)])
def test_parse_articles(text, expected):
    from bertrt.tasks.squad import parse_articles

    assert parse_articles(text) == expected


@pytest.mark.parametrize("text", ["a:b", "1:2:3", "", "five"])
def test_parse_articles_says_what_it_expects(text):
    from bertrt.errors import UserError
    from bertrt.tasks.squad import parse_articles

    with pytest.raises(UserError, match="expected A:B"):
        parse_articles(text)


def test_a_contexts_cache_gives_the_same_features_and_keeps_within_its_bounds(tokenizer):
    from bertrt.tasks.squad import SquadExample, make_features
    from bertrt.tokenizer import EncodingCache

    contexts = [f"Passage {i} says the treaty was signed in Lisbon in {1800 + i}. " * (1 + i % 3) for i in range(6)]
    examples = [SquadExample(qid=str(i), title="", article_index=0, context=contexts[i % 6],
                             question=f"When was treaty {i} signed?", answers=[]) for i in range(12)]
    cache = EncodingCache(max_texts=4)
    plain = make_features(examples, tokenizer)
    first = make_features(examples, tokenizer, contexts_cache=cache)
    again = make_features(examples[8:], tokenizer, contexts_cache=cache)  # contexts 2..5: the kept four
    assert first == plain and again == make_features(examples[8:], tokenizer)
    assert len(cache) == 4 and cache.hits == 4 and cache.misses == 6
    small = EncodingCache(max_chars=len(contexts[0]) + len(contexts[1]))
    make_features(examples[:3], tokenizer, contexts_cache=small)
    assert len(small) <= 2
