"""Distillation loss: a KL over each packed sequence's own tokens, zero when student = teacher."""

import pytest
import torch
import torch.nn.functional as F

from bertrt.packed import pack_sequences
from bertrt.tasks.train import Distillation, soft_qa_loss


def _batch(lengths):
    return pack_sequences([[1] * n for n in lengths])


def test_soft_loss_is_zero_when_the_student_matches_the_teacher():
    batch = _batch([3, 7, 1])
    logits = torch.randn(batch.total_tokens, 2)
    assert soft_qa_loss(logits, logits.clone(), batch, 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_loss_matches_a_per_sequence_kl(temperature):
    torch.manual_seed(0)
    lengths = [5, 2, 9]
    batch = _batch(lengths)
    student, teacher = torch.randn(batch.total_tokens, 2), torch.randn(batch.total_tokens, 2)
    expected = []
    for s, t in zip(student.split(lengths), teacher.split(lengths)):
        for col in range(2):  # start, end
            p = F.log_softmax(t[:, col] / temperature, 0)
            q = F.log_softmax(s[:, col] / temperature, 0)
            expected.append((p.exp() * (p - q)).sum())
    want = torch.stack(expected).mean() * temperature ** 2
    got = soft_qa_loss(student, teacher, batch, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() > 0


def test_soft_loss_gradient_pulls_the_student_toward_the_teacher():
    batch = _batch([4, 6])
    teacher = torch.randn(batch.total_tokens, 2)
    student = torch.zeros(batch.total_tokens, 2, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    first = None
    for _ in range(50):
        loss = soft_qa_loss(student, teacher, batch, 1.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(student.grad).all()
    assert loss.item() < first / 10


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError, match="teacher"):
        Distillation(())
    with pytest.raises(ValueError, match="weight"):
        Distillation(("t",), weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(("t",), temperature=0)
