"""ONNX files exported from a Hugging Face BERT (``torch.onnx.export``), mapped back to canonical weights.

Two ways to tell which initializer is which parameter, tried in this order:

1. **By name.** The TorchScript exporter (``dynamo=False``) keeps parameter names for most
   initializers (``bert.encoder.layer.0.attention.self.query.bias``), renames transposed Linear
   weights to ``onnx::MatMul_NNN`` (their consuming node is named after the module:
   ``/bert/encoder/layer.0/attention/self/query/MatMul``), and shares one initializer between
   parameters with equal values through ``Identity`` nodes whose outputs carry the other names.
2. **By graph structure.** The torch.export-based exporter (the default since PyTorch 2.9) folds
   Linear weights into anonymous ``val_NNN`` initializers with anonymous nodes. BERT's graph is
   regular enough to read them back: embeddings are Gathers fed by the graph inputs, LayerNorms come
   in order (embeddings, then attention/output per layer), each layer has six Linears in order (Q, K,
   V, attention output, intermediate, output), and Q/K/V are told apart by how they reach the
   attention matmuls (Q is the left operand of the scores, K the right, V the right of the context).

A quantization-aware model (QuantizeLinear/DequantizeLinear pairs, as pytorch-quantization exports)
is first reduced to its float graph by ``onnx_qdq``, which reads the pairs' scales into
``Checkpoint.quant``; its weights load as what the graph computes with, DQ(Q(W)).

The number of attention heads cannot be read from the weights, so a ``config.json`` must sit beside
the ``.onnx`` file (``vocab.txt`` too, for tokenising). ``onnx`` is imported here only.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from pathlib import Path

import numpy as np
import torch

from bertrt.config import BertConfig
from bertrt.weights.schema import Checkpoint, CheckpointError, from_hf_names

# Hugging Face parameter names of a BERT model (with or without the ``bert.`` prefix).
_PARAM = re.compile(r"^(?:bert\.)?(?:embeddings\.\w+|encoder\.layer\.\d+\.[\w.]+|pooler\.dense)\.(?:weight|bias)$"
                    r"|^(?:qa_outputs|classifier)\.(?:weight|bias)$")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "bfloat16":  # ml_dtypes bfloat16, which torch.from_numpy does not know
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


class _Graph:
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


def _named_state(g: _Graph) -> dict[str, torch.Tensor]:
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
    return {k: _to_tensor(v) for k, v in state.items()}


# --- 2. by graph structure -----------------------------------------------------------------------

class _StructureError(ValueError):
    pass


def _linears(g: _Graph) -> list[tuple[object, np.ndarray, np.ndarray | None, str, str]]:
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
            raise _StructureError(f"Linear node {node.name or node.op_type} has no bias Add")
        found.append((node, weight, bias, node.input[0], out))
    return found


def _attention_use(g: _Graph, start: str) -> tuple[str, int]:
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
    raise _StructureError(f"{start} never reaches an attention matmul")


def _graph_inputs_behind(g: _Graph, name: str) -> set[str]:
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


def _embeddings(g: _Graph, config: BertConfig) -> dict[str, np.ndarray]:
    gathers = [n for n in g.nodes if n.op_type == "Gather" and g.const(n.input[0], 2) is not None]
    rows = {"word_embeddings": config.vocab_size, "position_embeddings": config.max_position_embeddings,
            "token_type_embeddings": config.type_vocab_size}
    if len(gathers) != 3:
        raise _StructureError(f"expected 3 embedding Gathers, found {len(gathers)}")
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
            raise _StructureError(f"cannot tell which embedding a ({table.shape[0]}, H) table is")
        out[kinds[0]] = table
    return out


def _encoder_linears(g: _Graph, linears: list, layers: int) -> list[dict[str, tuple]]:
    """Per encoder layer, Hugging Face module name (``attention.self.query``, ...) -> its Linear
    (as ``_linears`` gives it): six Linears per layer in order, Q/K/V told apart by the attention matmuls."""
    if len(linears) < 6 * layers:
        raise _StructureError(f"expected at least {6 * layers} Linear layers, found {len(linears)}")
    found = []
    for i in range(layers):
        proj = linears[6 * i:6 * i + 3]
        if len({lin[3] for lin in proj}) != 1:
            raise _StructureError(f"layer {i}: the first three Linears do not share their input")
        uses = [_attention_use(g, lin[4]) for lin in proj]
        q = [j for j, (_, idx) in enumerate(uses) if idx == 0]
        k = [j for j, (node, idx) in enumerate(uses) if idx == 1 and q and node == uses[q[0]][0]]
        if len(q) != 1 or len(k) != 1:
            raise _StructureError(f"layer {i}: cannot tell query, key and value apart")
        (v,) = {0, 1, 2} - {q[0], k[0]}
        found.append({"attention.self.query": proj[q[0]], "attention.self.key": proj[k[0]],
                      "attention.self.value": proj[v], "attention.output.dense": linears[6 * i + 3],
                      "intermediate.dense": linears[6 * i + 4], "output.dense": linears[6 * i + 5]})
    return found


def _structural_state(g: _Graph, config: BertConfig) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {}
    for kind, table in _embeddings(g, config).items():
        state[f"bert.embeddings.{kind}.weight"] = table
    norms = [n for n in g.nodes if n.op_type == "LayerNormalization"
             and len(n.input) == 3 and g.const(n.input[1], 1) is not None and g.const(n.input[2], 1) is not None]
    layers = config.num_hidden_layers
    if len(norms) != 1 + 2 * layers:
        raise _StructureError(f"expected {1 + 2 * layers} LayerNormalization nodes, found {len(norms)} "
                              "(export with opset >= 17 so LayerNorm is one node)")
    linears = _linears(g)

    def put(module: str, linear) -> None:
        state[f"{module}.weight"], state[f"{module}.bias"] = linear[1], linear[2]

    def put_norm(module: str, node) -> None:
        state[f"{module}.weight"], state[f"{module}.bias"] = g.const(node.input[1]), g.const(node.input[2])

    put_norm("bert.embeddings.LayerNorm", norms[0])
    for i, modules in enumerate(_encoder_linears(g, linears, layers)):
        p = f"bert.encoder.layer.{i}."
        for module, linear in modules.items():
            put(p + module, linear)
        put_norm(p + "attention.output.LayerNorm", norms[1 + 2 * i])
        put_norm(p + "output.LayerNorm", norms[2 + 2 * i])

    heads, pooled = linears[6 * layers:], set()
    for lin in heads:
        if [n.op_type for n, _ in g.consumers.get(lin[4], [])] == ["Tanh"]:
            put("bert.pooler.dense", lin)
            pooled.add(g.consumers[lin[4]][0][0].output[0])
    for lin in heads:
        if lin[4] in {n.input[0] for n in g.nodes if n.op_type == "Tanh"}:
            continue  # the pooler
        behind, src = {lin[3]}, g.producer.get(lin[3])
        while src is not None and src.op_type in ("Identity", "Dropout"):  # dropout is gone at inference
            behind.add(src.input[0])
            src = g.producer.get(src.input[0])
        if behind & pooled:
            put("classifier", lin)
        elif lin[1].shape[0] == 2:
            put("qa_outputs", lin)
        else:
            raise _StructureError(f"a Linear of shape {lin[1].shape} after the encoder is not a known head")
    return {k: _to_tensor(v) for k, v in state.items()}


# --- loading -----------------------------------------------------------------------------------------

def load_onnx(path: str | Path) -> Checkpoint:
    """Load the weights of a BERT exported to ONNX from a Hugging Face model.

    Args:
        path: the ``.onnx`` file (external data files beside it are read too); ``config.json`` must
            be in the same folder, ``vocab.txt`` is picked up when present.
    Returns:
        The checkpoint; ``quant`` holds the scales when the graph has QuantizeLinear/DequantizeLinear.
    Raises:
        CheckpointError: no config.json, an unreadable file, initializers that cannot be mapped, or a
            quantized pattern bertrt does not map (naming the node).
        ConfigError: the config is not a BERT encoder.
    """
    path = Path(path)
    config_file = next((path.parent / n for n in ("config.json", "bert_config.json")
                        if (path.parent / n).is_file()), None)
    if config_file is None:
        raise CheckpointError(f"{path}: the model's config.json must be beside the .onnx file "
                              "(num_attention_heads cannot be read from the weights)")
    config = BertConfig.from_json(config_file)
    try:
        import onnx
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading ONNX needs the onnx package (pip install 'bertrt[onnx]')") from exc
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError... for bad files
        raise CheckpointError(f"{path}: cannot read ONNX model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    from bertrt.weights import onnx_qdq

    stripped = onnx_qdq.strip(graph, source=str(path))  # quantization-aware models: a float graph + scales
    g = _Graph(graph)
    vocab = path.parent / "vocab.txt"
    vocab_file = vocab if vocab.is_file() else None

    def with_scales(ckpt: Checkpoint) -> Checkpoint:
        if stripped is None:
            return ckpt
        return dataclasses.replace(ckpt, quant=onnx_qdq.place(stripped, g, config.num_hidden_layers))

    try:
        tensors = from_hf_names(_named_state(g), config, source=str(path))
        ckpt = Checkpoint(config, tensors, vocab_file=vocab_file, source=str(path))
    except CheckpointError as exc:
        by_name = str(exc).removeprefix(f"{path}: ")
    else:
        return with_scales(ckpt)
    try:
        tensors = from_hf_names(_structural_state(g, config), config, source=str(path))
        ckpt = Checkpoint(config, tensors, vocab_file=vocab_file, source=str(path))
    except (_StructureError, CheckpointError) as exc:
        by_structure = str(exc).removeprefix(f"{path}: ")
    else:
        return with_scales(ckpt)
    raise CheckpointError(f"{path}: cannot map the ONNX initializers to BERT weights. By name: {by_name}. "
                          f"By graph structure: {by_structure}")
