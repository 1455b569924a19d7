"""answer_question: long passages through windows, answers projected onto the original text."""

import pytest
import torch

from bertrt.tasks.qa import Answer, answer_question
from bertrt.tasks.squad import FeatureConfig


class _FindAnswerModel(torch.nn.Module):
    """A fake QA model that 'knows' the answer's token ids: it puts a high start logit where the
    passage holds the answer's id sequence and a high end logit at its last token."""

    def __init__(self, answer_ids):
        super().__init__()
        self.answer_ids = torch.tensor(answer_ids)
        self.sequences = 0
        self.bias = torch.nn.Parameter(torch.zeros(()))  # the device comes from the parameters

    def qa_logits(self, batch):
        self.sequences += batch.num_sequences
        ids, k = batch.input_ids, len(self.answer_ids)
        logits = torch.randn(ids.numel(), 2, generator=torch.Generator().manual_seed(0))
        if ids.numel() >= k:
            hit = (ids.unfold(0, k, 1) == self.answer_ids).all(1)
            hit &= (batch.token_type_ids.unfold(0, k, 1) == 1).all(1)
            starts = hit.nonzero().flatten()
            logits[starts, 0] += 20
            logits[starts + k - 1, 1] += 20
        return logits + self.bias


FILLER = ("The river runs past the old mill where farmers bring their grain every autumn, "
          "and the miller weighs each sack before the long winter arrives. ")


def test_answer_near_end_of_long_passage(tokenizer):
    context = FILLER * 60 + "The charter was signed by Governor Ximena Ollantay in Cusco. " + FILLER
    question = "Who signed the charter?"
    answer_ids = tokenizer.encode("Ximena Ollantay").ids
    assert len(tokenizer.encode(context).ids) > 3 * 384
    model = _FindAnswerModel(answer_ids)
    answer = answer_question(model, tokenizer, question, context)
    assert model.sequences > 3  # the passage went through several windows
    assert isinstance(answer, Answer)
    assert answer.text == "Ximena Ollantay"  # cased, cut from the original context
    assert context[answer.start:answer.end] == answer.text
    assert answer.start == context.index("Ximena")
    assert answer.score > 30 and 0 < answer.probability <= 1


def test_answer_in_window_overlap_with_small_windows(tokenizer):
    context = FILLER * 4 + "Its capital is São Tomé, on the island. " + FILLER * 4
    answer_ids = tokenizer.encode("São Tomé").ids
    config = FeatureConfig(max_seq_length=48, doc_stride=8, max_query_length=16)
    answer = answer_question(_FindAnswerModel(answer_ids), tokenizer, "What is the capital?", context,
                             config=config)
    assert (answer.text, answer.start) == ("São Tomé", context.index("São"))


@pytest.mark.parametrize("question, context, message", [
    ("", "Some context.", "question"),
    ("   \n", "Some context.", "question"),
    ("Who?", "", "context"),
    ("Who?", " \t ", "context"),
    ("Who?", "\u200b\u200b", "context has no tokens"),
])
def test_empty_inputs_raise(tokenizer, question, context, message):
    with pytest.raises(ValueError, match=message):
        answer_question(_FindAnswerModel([1]), tokenizer, question, context)
