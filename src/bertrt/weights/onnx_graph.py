"""Reading an ONNX export of BERT as a graph: its initializers, nodes, the encoder's linear layers by
role and the structure around them. What both the float loader (``onnx_loader``) and the
quantization-aware pairs (``onnx_qdq``) walk.
"""

from __future__ import annotations

import re
from collections import deque

import numpy as np
import torch

from bertrt.config import BertConfig

# Hugging Face parameter names of a BERT model (with or without the ``bert.`` prefix).
_PARAM = re.compile(r"^(?:bert\.)?(?:embeddings\.\w+|encoder\.layer\.\d+\.[\w.]+|pooler\.dense)\.(?:weight|bias)$"
                    r"|^(?:qa_outputs|classifier)\.(?:weight|bias)$")


def to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "bfloat16":  # ml_dtypes bfloat16, which torch.from_numpy does not know
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


class Graph:
    """Constant values and producer/consumer links of an ONNX graph."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.nodes = list(graph.node)
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.values]
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list[tuple[object, int]]] = {}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            # Identity of a constant is how the TorchScript exporter shares equal-valued parameters.
            if node.op_type == "Identity" and node.input[0] in self.values:
                self.values[node.output[0]] = self.values[node.input[0]]
            for out in node.output:
                self.producer[out] = node
            for idx, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, idx))

    def const(self, name: str, ndim: int | None = None) -> np.ndarray | None:
        value = self.values.get(name)
        if value is None or (not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16"):
            return None
        return value if ndim is None or value.ndim == ndim else None


# --- 1. by name ------------------------------------------------------------------------------

def _module_of(node) -> str | None:
    """``/bert/encoder/layer.0/attention/self/query/MatMul`` -> ``bert.encoder.layer.0.attention.self.query``."""
    if not node.name.startswith("/"):
        return None
    return ".".join(node.name.strip("/").split("/")[:-1]) or None


def named_state(g: Graph) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {name: v for name, v in g.values.items() if _PARAM.match(name)}
    for name, value in g.values.items():
        if _PARAM.match(name) or g.const(name) is None:
            continue
        for node, idx in g.consumers.get(name, []):
            module, weight = _module_of(node), None
            if node.op_type == "Transpose" and value.ndim == 2:
                # A (out, in) weight transposed on the fly for a MatMul named after its module.
                users = g.consumers.get(node.output[0], [])
                module = next((_module_of(n) for n, i in users if n.op_type == "MatMul" and i == 1), None)
                weight = value
            elif node.op_type == "MatMul" and idx == 1 and value.ndim == 2:
                weight = value.T
            elif node.op_type == "Gemm" and idx == 1 and value.ndim == 2:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                weight = value if trans_b else value.T
            elif node.op_type in ("Gather", "LayerNormalization", "Gemm", "Add"):
                kind = {("Gather", 0): "weight", ("LayerNormalization", 1): "weight",
                        ("LayerNormalization", 2): "bias", ("Gemm", 2): "bias"}.get((node.op_type, idx))
                if node.op_type == "Add" and value.ndim == 1:
                    kind = "bias"
                if module and kind and _PARAM.match(f"{module}.{kind}"):
                    state.setdefault(f"{module}.{kind}", value)
                continue
            if module and weight is not None and _PARAM.match(f"{module}.weight"):
                state.setdefault(f"{module}.weight", weight)
    return {k: to_tensor(v) for k, v in state.items()}


# --- 2. by graph structure -----------------------------------------------------------------------

class StructureError(ValueError):
    pass


def linear_layers(g: Graph) -> list[tuple[object, np.ndarray, np.ndarray | None, str, str]]:
    """(node, weight (out, in), bias, input name, output name after the bias) of every Linear, in order."""
    found = []
    for node in g.nodes:
        weight = bias = None
        if node.op_type == "MatMul" and g.const(node.input[1], 2) is not None:
            weight = g.const(node.input[1]).T
        elif node.op_type == "MatMul" and node.input[1] in g.producer:
            src = g.producer[node.input[1]]
            if src.op_type == "Transpose" and g.const(src.input[0], 2) is not None:
                weight = g.const(src.input[0])
        elif node.op_type == "Gemm" and g.const(node.input[1], 2) is not None:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            weight = g.const(node.input[1]) if trans_b else g.const(node.input[1]).T
            bias = g.const(node.input[2], 1) if len(node.input) > 2 else None
        if weight is None:
            continue
        out = node.output[0]
        if bias is None:
            for user, idx in g.consumers.get(out, []):
                other = g.const(user.input[1 - idx], 1) if user.op_type == "Add" else None
                if other is not None and other.shape == (weight.shape[0],):
                    bias, out = other, user.output[0]
                    break
        if bias is None:
            raise StructureError(f"Linear node {node.name or node.op_type} has no bias Add")
        found.append((node, weight, bias, node.input[0], out))
    return found


def attention_use(g: Graph, start: str) -> tuple[str, int]:
    """The first matmul of two activations that ``start`` flows into (by its output), and which operand it is."""
    seen, queue = {start}, deque([start])
    while queue:
        name = queue.popleft()
        for node, idx in g.consumers.get(name, []):
            if node.op_type == "MatMul" and all(g.const(i) is None for i in node.input):
                return node.output[0], idx
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    queue.append(out)
    raise StructureError(f"{start} never reaches an attention matmul")


def _graph_inputs_behind(g: Graph, name: str) -> set[str]:
    seen, queue, found = {name}, deque([name]), set()
    while queue:
        cur = queue.popleft()
        if cur in g.inputs:
            found.add(cur)
        node = g.producer.get(cur)
        for src in node.input if node is not None else ():
            if src and src not in seen:
                seen.add(src)
                queue.append(src)
    return found


def embeddings(g: Graph, config: BertConfig) -> dict[str, np.ndarray]:
    gathers = [n for n in g.nodes if n.op_type == "Gather" and g.const(n.input[0], 2) is not None]
    rows = {"word_embeddings": config.vocab_size, "position_embeddings": config.max_position_embeddings,
            "token_type_embeddings": config.type_vocab_size}
    if len(gathers) != 3:
        raise StructureError(f"expected 3 embedding Gathers, found {len(gathers)}")
    out: dict[str, np.ndarray] = {}
    for node in gathers:
        table = g.const(node.input[0])
        kinds = [k for k, r in rows.items() if r == table.shape[0] and k not in out]
        if len(kinds) > 1:  # equal row counts (e.g. vocab == max positions): ask the graph inputs
            feeds = " ".join(_graph_inputs_behind(g, node.input[1])).lower()
            kinds = (["token_type_embeddings"] if "type" in feeds or "segment" in feeds else
                     ["word_embeddings"] if "input" in feeds and "position" not in feeds else
                     ["position_embeddings"])
        if not kinds or kinds[0] in out:
            raise StructureError(f"cannot tell which embedding a ({table.shape[0]}, H) table is")
        out[kinds[0]] = table
    return out


def encoder_linears(g: Graph, linears: list, layers: int) -> list[dict[str, tuple]]:
    """Per encoder layer, Hugging Face module name (``attention.self.query``, ...) -> its Linear
    (as ``linear_layers`` gives it): six Linears per layer in order, Q/K/V told apart by the attention matmuls."""
    if len(linears) < 6 * layers:
        raise StructureError(f"expected at least {6 * layers} Linear layers, found {len(linears)}")
    found = []
    for i in range(layers):
        proj = linears[6 * i:6 * i + 3]
        if len({lin[3] for lin in proj}) != 1:
            raise StructureError(f"layer {i}: the first three Linears do not share their input")
        uses = [attention_use(g, lin[4]) for lin in proj]
        q = [j for j, (_, idx) in enumerate(uses) if idx == 0]
        k = [j for j, (node, idx) in enumerate(uses) if idx == 1 and q and node == uses[q[0]][0]]
        if len(q) != 1 or len(k) != 1:
            raise StructureError(f"layer {i}: cannot tell query, key and value apart")
        (v,) = {0, 1, 2} - {q[0], k[0]}
        found.append({"attention.self.query": proj[q[0]], "attention.self.key": proj[k[0]],
                      "attention.self.value": proj[v], "attention.output.dense": linears[6 * i + 3],
                      "intermediate.dense": linears[6 * i + 4], "output.dense": linears[6 * i + 5]})
    return found
