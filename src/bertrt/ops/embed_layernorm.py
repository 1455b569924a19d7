"""BERT embeddings in one kernel: gather word + position + token-type rows, sum, LayerNorm.

``embed_layernorm`` runs the Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``) and
``embed_layernorm_ref`` elsewhere; the ref is the plain-PyTorch oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops._triton import (cdiv, check_out, jit, layernorm_rows_impl, next_pow2, num_warps_for, quant_code,
                                quantize_impl, rows_contiguous, use_triton)
from bertrt.quant.numerics import format_of, quantize_ref

_layernorm_rows = None  # _triton.layernorm_rows_impl, bound by jit() with the kernel
_quantize = None  # _triton.quantize_impl, likewise
_HELPERS = {"_layernorm_rows": layernorm_rows_impl, "_quantize": quantize_impl}
tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


def embed_layernorm_ref(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                        word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
                        gamma: torch.Tensor, beta: torch.Tensor, eps: float, *,
                        quant_out: torch.Tensor | None = None,
                        quant_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``embed_layernorm``."""
    x = word[input_ids].float() + position[position_ids].float() + token_type[token_type_ids].float()
    y = F.layer_norm(x, x.shape[-1:], gamma.float(), beta.float(), eps)
    if quant_out is not None:
        quant_out.copy_(quantize_ref(y, quant_inv_scale, format_of(quant_out.dtype)))
    return y.to(word.dtype)


def _embed_layernorm_kernel(
    out_ptr, ids_ptr, type_ids_ptr, pos_ids_ptr, word_ptr, pos_ptr, type_ptr, gamma_ptr, beta_ptr,
    q_ptr, q_inv_scale_ptr, n_tokens, hidden, out_stride, word_stride, pos_stride, type_stride, q_stride, eps,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, QUANT: tl.constexpr,
):
    # One program normalises BLOCK_T tokens; a row of BLOCK_H >= hidden columns stays in registers.
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h_offs = tl.arange(0, BLOCK_H)
    t_mask = t_offs < n_tokens
    h_mask = h_offs < hidden
    mask = t_mask[:, None] & h_mask[None, :]

    # int64 row offsets: vocab * hidden and tokens * hidden may pass 2^31 in large batches.
    word_rows = tl.load(ids_ptr + t_offs, mask=t_mask, other=0).to(tl.int64)
    pos_rows = tl.load(pos_ids_ptr + t_offs, mask=t_mask, other=0).to(tl.int64)
    type_rows = tl.load(type_ids_ptr + t_offs, mask=t_mask, other=0).to(tl.int64)
    x = tl.load(word_ptr + word_rows[:, None] * word_stride + h_offs[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(pos_ptr + pos_rows[:, None] * pos_stride + h_offs[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(type_ptr + type_rows[:, None] * type_stride + h_offs[None, :], mask=mask, other=0.0).to(tl.float32)

    y = _layernorm_rows(x, mask, h_offs, h_mask, hidden, gamma_ptr, beta_ptr, eps)
    out_rows = t_offs.to(tl.int64)[:, None] * out_stride
    tl.store(out_ptr + out_rows + h_offs[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    if QUANT:  # the first GEMM's low-precision input, rounded from the fp32 values
        q = _quantize(y, tl.load(q_inv_scale_ptr), QUANT)
        tl.store(q_ptr + t_offs.to(tl.int64)[:, None] * q_stride + h_offs[None, :], q, mask=mask)


def embed_layernorm(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                    word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
                    gamma: torch.Tensor, beta: torch.Tensor, eps: float, *,
                    out: torch.Tensor | None = None, quant_out: torch.Tensor | None = None,
                    quant_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]) per token.

    Args:
        input_ids: (T,) int64 or int32 WordPiece ids.
        token_type_ids: (T,) int64 or int32 segment ids.
        position_ids: (T,) int64 or int32 positions inside each sequence.
        word: (vocab, H) fp32/fp16/bf16 word embeddings.
        position: (max_positions, H) position embeddings, dtype of ``word``.
        token_type: (type_vocab, H) token-type embeddings, dtype of ``word``.
        gamma, beta: (H,) LayerNorm scale and shift, any float dtype.
        eps: LayerNorm epsilon.
        out: optional (T, H) tensor of ``word``'s dtype to write into.
        quant_out: optional (T, H) float8_e4m3fn or int8 tensor that also receives the result,
            quantised from its fp32 value; quant_inv_scale: () fp32, its inverse scale.

    Returns:
        (T, H) in ``word``'s dtype; the sum and the normalisation are computed in fp32.
    """
    if not use_triton(input_ids, token_type_ids, position_ids, word, position, token_type, gamma, beta):
        result = embed_layernorm_ref(input_ids, token_type_ids, position_ids, word, position, token_type,
                                     gamma, beta, eps, quant_out=quant_out, quant_inv_scale=quant_inv_scale)
        return result if out is None else out.copy_(result)
    n_tokens, hidden = input_ids.numel(), word.shape[1]
    word, position, token_type = (rows_contiguous(t) for t in (word, position, token_type))
    input_ids, token_type_ids, position_ids = (t.reshape(-1).contiguous()
                                               for t in (input_ids, token_type_ids, position_ids))
    gamma, beta = gamma.contiguous(), beta.contiguous()
    out = check_out(out, (n_tokens, hidden), word.dtype, word.device)
    if n_tokens == 0:
        return out
    block_h = next_pow2(hidden)
    block_t = max(1, min(4, 2048 // block_h))  # small hidden sizes: several tokens per program
    grid = (cdiv(n_tokens, block_t),)
    quant = quant_code(quant_out)
    if quant:
        quant_out = check_out(quant_out, (n_tokens, hidden), quant_out.dtype, word.device)
    jit(_embed_layernorm_kernel, helpers=_HELPERS, per_request=("n_tokens",))[grid](
        out, input_ids, token_type_ids, position_ids, word, position, token_type, gamma, beta,
        quant_out if quant else out, quant_inv_scale if quant else gamma,
        n_tokens, hidden, out.stride(0), word.stride(0), position.stride(0), token_type.stride(0),
        quant_out.stride(0) if quant else 0, eps,
        BLOCK_T=block_t, BLOCK_H=block_h, QUANT=quant, num_warps=num_warps_for(block_t * block_h))
    return out
