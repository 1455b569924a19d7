"""WordPiece tokenisation with character offsets, through the ``tokenizers`` library.

Follows BERT's basic rules: clean control characters, split CJK characters and punctuation,
lower-case and strip accents for uncased vocabularies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Encoding:
    """Token ids of one text and, for each token, its (start, end) character span in that text."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class BertTokenizer:
    """BERT WordPiece tokeniser built from a ``vocab.txt``.

    Args:
        vocab_file: one token per line, ids in line order (UTF-8).
        lowercase: lower-case and strip accents (uncased vocabularies).
        vocab_size: the model's embedding rows; a longer vocabulary is refused (its ids would
            index past the table).
    """

    def __init__(self, vocab_file: str | Path, *, lowercase: bool = True, vocab_size: int | None = None):
        vocab_file = Path(vocab_file)
        try:
            lines = vocab_file.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{vocab_file}: not a UTF-8 vocab.txt (bad byte at offset {exc.start})") from None
        if vocab_size is not None and len(lines) > vocab_size:
            raise ValueError(f"{vocab_file}: {len(lines)} tokens, but the model's embedding table has "
                             f"{vocab_size} rows (vocab_size): use the vocab.txt the model was trained with")
        vocab = {}
        for i, token in enumerate(lines):
            vocab.setdefault(token, i)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: not a BERT vocab (no {', '.join(missing)})")
        self.vocab = vocab
        self.vocab_size = len(lines)
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        self._tok = tok
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_id = vocab.get("[PAD]", 0)

    def encode(self, text: str) -> Encoding:
        """Tokens of ``text`` (no special tokens) with character offsets into ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return Encoding(list(enc.ids), [tuple(o) for o in enc.offsets])

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        return [Encoding(list(e.ids), [tuple(o) for o in e.offsets])
                for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def pair(self, first: list[int], second: list[int] | None = None) -> tuple[list[int], list[int]]:
        """[CLS] first [SEP] (second [SEP]) with token types 0...0 (1...1)."""
        ids = [self.cls_id, *first, self.sep_id]
        types = [0] * len(ids)
        if second is not None:
            ids += [*second, self.sep_id]
            types += [1] * (len(second) + 1)
        return ids, types

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)
