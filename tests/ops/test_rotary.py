import pytest
import torch

from bertrt.ops.rotary import rotary_, rotary_ref, rotary_tables
from bertrt.packed import cu_seqlens_from_lengths, position_ids_from_cu_seqlens
from bertrt.reference import rotate
from ops_testing import DTYPES, assert_like_torch, gen, randn

# Mixed lengths packed end to end: 37 tokens cut 64-token blocks unevenly, 1 and 5 are short.
LENGTHS = [37, 1, 5, 20]


def packed_positions(lengths):
    cu = cu_seqlens_from_lengths(lengths)
    return position_ids_from_cu_seqlens(cu, sum(lengths))


def rotated(x, positions, base, dtype):
    """reference.rotate (what the CPU reference runs) in ``dtype``."""
    return rotate(x.to(dtype), positions, base)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [18, 64, 34])
def test_kernel_matches_the_reference_rotation(interpret, head_dim, dtype):
    # Positions restart in every packed sequence; a half width of 9 or 17 breaks the power-of-two block.
    positions = packed_positions(LENGTHS)
    x = randn(len(positions), 5, head_dim, generator=gen(), dtype=dtype)
    cos, sin = rotary_tables(160000.0, head_dim, 64)
    got = rotary_(x.clone(), positions.to(torch.int32), cos, sin)
    assert_like_torch(got, rotated(x, positions, 160000.0, dtype), rotated(x, positions, 160000.0, torch.float64),
                      dtype)


def test_only_the_query_and_key_heads_of_a_fused_qkv_turn(interpret):
    heads, head_dim = 3, 16
    positions = packed_positions(LENGTHS)
    qkv = torch.randn(len(positions), 3, heads, head_dim, generator=gen(1))
    want = qkv.clone()
    want[:, 0], want[:, 1] = rotate(qkv[:, 0], positions, 10000.0), rotate(qkv[:, 1], positions, 10000.0)
    cos, sin = rotary_tables(10000.0, head_dim, 40)
    view = qkv.view(len(positions), 3 * heads, head_dim)[:, :2 * heads]
    assert rotary_(view, positions, cos, sin) is view
    torch.testing.assert_close(qkv, want, rtol=1e-5, atol=1e-5)  # v untouched, q and k rotated in place


def test_late_positions_of_a_long_sequence(interpret):
    # Angles of thousands of radians: the table holds their fp32 cosines, so the kernel is exact there too.
    positions = torch.tensor([0, 1, 4095, 8191, 8190, 7], dtype=torch.int64)
    x = torch.randn(6, 2, 64, generator=gen(2))
    cos, sin = rotary_tables(160000.0, 64, 8192)
    torch.testing.assert_close(rotary_(x.clone(), positions, cos, sin), rotate(x, positions, 160000.0),
                               rtol=1e-5, atol=1e-5)


def test_falls_back_to_ref_on_plain_cpu(no_interpret):
    positions = packed_positions([3, 4])
    x = torch.randn(7, 2, 8, generator=gen(3))
    cos, sin = rotary_tables(10000.0, 8, 4)
    torch.testing.assert_close(rotary_(x.clone(), positions, cos, sin), rotary_ref(x.clone(), positions, cos, sin))
    torch.testing.assert_close(rotary_(x.clone(), positions, cos, sin), rotate(x, positions, 10000.0))


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even head_dim"):
        rotary_(torch.zeros(2, 1, 7), torch.zeros(2, dtype=torch.long), *rotary_tables(10000.0, 6, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_on_gpu(gpu, dtype):
    positions = packed_positions([384, 97, 1000, 3]).cuda()
    x = randn(len(positions), 12, 64, generator=gen(4), dtype=dtype, device="cuda")
    cos, sin = rotary_tables(160000.0, 64, 1024, device="cuda")
    out = rotary_(x.clone(), positions.to(torch.int32), cos, sin)
    assert_like_torch(out, rotated(x, positions, 160000.0, dtype), rotated(x, positions, 160000.0, torch.float64),
                      dtype)
