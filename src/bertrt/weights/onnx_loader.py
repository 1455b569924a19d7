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
from pathlib import Path

import numpy as np
import torch

from bertrt.config import BertConfig
from bertrt.weights.schema import Checkpoint, CheckpointError, from_hf_names
from bertrt.weights.onnx_graph import (Graph, StructureError, embeddings, encoder_linears, linear_layers, named_state,
                                      to_tensor)


def _structural_state(g: Graph, config: BertConfig) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {}
    for kind, table in embeddings(g, config).items():
        state[f"bert.embeddings.{kind}.weight"] = table
    norms = [n for n in g.nodes if n.op_type == "LayerNormalization"
             and len(n.input) == 3 and g.const(n.input[1], 1) is not None and g.const(n.input[2], 1) is not None]
    layers = config.num_hidden_layers
    if len(norms) != 1 + 2 * layers:
        raise StructureError(f"expected {1 + 2 * layers} LayerNormalization nodes, found {len(norms)} "
                              "(export with opset >= 17 so LayerNorm is one node)")
    linears = linear_layers(g)

    def put(module: str, linear) -> None:
        state[f"{module}.weight"], state[f"{module}.bias"] = linear[1], linear[2]

    def put_norm(module: str, node) -> None:
        state[f"{module}.weight"], state[f"{module}.bias"] = g.const(node.input[1]), g.const(node.input[2])

    put_norm("bert.embeddings.LayerNorm", norms[0])
    for i, modules in enumerate(encoder_linears(g, linears, layers)):
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
            raise StructureError(f"a Linear of shape {lin[1].shape} after the encoder is not a known head")
    return {k: to_tensor(v) for k, v in state.items()}


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
    g = Graph(graph)
    vocab = path.parent / "vocab.txt"
    vocab_file = vocab if vocab.is_file() else None

    def with_scales(ckpt: Checkpoint) -> Checkpoint:
        if stripped is None:
            return ckpt
        return dataclasses.replace(ckpt, quant=onnx_qdq.place(stripped, g, config.num_hidden_layers))

    try:
        tensors = from_hf_names(named_state(g), config, source=str(path))
        ckpt = Checkpoint(config, tensors, vocab_file=vocab_file, source=str(path))
    except CheckpointError as exc:
        by_name = str(exc).removeprefix(f"{path}: ")
    else:
        return with_scales(ckpt)
    try:
        tensors = from_hf_names(_structural_state(g, config), config, source=str(path))
        ckpt = Checkpoint(config, tensors, vocab_file=vocab_file, source=str(path))
    except (StructureError, CheckpointError) as exc:
        by_structure = str(exc).removeprefix(f"{path}: ")
    else:
        return with_scales(ckpt)
    raise CheckpointError(f"{path}: cannot map the ONNX initializers to BERT weights. By name: {by_name}. "
                          f"By graph structure: {by_structure}")
