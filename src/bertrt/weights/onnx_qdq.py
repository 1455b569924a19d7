"""Quantization-aware ONNX models: QuantizeLinear/DequantizeLinear pairs read as canonical scales.

NVIDIA's pytorch-quantization (the input of TensorRT demoBERT's ``-x``) exports fake quantization as
a QuantizeLinear -> DequantizeLinear pair on each linear layer's input (per tensor) and weight (per
tensor or per output channel), int8 with zero point 0; float8 e4m3fn zero points mean fp8. A weight
may also be stored already quantized (an int8 initializer read by a DequantizeLinear alone).

Loading takes two steps around the float loader (``onnx_loader``):

1. ``strip``, before it: weight pairs are folded into their initializer, whose values become
   DQ(Q(W)), what the model computes with; activation pairs are bypassed. Both are remembered with
   the nodes they fed, and what is left is a float graph the loader reads as it reads any other.
2. ``place``, after it: each pair is named by what it fed (a Linear of the encoder, found by the
   structure the loader reads; an operand of an attention matmul; a residual add) and its scale
   becomes a clip value, ``amax = scale * qmax`` (``schema.QuantScales``). Any other quantized
   pattern is refused with a CheckpointError that names the node.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import deque

import numpy as np
import torch

from bertrt.weights.onnx_graph import Graph, StructureError, attention_use, encoder_linears, linear_layers
from bertrt.quant.recipe import QMAX
from bertrt.weights.schema import CheckpointError, QuantScales

MAPPED = ("bertrt maps QuantizeLinear/DequantizeLinear pairs (int8 with zero point 0, or float8e4m3fn) on the "
          "inputs (per tensor) and weights (per tensor or per output channel) of the encoder's linear layers "
          "(Q/K/V, attention output, FFN in and out), on the operands of the two attention matmuls and on "
          "the residual adds' inputs")
# Operators of integer or quantized arithmetic: a model built from them is not a fake-quantized float graph.
_QUANTIZED_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat", "QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul",
                  "QOrderedAttention", "QOrderedLayerNormalization", "QOrderedGelu", "MatMulNBits"}
_LINEAR_KINDS = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                 "attention.output.dense": "attn.out", "intermediate.dense": "ffn.in", "output.dense": "ffn.out"}
_LINEAR_INPUTS = ("attn.qkv", "attn.out", "ffn.in", "ffn.out")
# Ops a quantized activation may pass through on its way to what it feeds (op -> input index of the data):
# data movement, anywhere; scaling by a constant and masking, on the way to an attention matmul only.
_MOVES = {"Reshape": (0,), "Transpose": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Identity": (0,),
          "Dropout": (0,), "Cast": (0,)}
_SCALINGS = {"Div": (0,), "Mul": (0, 1), "Where": (1, 2)}
_SHAPE_READERS = ("Shape", "Size")  # read no values


def describe(node) -> str:
    """``'name' (OpType)``, or the output it writes when the node has no name."""
    name = f"'{node.name}'" if node.name else f"writing '{node.output[0]}'" if node.output else "unnamed"
    return f"{name} ({node.op_type})"


@dataclasses.dataclass
class _Pair:
    node: str                    # the QuantizeLinear (or lone DequantizeLinear), described
    format: str                  # "int8" | "fp8"
    amax: np.ndarray             # () per tensor, (N,) per channel; fp32
    axis: int | None             # per-channel axis of the stored tensor; None per tensor
    uses: list[tuple[str, int]]  # (first output of a node it fed, input index)


@dataclasses.dataclass
class Stripped:
    """What ``strip`` took out of a graph: activation pairs, and weight pairs by initializer name."""

    source: str
    activations: list[_Pair]
    weights: dict[str, _Pair]

    @property
    def format(self) -> str:
        return next(p.format for p in [*self.activations, *self.weights.values()])


def _refuse(source: str, message: str) -> CheckpointError:
    return CheckpointError(f"{source}: {message}. {MAPPED}")


def _attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _format(node, zero_point: np.ndarray | None, source: str) -> str:
    from onnx import TensorProto

    if zero_point is None:  # no zero point: uint8 unless opset 21's output_dtype says otherwise
        kind = {TensorProto.INT8: "int8", TensorProto.FLOAT8E4M3FN: "fp8"}.get(_attr(node, "output_dtype", 0))
    else:
        kind = {"int8": "int8", "float8_e4m3fn": "fp8"}.get(zero_point.dtype.name)
    if kind is None:
        found = "no zero point (uint8)" if zero_point is None else f"a {zero_point.dtype.name} zero point"
        raise _refuse(source, f"node {describe(node)} quantizes with {found}")
    if zero_point is not None and np.any(zero_point.astype(np.float32) != 0):
        raise _refuse(source, f"node {describe(node)} has a non-zero zero point (asymmetric quantization)")
    return kind


def _broadcast(scale: torch.Tensor, axis: int | None, ndim: int) -> torch.Tensor:
    if axis is None:
        return scale.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _qdq(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """DQ(Q(x)) as ONNX defines it: x / scale rounded half to even (int8, saturated to [-128, 127]) or
    cast to e4m3fn (saturated to +-448), times scale; ``scale`` already broadcasts against x. (The
    engine's ``quant.numerics`` rounds x * (1 / scale), half away from zero for int8: for a weight
    already on the grid, both give back the same values.)"""
    y = x / scale
    if fmt == "int8":
        y = torch.round(y).clamp(-128, 127)
    else:
        y = y.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn).to(torch.float32)
    return y * scale


def strip(graph, *, source: str) -> Stripped | None:
    """Fold the weight pairs of ``graph`` (an ``onnx.GraphProto``, edited in place) into their
    initializers and bypass its activation pairs; None when it has no QuantizeLinear/DequantizeLinear.

    Raises:
        CheckpointError: integer operators, zero points that are not int8 0 or e4m3fn, scales that
            are not constants, blocked scales, or a pair whose halves disagree; naming the node.
    """
    from onnx import numpy_helper

    nodes = list(graph.node)
    for node in nodes:
        if node.op_type in _QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            raise _refuse(source, f"node {describe(node)} computes in integers; bertrt reads fake-quantized "
                                  "float graphs")
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return None

    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in nodes for out in node.output}

    def const(name: str) -> np.ndarray | None:
        """The value of an initializer, a Constant or an Identity of either; None for computed tensors."""
        node = producer.get(name)
        if node is not None and node.op_type == "Identity":
            return const(node.input[0])
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return numpy_helper.to_array(inits[name]) if name in inits and node is None else None

    consumers: dict[str, list] = {}
    for node in nodes:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
    graph_outputs = {o.name for o in graph.output}

    def params(node):
        """(scale, zero point, per-channel axis or None, format) of a Q or DQ node."""
        scale = const(node.input[1])
        if scale is None:
            raise _refuse(source, f"node {describe(node)} takes its scale from '{node.input[1]}', not a constant")
        zero_point = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and zero_point is None:
            raise _refuse(source, f"node {describe(node)} takes its zero point from a computed tensor")
        if _attr(node, "block_size", 0):
            raise _refuse(source, f"node {describe(node)} has blocked scales (block_size)")
        axis = None if scale.size == 1 else int(_attr(node, "axis", 1))
        return scale.astype(np.float32), zero_point, axis, _format(node, zero_point, source)

    removed: set[str] = set()  # first outputs of the Q/DQ nodes taken out
    rename: dict[str, str] = {}
    new_inits: list = []
    activations: list[_Pair] = []
    weights: dict[str, _Pair] = {}
    for dq in nodes:
        if dq.op_type != "DequantizeLinear":
            continue
        stored, q = dq.input[0], producer.get(dq.input[0])
        q_params = params(q) if q is not None and q.op_type == "QuantizeLinear" else None  # named first
        scale, zero_point, axis, fmt = params(dq)
        amax = (scale * np.float32(QMAX[fmt])).astype(np.float32)
        if dq.output[0] in graph_outputs:
            raise _refuse(source, f"node {describe(dq)} writes an output of the graph")
        uses = [(n.output[0], idx) for n, idx in consumers.get(dq.output[0], [])]
        torch_scale = torch.from_numpy(scale.reshape(-1) if axis is not None else scale.reshape(()))
        value = const(stored)
        if value is not None:  # a weight stored quantized, read by a DequantizeLinear alone
            if value.dtype.name not in ("int8", "float8_e4m3fn"):
                raise _refuse(source, f"node {describe(dq)} dequantizes a {value.dtype.name} constant")
            axis = None if axis is None else axis % value.ndim
            weight = torch.from_numpy(value.astype(np.float32)) * _broadcast(torch_scale, axis, value.ndim)
            pair, holder = _Pair(describe(dq), fmt, amax, axis, uses), dq.output[0]
        elif q_params is not None:
            q_scale, _, q_axis, q_fmt = q_params
            if (q_fmt, q_axis) != (fmt, axis) or not np.array_equal(q_scale, scale):
                raise _refuse(source, f"nodes {describe(q)} and {describe(dq)} quantize and dequantize with "
                                      "different scales, axes or types")
            if any(n.op_type != "DequantizeLinear" for n, _ in consumers.get(q.output[0], [])):
                raise _refuse(source, f"node {describe(q)} feeds a node other than a DequantizeLinear")
            removed.add(q.output[0])
            pair, src = _Pair(describe(q), fmt, amax, axis, uses), q.input[0]
            value = const(src)
            if value is None or not np.issubdtype(value.dtype, np.floating):
                activations.append(pair)
                rename[dq.output[0]] = rename.get(src, src)
                removed.add(dq.output[0])
                continue
            # A float weight and its fake quantization: keep DQ(Q(W)) under the weight's own name
            # when nothing else reads the weight, so loading by name still finds it.
            axis = None if axis is None else axis % value.ndim
            x = torch.from_numpy(np.array(value, dtype=np.float32))
            weight = _qdq(x, _broadcast(torch_scale, axis, x.ndim), fmt)
            pair.axis = axis
            only_here = all(n.op_type == "QuantizeLinear" and n.output[0] in removed
                            for n, _ in consumers.get(src, []))
            holder = src if only_here and src in inits else dq.output[0]
        else:
            what = f"{describe(q)}" if q is not None else f"graph input '{stored}'"
            raise _refuse(source, f"node {describe(dq)} dequantizes the output of {what}, "
                                  "neither a QuantizeLinear nor a constant")
        if holder in inits:
            inits[holder].CopyFrom(numpy_helper.from_array(weight.numpy(), holder))
        else:
            new_inits.append(numpy_helper.from_array(weight.numpy(), holder))
        if holder != dq.output[0]:
            rename[dq.output[0]] = holder
        removed.add(dq.output[0])
        weights[holder] = pair

    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.output[0] not in removed:
            raise _refuse(source, f"node {describe(node)} is not followed by a DequantizeLinear")
    formats = {p.format: p.node for p in [*activations, *weights.values()]}
    if len(formats) > 1:
        raise _refuse(source, "the graph mixes int8 and fp8 quantization (" +
                      ", ".join(f"{fmt} at node {node}" for fmt, node in formats.items()) + ")")
    kept = [n for n in nodes if n.output[0] not in removed]
    del graph.node[:]
    for node in kept:
        for idx, name in enumerate(node.input):
            if name in rename:
                node.input[idx] = rename[name]
        graph.node.append(node)
    graph.initializer.extend(new_inits)
    # Float weights only the removed pairs read would be found again by name: drop them.
    read = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    orphans = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"} - read - set(weights)
    for name in orphans & set(inits):
        graph.initializer.remove(inits[name])
    return Stripped(source, activations, weights)


def _weight_source(g: Graph, node) -> tuple[str, int]:
    """(name of the constant a Linear node multiplies by, axis of its output features in that constant)."""
    if node.op_type == "Gemm":
        return node.input[1], 0 if _attr(node, "transB", 0) else 1
    src = g.producer.get(node.input[1])
    if src is not None and src.op_type == "Transpose" and list(_attr(src, "perm", [1, 0])) == [1, 0]:
        return src.input[0], 0
    return node.input[1], 1


def _reduce(values: dict[str, list[np.ndarray]], source: str) -> dict[str, torch.Tensor]:
    """One clip value per name: the largest. Where the graph's differ by more than 1% for the input of a
    linear layer (Q, K and V read one tensor), a warning; a residual add's two operands may differ."""
    out, spread = {}, []
    for name, found in values.items():
        top, low = max(float(v) for v in found), min(float(v) for v in found)
        if top - low > 0.01 * top and not name.endswith("residual.input"):
            spread.append(f"{name} ({len(found)} from {low:.6g} to {top:.6g})")
        out[name] = torch.tensor(top, dtype=torch.float32)
    if spread:
        warnings.warn(f"{source}: inputs quantized by several pairs with clip values more than 1% apart: "
                      f"{'; '.join(spread)}; bertrt uses the largest")
    return out


def place(stripped: Stripped, g: Graph, layers: int) -> QuantScales:
    """Name every pair ``strip`` took out of the graph ``g`` (after stripping) by what it fed.

    Raises:
        CheckpointError: a pair on anything but the patterns in ``MAPPED``, naming its node.
    """
    source, unclaimed = stripped.source, dict(stripped.weights)
    try:
        encoder = encoder_linears(g, linear_layers(g), layers)
    except StructureError as exc:
        raise CheckpointError(f"{source}: cannot place the quantization scales: {exc}") from exc
    by_out = {n.output[0]: n for n in g.nodes if n.output}

    linear_of: dict[str, tuple[int, str]] = {}        # Linear node output -> (layer, kind)
    attention_of: dict[str, tuple[int, tuple[str, str]]] = {}  # attention MatMul output -> (layer, operands)
    residual_of: dict[str, str] = {}                  # output (after the bias) of attn.out/ffn.out -> sublayer
    for i, modules in enumerate(encoder):
        for module, linear in modules.items():
            linear_of[linear[0].output[0]] = (i, _LINEAR_KINDS[module])
        scores = attention_use(g, modules["attention.self.query"][4])[0]
        context = attention_use(g, modules["attention.self.value"][4])[0]
        attention_of[scores], attention_of[context] = (i, ("q", "k")), (i, ("probs", "v"))
        residual_of[modules["attention.output.dense"][4]] = f"layers.{i}.attn"
        residual_of[modules["output.dense"][4]] = f"layers.{i}.ffn"

    amax: dict[str, list[np.ndarray]] = {}
    # Weights: per channel along the output features, q|k|v rows concatenated.
    for i, modules in enumerate(encoder):
        parts: dict[str, np.ndarray] = {}
        for module, linear in modules.items():
            name, out_axis = _weight_source(g, linear[0])
            pair = unclaimed.pop(name, None)
            if pair is None:
                continue
            if pair.axis is not None and pair.axis != out_axis:
                raise _refuse(source, f"node {pair.node} scales the weight of {describe(linear[0])} per input "
                                      f"channel (axis {pair.axis})")
            out_features = linear[1].shape[0]
            parts[_LINEAR_KINDS[module]] = pair.amax.reshape(()) if pair.axis is None else pair.amax.reshape(-1)
            if pair.axis is not None and parts[_LINEAR_KINDS[module]].shape != (out_features,):
                raise _refuse(source, f"node {pair.node} has {pair.amax.size} scales for {out_features} channels")
        qkv = [parts.pop(k) for k in ("q", "k", "v") if k in parts]
        if len(qkv) not in (0, 3):
            raise _refuse(source, f"layer {i} quantizes some of the query, key and value weights but not all")
        if qkv:
            scalars = all(p.ndim == 0 for p in qkv) and len({float(p) for p in qkv}) == 1
            h = encoder[i]["attention.self.query"][1].shape[0]
            parts["attn.qkv"] = qkv[0] if scalars else np.concatenate([np.broadcast_to(p, (h,)) for p in qkv])
        for kind, value in parts.items():
            amax[f"layers.{i}.{kind}.weight"] = [value]
    for name, pair in unclaimed.items():
        users = ", ".join(describe(by_out[key]) for key, _ in pair.uses if key in by_out) or "nothing"
        raise _refuse(source, f"node {pair.node} quantizes the weight '{name}' read by {users}, which is not a "
                              "linear layer of the encoder")

    def ends(key: str, idx: int) -> set[tuple[str, int, bool]]:
        """Where a value read at input ``idx`` of node ``key`` ends up past ``_MOVES`` and ``_SCALINGS``:
        (node, input index, whether a scaling was crossed)."""
        found, queue, seen = set(), deque([(key, idx, False)]), set()
        while queue:
            key, idx, scaled = item = queue.popleft()
            node = by_out.get(key)
            if node is None or item in seen or key in attention_of or key in linear_of:
                found.add(item)
                continue
            seen.add(item)
            others = [n for j, n in enumerate(node.input) if j != idx and n]
            moves = idx in _MOVES.get(node.op_type, ())
            scales = idx in _SCALINGS.get(node.op_type, ()) and (
                node.op_type == "Where" or all(g.const(n) is not None for n in others))
            if moves or scales:
                queue.extend((n.output[0], j, scaled or scales) for n, j in g.consumers.get(node.output[0], []))
            elif node.op_type not in _SHAPE_READERS:
                found.add(item)
        return found

    def role(key: str, idx: int, scaled: bool) -> str | None:
        """The canonical name of what input ``idx`` of node ``key`` is, when bertrt maps it."""
        node = by_out.get(key)
        if key in attention_of:
            layer, operands = attention_of[key]
            return f"layers.{layer}.attn.{operands[idx]}.input"
        if scaled or node is None:
            return None
        if key in linear_of and idx == 0:
            layer, kind = linear_of[key]
            return f"layers.{layer}.{'attn.qkv' if kind in ('q', 'k', 'v') else kind}.input"
        if node.op_type == "Add" and all(g.const(n) is None for n in node.input):
            sublayer = {residual_of.get(n) for n in node.input} - {None}
            return f"{sublayer.pop()}.residual.input" if len(sublayer) == 1 else None
        return None

    beyond_linears = set()
    for pair in stripped.activations:
        if pair.axis is not None:
            raise _refuse(source, f"node {pair.node} quantizes an activation per channel")
        for key, idx, scaled in {end for use in pair.uses for end in ends(*use)}:
            name = role(key, idx, scaled)
            if name is None:
                reader = describe(by_out[key]) if key in by_out else f"'{key}'"
                raise _refuse(source, f"node {pair.node} quantizes input {idx} of node {reader}, which bertrt "
                                      "does not map")
            what = name.split(".", 2)[2].removesuffix(".input")  # attn.qkv, attn.q, ffn.residual...
            if what not in _LINEAR_INPUTS:
                beyond_linears.add(what)
            amax.setdefault(name, []).append(pair.amax)

    if beyond_linears:
        warnings.warn(f"{source}: the graph also quantizes {', '.join(sorted(beyond_linears))}; bertrt runs "
                      "attention and the residual adds in fp16/fp32 for this checkpoint (their scales are kept "
                      "in Checkpoint.quant)")
    weights = {k: torch.from_numpy(np.array(v[0], dtype=np.float32)) for k, v in amax.items() if k.endswith(".weight")}
    inputs = _reduce({k: v for k, v in amax.items() if not k.endswith(".weight")}, source)
    return QuantScales(format=stripped.format, amax={**weights, **inputs})
