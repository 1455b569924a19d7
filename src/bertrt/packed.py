"""Packed tokens: the one internal layout.

A batch of B sequences of different lengths is stored as ``(total_tokens, ...)`` tensors with
``cu_seqlens`` (B+1,) int32 marking where each sequence starts, and ``max_seqlen``. Padding exists
only at the API edge, through ``pack_padded`` / ``pad_packed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass
class PackedBatch:
    """Token inputs of B sequences laid end to end.

    Args:
        input_ids: (total_tokens,) int64 (or int32) WordPiece ids.
        token_type_ids: (total_tokens,) int64 (or int32) segment ids (0 question/first, 1 passage/second).
        position_ids: (total_tokens,) int64 (or int32) position of each token inside its sequence.
        cu_seqlens: (B+1,) int32 cumulative sequence lengths, starting at 0.
        max_seqlen: length of the longest sequence.
    """

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def total_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def seqlens(self) -> torch.Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    def to(self, device: torch.device | str) -> "PackedBatch":
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                     if isinstance(getattr(self, f.name), torch.Tensor)})

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Cut a (total_tokens, ...) tensor back into one tensor per sequence."""
        return list(values.split(self.seqlens.tolist()))


def mean_per_sequence(values: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(B, ...) mean of each sequence's rows of a packed (total_tokens, ...) tensor, in its dtype."""
    seqlens = batch.seqlens.to(values.device)
    seq = torch.repeat_interleave(torch.arange(batch.num_sequences, device=values.device), seqlens,
                                  output_size=values.shape[0])
    sums = values.new_zeros(batch.num_sequences, *values.shape[1:]).index_add_(0, seq, values)
    return sums / seqlens.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))


def cu_seqlens_from_lengths(lengths: Sequence[int] | torch.Tensor, device=None) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.int32, device=device)
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long(),
                                     output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def pack_sequences(input_ids: Sequence[Sequence[int]],
                   token_type_ids: Sequence[Sequence[int]] | None = None) -> PackedBatch:
    """Pack a list of token-id lists (no padding) into a PackedBatch."""
    if not input_ids or any(len(s) == 0 for s in input_ids):
        raise ValueError("pack_sequences needs at least one sequence, and no empty sequence")
    lengths = [len(s) for s in input_ids]
    flat = torch.tensor([t for s in input_ids for t in s], dtype=torch.long)
    if token_type_ids is None:
        types = torch.zeros_like(flat)
    else:
        if [len(s) for s in token_type_ids] != lengths:
            raise ValueError("token_type_ids must have the same lengths as input_ids")
        types = torch.tensor([t for s in token_type_ids for t in s], dtype=torch.long)
    cu = cu_seqlens_from_lengths(lengths)
    return PackedBatch(flat, types, position_ids_from_cu_seqlens(cu, flat.numel()), cu, max(lengths))


def pad_sequences(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]], *,
                  width: int | None = None, rows: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, width) int64 ids, attention mask and token types of ragged sequences, real tokens
    first in each row: the padded layout Hugging Face models take (for peers and ONNX exports).

    Args:
        input_ids, token_type_ids: one list or 1-D array per sequence, of equal lengths pairwise.
        width: row length (default the longest sequence; a longer sequence is an error).
        rows: number of rows (default one per sequence); rows past the sequences are all zeros.
    """
    lengths = [len(s) for s in input_ids]
    width = max(lengths, default=0) if width is None else width
    rows = len(lengths) if rows is None else rows
    if max(lengths, default=0) > width or len(lengths) > rows:
        raise ValueError(f"{len(lengths)} sequences of up to {max(lengths, default=0)} tokens do not fit "
                         f"{rows} rows of {width}")
    ids, types, mask = (torch.zeros(rows, width, dtype=torch.long) for _ in range(3))
    for row, (i, t, n) in enumerate(zip(input_ids, token_type_ids, lengths)):
        ids[row, :n], types[row, :n], mask[row, :n] = torch.as_tensor(i), torch.as_tensor(t), 1
    return ids, mask, types


def unpad_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """From a (B, S) attention mask (1 = real token, left-aligned), the flat indices of real tokens,
    cu_seqlens and max_seqlen."""
    lengths = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    return indices, cu_seqlens_from_lengths(lengths, device=mask.device), int(lengths.max())


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> PackedBatch:
    """Pack a padded (B, S) batch with its mask; the mask's real tokens must come first in each row."""
    mask = attention_mask.bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("attention_mask must be left-aligned (real tokens first, then padding)")
    if (mask.sum(dim=1) == 0).any():
        raise ValueError("every sequence needs at least one real token")
    indices, cu, max_len = unpad_indices(mask)
    ids = input_ids.flatten()[indices].long()
    types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids.flatten()[indices].long()
    return PackedBatch(ids, types, position_ids_from_cu_seqlens(cu, ids.numel()), cu, max_len)


def pad_packed(values: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
               fill: float = 0.0) -> torch.Tensor:
    """(total, ...) -> (B, max_seqlen, ...), padding with ``fill``."""
    batch = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    mask = torch.arange(max_seqlen, device=values.device)[None, :] < lengths[:, None]
    out = values.new_full((batch, max_seqlen, *values.shape[1:]), fill)
    out[mask] = values
    return out
