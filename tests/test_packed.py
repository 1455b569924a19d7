import numpy as np
import pytest
import torch

from bertrt.packed import pack_padded, pack_sequences, pad_sequences


def test_pad_sequences_round_trips_through_pack_padded():
    ids, types = [[5, 6, 7], [8], [9, 10]], [[0, 0, 1], [0], [1, 1]]
    padded_ids, mask, padded_types = pad_sequences(ids, types)
    assert padded_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert padded_types.tolist() == [[0, 0, 1], [0, 0, 0], [1, 1, 0]]
    again, direct = pack_padded(padded_ids, mask, padded_types), pack_sequences(ids, types)
    for name in ("input_ids", "token_type_ids", "position_ids", "cu_seqlens"):
        assert torch.equal(getattr(again, name), getattr(direct, name))


def test_pad_sequences_fixed_shape_and_numpy_rows():
    ids, mask, types = pad_sequences([np.array([1, 2])], [np.array([0, 1])], width=4, rows=3)
    assert ids.shape == mask.shape == types.shape == (3, 4) and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="do not fit"):
        pad_sequences([[1, 2, 3]], [[0, 0, 0]], width=2)
    with pytest.raises(ValueError, match="do not fit"):
        pad_sequences([[1], [2]], [[0], [0]], rows=1)
