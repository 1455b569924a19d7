"""The public Python API: `import bertrt` is light, the pipelines answer, every example runs."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
import torch

import bertrt
from bertrt.config import BertConfig
from bertrt.weights import CheckpointError, random_checkpoint, save_hf_folder


def test_import_bertrt_imports_no_torch():
    code = ("import sys, bertrt; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert {'pipeline', 'build', 'Engine', 'load_checkpoint'} <= set(dir(bertrt)); print(bertrt.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == bertrt.__version__


def _examples():
    import bertrt.pipelines

    objects = [bertrt, bertrt.pipelines, bertrt.pipeline, bertrt.build, bertrt.Engine, bertrt.load_checkpoint]
    finder = doctest.DocTestFinder()
    tests = {}
    for obj in objects:
        for test in finder.find(obj):
            if test.examples:
                tests[test.name] = test
    return tests


EXAMPLES = _examples()


def test_every_public_name_has_a_runnable_example():
    documented = {name.split(".")[-1] for name in EXAMPLES}
    assert {"bertrt", "pipeline", "build", "Engine", "load_checkpoint"} <= documented


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(EXAMPLES[name], out=lambda text: print(text, end=""))
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


@pytest.fixture(scope="module")
def qa():
    return bertrt.pipeline("question-answering", device="cpu")


def test_question_answering_answers_with_offsets(qa):
    context = "The engine was built in Haifa by a small team in 2024."
    answer = qa(question="Where was the engine built?", context=context)
    assert set(answer) == {"answer", "score", "start", "end"}
    assert context[answer["start"]:answer["end"]] == answer["answer"] == "Haifa"
    assert 0.0 < answer["score"] <= 1.0


def test_question_answering_takes_lists(qa):
    answers = qa(question=["Who wrote it?", "When?"], context=["Ada Lovelace wrote it.", "It was written in 1843."])
    assert [a["answer"] for a in answers] == ["Ada Lovelace", "1843"]
    with pytest.raises(ValueError, match="2 questions but 3 contexts"):
        qa(question=["a?", "b?"], context=["x", "y", "z"])
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        qa(question=" ", context="text")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="feature-extraction, question-answering, text-classification"):
        bertrt.pipeline("summarization")


def test_feature_extraction_is_mean_pooling_of_the_reference(tmp_path):
    from bertrt.packed import pack_sequences
    from bertrt.reference import ReferenceBert

    embed = bertrt.pipeline("feature-extraction", device="cpu")
    texts = ["a short one", "a somewhat longer sentence than the first"]
    vectors = embed(texts)
    assert vectors.shape == (2, 384) and vectors.dtype == torch.float32
    ids = [embed.tokenizer.pair(e.ids)[0] for e in embed.tokenizer.encode_batch(texts)]
    model = ReferenceBert.from_checkpoint(bertrt.load_checkpoint())
    batch = pack_sequences(ids)
    with torch.inference_mode():
        expected = model.mean_pooled(batch)
    torch.testing.assert_close(vectors, expected)
    torch.testing.assert_close(embed(texts[1]), expected[1])


def test_long_texts_are_cut_to_the_model_length():
    embed = bertrt.pipeline("feature-extraction", device="cpu")
    assert embed("word " * 2000).shape == (384,)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from bertrt.weights import DEFAULT_MODEL_DIR

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    checkpoint = random_checkpoint(config, heads=("classifier",), std=0.2)
    checkpoint = type(checkpoint)(checkpoint.config, checkpoint.tensors, vocab_file=DEFAULT_MODEL_DIR / "vocab.txt",
                                  source="random")
    return save_hf_folder(checkpoint, tmp_path_factory.mktemp("clf") / "model")


def test_text_classification_matches_the_reference(classifier_dir):
    from bertrt.packed import pack_sequences
    from bertrt.reference import ReferenceBert

    clf = bertrt.pipeline("text-classification", model=classifier_dir, device="cpu")
    out = clf(["it rained", "the sun"], text_pair="the ground is wet")
    assert [set(o) for o in out] == [{"label", "score"}] * 2
    tok = clf.tokenizer
    ids, types = zip(*(tok.pair(tok.encode(a).ids, tok.encode("the ground is wet").ids) for a in ("it rained", "the sun")))
    model = ReferenceBert.from_checkpoint(bertrt.load_checkpoint(classifier_dir))
    with torch.inference_mode():
        probs = model.classify(pack_sequences(list(ids), list(types))).softmax(-1)
    for o, p in zip(out, probs):
        assert o["label"] == f"LABEL_{int(p.argmax())}" and o["score"] == pytest.approx(float(p.max()), abs=1e-5)
    single = clf("it rained", text_pair="the ground is wet")
    assert single["label"] == out[0]["label"] and single["score"] == pytest.approx(out[0]["score"], abs=1e-5)


def test_a_task_asks_for_its_head():
    with pytest.raises(CheckpointError, match="no sequence-classification head"):
        bertrt.pipeline("text-classification", device="cpu")
