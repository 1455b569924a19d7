"""Extractive QA beyond BERT: a RoBERTa's question/window layout and answers through its own tokenizer."""

from __future__ import annotations

import pytest
import torch

from bertrt.tasks.loading import load_for_task
from bertrt.tasks.qa import answer_question
from bertrt.tasks.squad import FeatureConfig, SquadExample, make_features, run_qa_model
from task_helpers import roberta_folder

transformers = pytest.importorskip("transformers")

QUESTION = "Who lived in London?"
CONTEXT = "Ada Lovelace lived in London with Charles Babbage. Rerankers score a query against each passage."


def test_roberta_windows_match_hugging_face_and_answers_are_exact(tmp_path):
    model, tok = roberta_folder(tmp_path / "qa", "RobertaForQuestionAnswering", num_labels=2)
    task_model = load_for_task(tmp_path / "qa", "question-answering")
    example = SquadExample(qid="q", title="", article_index=0, context=CONTEXT, question=QUESTION, answers=[])
    (feature,) = make_features([example], task_model.tokenizer, FeatureConfig(max_seq_length=128))
    hf = tok(QUESTION, CONTEXT, return_offsets_mapping=True)
    assert feature.input_ids == hf["input_ids"]  # <s> question </s></s> passage </s>
    passage = [i for i, t in enumerate(feature.token_offsets) if t is not None]
    assert [feature.token_offsets[i] for i in passage] == [tuple(hf["offset_mapping"][i]) for i in passage]
    starts, ends = run_qa_model(task_model.model, [feature])
    with torch.no_grad():
        out = model(input_ids=torch.tensor([hf["input_ids"]]))
    assert abs(torch.from_numpy(starts[0]) - out.start_logits[0]).max() <= 1e-4
    assert abs(torch.from_numpy(ends[0]) - out.end_logits[0]).max() <= 1e-4
    # Windows smaller than the passage: every answer is still cut from the original text.
    answer = answer_question(task_model.model, task_model.tokenizer, QUESTION, CONTEXT,
                             config=FeatureConfig(max_seq_length=24, doc_stride=8, max_query_length=10))
    assert answer.text and CONTEXT[answer.start:answer.end] == answer.text
