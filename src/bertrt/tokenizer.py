"""Tokenisation with character offsets, through the ``tokenizers`` library, from a checkpoint's own files.

``load_tokenizer(folder)`` reads, in this order: ``tokenizer.json`` (any family: WordPiece, byte-level
BPE, SentencePiece-style Unigram), ``vocab.json`` + ``merges.txt`` (RoBERTa's byte-level BPE), or
``vocab.txt`` (BERT's WordPiece, cased or not as ``tokenizer_config.json`` says). Every tokenizer
gives character offsets into the original text (``text[start:end]`` is the token's surface) and
adds its family's special tokens through ``pair``.

``BertTokenizer`` follows BERT's basic rules: clean control characters, split CJK characters and
punctuation, lower-case and strip accents for uncased vocabularies.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Encoding:
    """Token ids of one text and, for each token, its (start, end) character span in that text."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    # Index of the word each token belongs to (the pre-tokenizer's words), when known.
    words: list[int | None] | None = None


def _encoding(enc, text: str) -> Encoding:
    return Encoding(list(enc.ids), [_trim(text, s, e) for s, e in enc.offsets], list(enc.word_ids))


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's span without the whitespace some tokenizers fold into it (SentencePiece's "▁");
    a token of whitespace alone keeps an empty span where it ends."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class EncodingCache:
    """The encodings of recently tokenised texts, by text, least recently used dropped first: a
    server's clients often ask several questions about one passage. Thread-safe.

    Args:
        max_texts: texts kept at most.
        max_chars: characters of text kept at most (the encodings take ~50 bytes a character).
    """

    def __init__(self, *, max_texts: int = 256, max_chars: int = 1 << 20):
        self.max_texts, self.max_chars = max_texts, max_chars
        self._kept: collections.OrderedDict[str, Encoding] = collections.OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, text: str) -> Encoding | None:
        with self._lock:
            found = self._kept.get(text)
            if found is None:
                self.misses += 1
                return None
            self._kept.move_to_end(text)
            self.hits += 1
            return found

    def put(self, text: str, encoding: Encoding) -> None:
        if len(text) > self.max_chars:
            return
        with self._lock:
            if text in self._kept:
                return
            self._kept[text] = encoding
            self._chars += len(text)
            while len(self._kept) > self.max_texts or self._chars > self.max_chars:
                dropped, _ = self._kept.popitem(last=False)
                self._chars -= len(dropped)

    def __len__(self) -> int:
        return len(self._kept)


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
        return _encoding(self._tok.encode(text, add_special_tokens=False), text)

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        return [_encoding(e, t) for e, t in zip(self._tok.encode_batch(texts, add_special_tokens=False), texts)]

    def special_tokens(self, pair: bool = False) -> int:
        """How many special tokens ``pair`` adds to one text (or two)."""
        return 3 if pair else 2

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


# --- any checkpoint's tokenizer ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Template:
    """Where a family puts its special tokens: ``single`` / ``pair`` are lists of items, each
    ("A" | "B", type_id) for a text or (token id, type_id) for a special token."""

    single: tuple[tuple[str | int, int], ...]
    pair: tuple[tuple[str | int, int], ...]

    @classmethod
    def bert(cls, cls_id: int, sep_id: int) -> "Template":
        return cls(((cls_id, 0), ("A", 0), (sep_id, 0)), ((cls_id, 0), ("A", 0), (sep_id, 0), ("B", 1), (sep_id, 1)))

    @classmethod
    def roberta(cls, cls_id: int, sep_id: int) -> "Template":
        return cls(((cls_id, 0), ("A", 0), (sep_id, 0)),
                   ((cls_id, 0), ("A", 0), (sep_id, 0), (sep_id, 0), ("B", 0), (sep_id, 0)))

    @classmethod
    def from_json(cls, raw: dict | None) -> "Template":
        """From a ``tokenizer.json`` post_processor (Bert-, Roberta-, TemplateProcessing or a Sequence)."""
        if not raw:
            return cls((("A", 0),), (("A", 0), ("B", 1)))
        kind = raw.get("type")
        if kind == "Sequence":
            found = [p for p in raw.get("processors", []) if p.get("type") != "ByteLevel"]
            return cls.from_json(found[0] if found else None)
        if kind == "BertProcessing":
            return cls.bert(raw["cls"][1], raw["sep"][1])
        if kind == "RobertaProcessing":
            return cls.roberta(raw["cls"][1], raw["sep"][1])
        if kind == "TemplateProcessing":
            specials = raw.get("special_tokens", {})

            def items(template):
                out = []
                for item in template:
                    if "Sequence" in item:
                        out.append((item["Sequence"]["id"], item["Sequence"]["type_id"]))
                    else:
                        token = item["SpecialToken"]
                        out += [(i, token["type_id"]) for i in specials[token["id"]]["ids"]]
                return tuple(out)

            return cls(items(raw["single"]), items(raw["pair"]))
        if kind == "ByteLevel":
            return cls.from_json(None)
        raise ValueError(f"tokenizer post_processor {kind!r} is not supported")

    def apply(self, first: list[int], second: list[int] | None) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        types: list[int] = []
        for item, type_id in (self.single if second is None else self.pair):
            part = first if item == "A" else second if item == "B" else [item]
            ids += part
            types += [type_id] * len(part)
        return ids, types

    def special_tokens(self, pair: bool) -> int:
        return sum(1 for item, _ in (self.pair if pair else self.single) if item not in ("A", "B"))


class CheckpointTokenizer:
    """A ``tokenizers.Tokenizer`` with its family's special-token template: the same interface as
    ``BertTokenizer`` (``encode``, ``encode_batch``, ``pair``, ``cls_id``, ``sep_id``, ``pad_id``).

    Args:
        tokenizer: the tokenizer; its own truncation and padding settings are switched off (inputs
            are windowed and packed by bertrt).
        template: where the special tokens go.
        pad_token: the padding token's text, if the vocabulary has one.
    """

    def __init__(self, tokenizer: Tokenizer, template: Template, *, pad_token: str | None = None):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.template = template
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        pair_ids, _ = template.apply([], [])
        specials = [i for i in pair_ids]
        self.cls_id = specials[0] if specials else None
        self.sep_id = specials[-1] if specials else None
        pad = tokenizer.token_to_id(pad_token) if pad_token else None
        self.pad_id = pad if pad is not None else 0

    @classmethod
    def from_file(cls, path: str | Path, *, pad_token: str | None = None) -> "CheckpointTokenizer":
        path = Path(path)
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(Tokenizer.from_file(str(path)), Template.from_json(raw.get("post_processor")),
                   pad_token=pad_token or _first_known(raw, ("[PAD]", "<pad>")))

    def encode(self, text: str) -> Encoding:
        """Tokens of ``text`` (no special tokens) with character offsets into ``text``."""
        return _encoding(self._tok.encode(text, add_special_tokens=False), text)

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        return [_encoding(e, t) for e, t in zip(self._tok.encode_batch(texts, add_special_tokens=False), texts)]

    def pair(self, first: list[int], second: list[int] | None = None) -> tuple[list[int], list[int]]:
        """The family's special tokens around one text's ids (or two) and their token types."""
        return self.template.apply(first, second)

    def special_tokens(self, pair: bool = False) -> int:
        """How many special tokens ``pair`` adds to one text (or two)."""
        return self.template.special_tokens(pair)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _first_known(raw: dict, tokens: tuple[str, ...]) -> str | None:
    added = {t.get("content") for t in raw.get("added_tokens", [])}
    return next((t for t in tokens if t in added), None)


def _tokenizer_config(folder: Path) -> dict:
    file = folder / "tokenizer_config.json"
    if not file.is_file():
        return {}
    raw = json.loads(file.read_text(encoding="utf-8"))
    return raw if isinstance(raw, dict) else {}


def byte_level_bpe(vocab_json: Path, merges_txt: Path, *, add_prefix_space: bool = False) -> CheckpointTokenizer:
    """RoBERTa's tokenizer from ``vocab.json`` + ``merges.txt``: byte-level BPE, ``<s> A </s></s> B </s>``."""
    tok = Tokenizer(BPE.from_file(str(vocab_json), str(merges_txt)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    cls_id, sep_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if cls_id is None or sep_id is None:
        raise ValueError(f"{vocab_json}: not a RoBERTa vocabulary (no <s> or </s>)")
    # trim_offsets: a token's offsets leave out the space byte-level BPE folds into it.
    tok.post_processor = processors.RobertaProcessing(("</s>", sep_id), ("<s>", cls_id), trim_offsets=True,
                                                      add_prefix_space=add_prefix_space)
    return CheckpointTokenizer(tok, Template.roberta(cls_id, sep_id), pad_token="<pad>")


def load_tokenizer(folder: str | Path | None = None, *, vocab_file: str | Path | None = None,
                   lowercase: bool | None = None):
    """The tokenizer a checkpoint was trained with, from the files in its folder.

    Args:
        folder: the checkpoint's folder (``Checkpoint.tokenizer_dir``).
        vocab_file: a WordPiece ``vocab.txt`` to use when the folder has no tokenizer files.
        lowercase: casing for a bare ``vocab.txt`` when ``tokenizer_config.json`` does not say
            (default: lower-case, as BERT's tokenizer does).
    Returns:
        a ``CheckpointTokenizer`` or a ``BertTokenizer``.
    Raises:
        ValueError: no tokenizer files, or only a SentencePiece model (which needs ``tokenizer.json``).
    """
    folder = Path(folder) if folder is not None else None
    settings = _tokenizer_config(folder) if folder is not None else {}
    if folder is not None and (folder / "tokenizer.json").is_file():
        return CheckpointTokenizer.from_file(folder / "tokenizer.json", pad_token=_content(settings.get("pad_token")))
    if folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return byte_level_bpe(folder / "vocab.json", folder / "merges.txt",
                              add_prefix_space=bool(settings.get("add_prefix_space", False)))
    vocab = folder / "vocab.txt" if folder is not None and (folder / "vocab.txt").is_file() else vocab_file
    if vocab is not None:
        cased = settings.get("do_lower_case")
        lower = cased if isinstance(cased, bool) else (True if lowercase is None else lowercase)
        return BertTokenizer(vocab, lowercase=lower)
    where = folder if folder is not None else "the checkpoint"
    if folder is not None and any((folder / n).is_file() for n in ("sentencepiece.bpe.model", "spiece.model")):
        raise ValueError(f"{where}: has a SentencePiece model but no tokenizer.json; save the tokenizer with "
                         "transformers (`AutoTokenizer.from_pretrained(...).save_pretrained(...)`) to write one")
    raise ValueError(f"{where}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, or vocab.txt)")


def _content(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def tokenizer_for(checkpoint):
    """``load_tokenizer`` for a loaded ``Checkpoint`` (its folder, its vocab.txt, its casing)."""
    return load_tokenizer(checkpoint.tokenizer_dir, vocab_file=checkpoint.vocab_file,
                          lowercase=checkpoint.config.do_lower_case)
