"""Build-time kernel timing: which backend runs the FFN up-projection, attention and the two
projections back to hidden width at a few token counts, recorded in ``engine.json``
(``format.OP_BACKENDS``). Each candidate must first agree with the default path; a candidate wins
only by ``MARGIN``.
"""

from __future__ import annotations

import itertools
import statistics
import warnings
from collections.abc import Callable

import torch

from bertrt.engine.format import SPLITK_BACKENDS, GemmChoices
from bertrt.engine.sublayers import end_sublayer

# Token counts at which the GEMM backends are timed; each is the upper bound of the range it decides
# (128: one short sequence, where split-K of the FFN down-projection won on an H100).
TUNE_TOKENS = (128, 384, 1024, 1536, 3072, 12288, 49152)
# The fused up-projection (linear_bias_gelu) is timed against cuBLAS + bias_gelu at every count;
# its kernels never specialise on token counts, so no compile lands inside a timed run.
# The projections back to hidden width are also timed accumulating into the residual in place
# (cuBLAS with beta = 1, "cublas-accumulate"), at every count: the LayerNorm after them then reads
# one (T, H) tensor instead of two, which at 49k tokens is ~100 MB less traffic per sub-layer.
# Split-K for the projections back to hidden width (N=1024 for BERT-Large) is offered up to this
# many tokens only. On an H100 (benchmarks/results/h100/splitk.json) it won only where cuBLAS has
# very few tiles: the FFN down-projection at 128 tokens (8.7 us against 10.2, with the LayerNorm);
# from 384 tokens on cuBLAS was 10% or more faster, so timing it there only lengthened builds.
SPLITK_MAX_TOKENS = 384
# op -> name prefix of layer 0's projection and LayerNorm tensors, which the timing uses.
PROJECTIONS = {"attn_out": "layers.0.attn.", "ffn_out": "layers.0.ffn."}
TUNED_TENSORS = ("layers.0.ffn.in.weight", "layers.0.ffn.in.bias",
                 *(p + n for p in PROJECTIONS.values() for n in ("out.weight", "out.bias", "ln.weight", "ln.bias")))


def tuned_tensors(config) -> tuple[str, ...]:
    """The tensors ``tune_gemm_choices`` reads for ``config``: a pre-LN family's pass (Megatron-BERT,
    ModernBERT) runs its projections through cuBLAS alone, so only attention is timed, and the
    up-projection's weight gives the device, dtype and width."""
    return ("layers.0.ffn.in.weight",) if config.pre_layer_norm else TUNED_TENSORS


# A backend replaces the default only when at least this much faster.
MARGIN = 0.03


def graph_time_ms(fn: Callable[[], object], *, reps: int = 10, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean GPU time of ``reps`` back-to-back calls, in ms.

    The calls are replayed from a CUDA graph where they can be captured, as the engine runs them:
    timed eagerly, small problems would measure Python launch overhead (tens of microseconds) rather
    than the kernels, and pick by noise.
    """
    fn(), fn()  # compile / pick algorithms
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        run = graph.replay
    except RuntimeError:  # not capturable: time it eagerly
        def run():
            for _ in range(reps):
                fn()
    run()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def tune_gemm_choices(tensors: dict[str, torch.Tensor], *, max_tokens: int,
                      token_counts: tuple[int, ...] = TUNE_TOKENS, num_heads: int | None = None,
                      max_seq_length: int = 384, attention_only: bool = False) -> GemmChoices:
    """Time the ways of running the FFN up-projection (cuBLAS + bias_gelu against the fused
    linear_bias_gelu and cuBLASLt's GELU epilogue, linear_bias_gelu_tanh), of the attention output
    and FFN down projections with their bias + residual + LayerNorm (cuBLAS against linear_splitk,
    up to SPLITK_MAX_TOKENS) and, given ``num_heads``, of attention (the Triton kernel with
    attention_config_for's tiling against PyTorch's varlen flash and the Triton kernel with each
    other tiling of ``attention_triton.TILINGS``), each at a few token counts; a candidate must
    first agree with the default path.

    Args:
        tensors: the engine's tensors, on the GPU it is built for (layer 0's ``TUNED_TENSORS`` are used).
        max_tokens: the engine's limit; counts above it are not timed, and it is always timed itself.
        num_heads: attention heads (None: attention is not timed and keeps its default).
        max_seq_length: sequences of this length make up the attention timing batches.
        attention_only: time attention alone (a pre-LN family's pass, ``tuned_tensors``).

    Returns:
        {"ffn_in_gelu": {token count: "cublas" | "triton" | "cublaslt-gelu"},
        "attn_out": {...: "cublas" | a name in SPLITK_BACKENDS}, "ffn_out": {...},
        "attention": {...: "torch" | a name in attention_triton.TILINGS | "triton" (a default
        tiling with no name)}}, or {} when the tensors are not on CUDA.
    """
    from bertrt.ops.bias_gelu import bias_gelu
    from bertrt.ops.linear_gelu import linear_bias_gelu
    from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh

    weight, bias = tensors["layers.0.ffn.in.weight"], tensors.get("layers.0.ffn.in.bias")
    if weight.device.type != "cuda":
        return {}
    counts = sorted({c for c in token_counts if c < max_tokens} | {max_tokens})
    choices: GemmChoices = {} if attention_only else {"ffn_in_gelu": {}, "attn_out": {}, "ffn_out": {}}
    if num_heads:
        choices["attention"] = {}
    hidden = weight.shape[1]
    with torch.inference_mode(), torch.cuda.device(weight.device):  # events time that device's stream
        for count in counts:
            x = torch.randn(count, hidden, device=weight.device).to(weight.dtype)
            if attention_only:
                if num_heads:
                    choices["attention"][count] = _attention_choice(x, count, num_heads, max_seq_length)
                del x
                continue

            def unfused(x=x):
                up = torch.nn.functional.linear(x, weight)
                return bias_gelu(up, bias, out=up)

            candidates = {"triton": lambda x=x: linear_bias_gelu(x, weight, bias),
                          "cublaslt-gelu": lambda x=x: linear_bias_gelu_tanh(x, weight, bias)}
            choices["ffn_in_gelu"][count] = _fastest("cublas", unfused, candidates,
                                                     f"linear_bias_gelu at {count} tokens")
            for op, prefix in PROJECTIONS.items():
                choices[op][count] = _projection_choice(tensors, prefix, count)
            if num_heads:
                choices["attention"][count] = _attention_choice(x, count, num_heads, max_seq_length)
            del x
    return choices


def _attention_choice(x: torch.Tensor, count: int, num_heads: int, max_seq_length: int) -> str:
    """The fastest attention at ``count`` tokens of ``ragged_lengths`` (``x``: (count, hidden), for its
    device and dtype), recorded as the tiling it ran (``pinned_attention``)."""
    from bertrt.ops.attention import varlen_attention
    from bertrt.ops.attention_triton import TILINGS as ATTENTION_TILINGS
    from bertrt.ops.attention_triton import default_config, varlen_attention_triton

    hidden = x.shape[1]
    qkv = x.new_empty(count, 3, num_heads, hidden // num_heads).normal_()
    q, k, v = qkv.unbind(1)
    lengths = ragged_lengths(count, max_seq_length)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=x.device)
    seq = max(lengths)
    default = default_config(count, num_heads, hidden // num_heads)
    tilings = {name: lambda cfg=cfg: varlen_attention_triton(q, k, v, cu, seq, config=cfg)
               for name, cfg in ATTENTION_TILINGS.items() if cfg != default}
    return pinned_attention(_fastest(
        "triton", lambda: varlen_attention_triton(q, k, v, cu, seq),
        {"torch": lambda: varlen_attention(q, k, v, cu, seq), **tilings},
        f"varlen_attention at {count} tokens"), default)


def pinned_attention(choice: str, default) -> str:
    """The name to record for attention timed as ``choice``: the default Triton kernel ("triton")
    becomes the named tiling it ran with (``default``, an AttentionConfig), so that every token
    count the bound covers runs what was timed. Recorded as "triton", the tiling would follow
    attention_config_for at run time, which changes within a bound: at 16,384 tokens (BERT-Large
    b128 s128) it picks 128 x 64, which took 104.7 us on an H200 against 68.9 for the 64 x 64 that
    the 49,152-token timing had run (benchmarks/results/h200/floors.json)."""
    from bertrt.ops.attention_triton import TILINGS as ATTENTION_TILINGS

    if choice != "triton":
        return choice
    return next((name for name, config in ATTENTION_TILINGS.items() if config == default), choice)


def _projection_choice(tensors: dict[str, torch.Tensor], prefix: str, count: int) -> str:
    """How one projection back to hidden width and its LayerNorm run at ``count`` tokens, timed as
    the engine runs them (``runtime.end_sublayer``): cuBLAS, cuBLAS accumulating into the residual
    ("cublas-accumulate"), or split-K (up to SPLITK_MAX_TOKENS)."""
    weight, bias = tensors[prefix + "out.weight"], tensors[prefix + "out.bias"]
    gamma, beta = tensors[prefix + "ln.weight"], tensors[prefix + "ln.bias"]
    x = torch.randn(count, weight.shape[1], device=weight.device).to(weight.dtype)
    residual = torch.randn(count, weight.shape[0], device=weight.device).to(weight.dtype)
    scratch = residual.clone()  # what "cublas-accumulate" overwrites: its result, so values stay normalised

    def run(backend: str, target: torch.Tensor = residual) -> torch.Tensor:
        return end_sublayer(x, weight, bias, target, gamma, beta, 1e-12, backend)

    def accumulate_from_residual():
        scratch.copy_(residual)
        return run("cublas-accumulate", scratch)

    candidates = {"cublas-accumulate": accumulate_from_residual}
    if count <= SPLITK_MAX_TOKENS:
        candidates.update({name: lambda name=name: run(name) for name in SPLITK_BACKENDS})
    # Timed without the copy that the check needs.
    timed = {"cublas-accumulate": lambda: run("cublas-accumulate", scratch)}
    return _fastest("cublas", lambda: run("cublas"), candidates, f"{prefix}out projection at {count} tokens",
                    timed=timed)


def ragged_lengths(count: int, max_seq_length: int) -> list[int]:
    """Sequence lengths summing to ``count`` for timing attention: a spread from max_seq_length / 8
    to max_seq_length, as packed batches of real requests have (SQuAD dev at 384: mean 178).

    Timing on sequences of max_seq_length only would favour kernels whose grid is sized for the
    longest sequence: on an H100 such timing picked PyTorch's varlen kernel at 12k-49k tokens, and
    LoadGen Server runs on that build fell behind at 3,200-3,500 samples/s where a build with the
    Triton kernel (grid sized by the tokens) kept p99 at 62 ms.

    Up to max_seq_length tokens the batch is one sequence: that is what such small batches mostly
    are (one request at a time), and a ragged spread there picked a tiling (64 x 64 at 384 tokens)
    that made a single 384-token request 0.09 ms slower on an H100.
    """
    if count <= max_seq_length:
        return [count]
    steps = 8
    cycle = [max(1, max_seq_length * (i + 1) // steps) for i in range(steps)]
    lengths, total, i = [], 0, 0
    while total < count:
        n = min(cycle[(i * 5) % steps], count - total)  # stride 5 (coprime to 8): lengths interleave
        lengths.append(n)
        total, i = total + n, i + 1
    return lengths


def _fastest(default_name: str, default: Callable[[], torch.Tensor],
             candidates: dict[str, Callable[[], torch.Tensor]], what: str, *,
             timed: dict[str, Callable[[], object]] | None = None) -> str:
    """The name of the fastest of ``default`` and the candidates that agree with it (relative max
    error <= 1e-2); a candidate must beat the default by ``MARGIN`` (timing noise must not flip a
    choice), and one that fails to compile, run or agree is skipped with a warning. ``timed``: name
    -> what to time instead of the candidate itself (when checking needs set-up timing must not see)."""
    if not candidates:
        return default_name
    timings = {default_name: graph_time_ms(default)}
    expected = default().float()
    scale = expected.abs().max().clamp_min(1e-6)
    for name, candidate in candidates.items():
        try:
            # A kernel that is fast but wrong must never be chosen: check it first.
            error = float((candidate().float() - expected).abs().max() / scale)
            if not error <= 1e-2:
                raise ValueError(f"relative error {error:.2e} against {default_name}")
            timings[name] = graph_time_ms((timed or {}).get(name, candidate))
        except Exception as exc:  # noqa: BLE001  (any compile/launch failure keeps the others)
            warnings.warn(f"{what} ({name}) failed ({exc}); not chosen", RuntimeWarning, stacklevel=3)
    timings[default_name] *= 1 - MARGIN
    return min(timings, key=timings.get)


