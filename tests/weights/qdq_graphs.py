"""Quantization-aware ONNX graphs for the loader tests: a tiny float BERT exported by torch.onnx.export,
QuantizeLinear/DequantizeLinear pairs inserted with onnx.helper, onnxruntime to run them, and a plain-PyTorch
simulation of what such a graph computes."""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from loader_helpers import padded, sample_sequences
from onnx import TensorProto, helper, numpy_helper

from bertrt.packed import pack_sequences
from bertrt.reference import ReferenceBert
from bertrt.weights import load_checkpoint

QMAX = {"int8": 127.0, "fp8": 448.0}
ZERO_POINT = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN}
# Odd sizes: head dim 12, intermediate 44, 3 layers.
SIZES = dict(hidden_size=36, num_attention_heads=3, intermediate_size=44, num_hidden_layers=3)
LENGTHS = (9, 17, 4)
_MODULES = {"attention/self/query": "attn.qkv", "attention/self/key": "attn.qkv", "attention/self/value": "attn.qkv",
            "attention/output/dense": "attn.out", "intermediate/dense": "ffn.in", "output/dense": "ffn.out"}


def canonical(node, idx: int) -> str:
    """The canonical name of what input ``idx`` of a TorchScript-exported node quantizes."""
    m = re.match(r"^/bert/encoder/layer\.(\d+)/(.+)/(\w+)$", node.name)
    layer, module, op = m[1], m[2], m[3]
    if module in _MODULES:
        return f"layers.{layer}.{_MODULES[module]}.{'input' if idx == 0 else 'weight'}"
    if module == "attention/self":
        return f"layers.{layer}.attn.{[('q', 'k'), ('probs', 'v')][op == 'MatMul_1'][idx]}.input"
    return f"layers.{layer}.{'attn' if module == 'attention/output' else 'ffn'}.residual.input"


def ort_session(model_proto):
    options = ort.SessionOptions()
    # No graph rewrites: the Q/DQ graph runs as ONNX defines it (no fused integer kernels).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_qa(model_proto, lengths=LENGTHS) -> torch.Tensor:
    """onnxruntime's QA logits of every real token, (total_tokens, 2)."""
    ids, types = sample_sequences(64, lengths, seed=1)
    inputs = {k: v.numpy() for k, v in padded(ids, types).items()}
    start, end = ort_session(model_proto).run(None, inputs)
    mask = inputs["attention_mask"].astype(bool)
    return torch.stack([torch.from_numpy(start[mask]), torch.from_numpy(end[mask])], dim=-1)


def activation_peaks(model_proto, names: list[str]) -> dict[str, float]:
    """max |x| of each named tensor over the test sequences, run in the float graph."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model_proto)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    ids, types = sample_sequences(64, LENGTHS, seed=1)
    inputs = {k: v.numpy() for k, v in padded(ids, types).items()}
    values = ort_session(probe).run(names, inputs)
    return {n: float(np.abs(v).max()) for n, v in zip(names, values)}


def quantize_graph(float_model, *, fmt: str = "int8", per_channel: bool = True, transposed: bool = False,
                   weights: bool = True, extra: tuple[str, ...] = (), head: bool = False, qkv_spread: float = 0.0):
    """A copy of ``float_model`` with Q/DQ pairs before each encoder linear layer's input and weight.

    Args:
        fmt: "int8" (int8 zero points) or "fp8" (float8e4m3fn zero points).
        per_channel: weight scales per output channel, else per tensor.
        transposed: weights stored (out, in) and transposed before the MatMul, as pytorch-quantization's
            Linear exports; else stored (in, out) and read by the MatMul directly.
        weights: quantize the weights too (else the linear layers' inputs only).
        extra: also quantize "attention" (both matmuls' operands) and/or "residual" (both inputs of the adds).
        head: also quantize the QA head's input (a pattern bertrt does not map).
        qkv_spread: K's input clip value is (1 + qkv_spread) times Q's and V's.
    Returns:
        (the Q/DQ model, canonical name -> list of the clip values inserted for it (scale * qmax, fp32)).
    """
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    qmax = np.float32(QMAX[fmt])
    amaxes: dict[str, list[np.ndarray]] = {}
    pending = []  # (node, input index, kind)
    for node in graph.node:
        encoder = node.name.startswith("/bert/encoder/")
        if node.op_type == "MatMul" and node.input[1] in inits and (encoder or head):
            pending += [(node, 0, "activation")] + ([(node, 1, "weight")] if weights else [])
        elif node.op_type == "MatMul" and encoder and "attention" in extra:
            pending += [(node, 0, "activation"), (node, 1, "activation")]
        elif node.op_type == "Add" and re.search(r"/(attention/output|output)/Add$", node.name) and "residual" in extra:
            pending += [(node, 0, "activation"), (node, 1, "activation")]
    peaks = activation_peaks(float_model, sorted({n.input[i] for n, i, k in pending if k == "activation"}))
    new_nodes: dict[str, list] = {}  # consumer name -> nodes to insert before it
    for node, idx, kind in pending:
        src, prefix = node.input[idx], f"{node.name}/input{idx}_quantizer"
        axis = None
        if kind == "weight":
            w = numpy_helper.to_array(inits[src])  # (in, out)
            if transposed:
                w = w.T.copy()
                inits[src].CopyFrom(numpy_helper.from_array(w, src))
            out_axis = 0 if transposed else 1
            amax = np.abs(w).max(axis=1 - out_axis) if per_channel else np.abs(w).max()
            axis = out_axis if per_channel else None
        else:
            amax = np.float32(peaks[src] * 1.25)  # headroom: values quantized upstream may exceed the float peak
            if qkv_spread and "/attention/self/key/" in node.name:
                amax = np.float32(amax * (1 + qkv_spread))
        scale = (np.asarray(amax, np.float32) / qmax).astype(np.float32)
        scale_name, zp_name = f"{prefix}/scale", f"{prefix}/zero_point"
        graph.initializer.append(numpy_helper.from_array(scale, scale_name))
        zp_shape = list(scale.shape)  # per axis, one zero point per channel
        graph.initializer.append(helper.make_tensor(zp_name, ZERO_POINT[fmt], zp_shape, [0] * scale.size))
        attrs = {} if axis is None else {"axis": axis}
        quantized, dequantized = f"{prefix}/QuantizeLinear_output_0", f"{prefix}/DequantizeLinear_output_0"
        nodes = [helper.make_node("QuantizeLinear", [src, scale_name, zp_name], [quantized],
                                  name=f"{prefix}/QuantizeLinear", **attrs),
                 helper.make_node("DequantizeLinear", [quantized, scale_name, zp_name], [dequantized],
                                  name=f"{prefix}/DequantizeLinear", **attrs)]
        read = dequantized
        if kind == "weight" and transposed:
            read = f"{prefix}/Transpose_output_0"
            nodes.append(helper.make_node("Transpose", [dequantized], [read], name=f"{prefix}/Transpose", perm=[1, 0]))
        new_nodes.setdefault(node.name, []).extend(nodes)
        node.input[idx] = read
        if node.name.startswith("/bert/encoder/"):
            amaxes.setdefault(canonical(node, idx), []).append(scale * qmax)
    ordered = []
    for node in graph.node:
        ordered += new_nodes.get(node.name, []) + [node]
    del graph.node[:]
    graph.node.extend(ordered)
    model.opset_import[0].version = max(model.opset_import[0].version, 19)  # float8 Q/DQ
    model.ir_version = max(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model, amaxes


def save(model, folder, float_folder):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(float_folder / "config.json", folder / "config.json")
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def load(model, tmp_path, float_folder):
    """Save ``model`` and load it back with bertrt; a warning is an error."""
    path = save(model, tmp_path / "qdq", float_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_checkpoint(path)


def expected_scales(amaxes: dict[str, list[np.ndarray]], hidden: int) -> dict[str, np.ndarray]:
    """The clip value bertrt should report per name: q|k|v weights concatenated, inputs the largest."""
    out = {}
    for name, found in amaxes.items():
        if name.endswith("qkv.weight"):
            parts = [np.broadcast_to(a, (hidden,)) for a in found]
            out[name] = found[0] if all(a.ndim == 0 for a in found) and len({float(a) for a in found}) == 1 \
                else np.concatenate(parts)
        elif name.endswith(".weight"):
            out[name] = found[0]
        else:
            out[name] = np.max(found)
    return out


def fake_quantize_ref(x: torch.Tensor, amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """ONNX's DequantizeLinear(QuantizeLinear(x)) at scale amax / qmax (per tensor)."""
    scale = amax / QMAX[fmt]
    y = x / scale
    y = torch.round(y).clamp(-128, 127) if fmt == "int8" else y.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return y * scale


def simulated_qa(ckpt) -> torch.Tensor:
    """ReferenceBert on the loaded (dequantized) weights with each linear layer's input fake-quantized
    at the loaded clip value: what the Q/DQ graph computes, in plain PyTorch."""
    model = ReferenceBert.from_checkpoint(ckpt).eval()
    for name, module in model.named_modules():
        amax = ckpt.quant.amax.get(f"{name}.input")
        if amax is not None:
            module.register_forward_pre_hook(
                lambda m, args, amax=amax: (fake_quantize_ref(args[0], amax, ckpt.quant.format),))
    ids, types = sample_sequences(64, LENGTHS, seed=1)
    with torch.no_grad():
        return model.qa_logits(pack_sequences(ids, types))


def anonymize(model):
    """Node and initializer names gone, as the torch.export-based exporter leaves them."""
    names = {t.name: f"val_{i}" for i, t in enumerate(model.graph.initializer)}
    for t in model.graph.initializer:
        t.name = names[t.name]
    for node in model.graph.node:
        node.name = ""
        node.input[:] = [names.get(n, n) for n in node.input]
    return model


class FakeQuantLinear(torch.nn.Linear):
    """A Linear whose input (per tensor) and weight (per output channel or per tensor) are fake-quantized
    to int8, as pytorch-quantization's QuantLinear exports: torch.onnx turns each into a Q/DQ pair."""

    def __init__(self, linear: torch.nn.Linear, input_amax: float, per_channel: bool):
        super().__init__(linear.in_features, linear.out_features)
        self.load_state_dict(linear.state_dict())
        w = self.weight.detach().abs()
        self.register_buffer("input_scale", torch.tensor(input_amax) / 127)
        self.register_buffer("weight_scale", (w.amax(dim=1) if per_channel else w.max()) / 127)
        self.per_channel = per_channel

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, torch.tensor(0, dtype=torch.int32), -128, 127)
        if self.per_channel:
            zero = torch.zeros(self.out_features, dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, zero, 0, -128, 127)
        else:
            w = torch.fake_quantize_per_tensor_affine(self.weight, self.weight_scale,
                                                      torch.tensor(0, dtype=torch.int32), -128, 127)
        return torch.nn.functional.linear(x, w, self.bias)


def insert_pair(model, consumer_name: str, idx: int, *, zero_point=None, name: str = "custom/QuantizeLinear"):
    """Put a per-tensor int8 Q/DQ pair (scale 0.05) before input ``idx`` of the named node."""
    graph = model.graph
    node = next(n for n in graph.node if n.name == consumer_name)
    zp = zero_point if zero_point is not None else np.zeros((), np.int8)
    graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "custom/scale"),
                              numpy_helper.from_array(zp, "custom/zero_point")])
    pair = [helper.make_node("QuantizeLinear", [node.input[idx], "custom/scale", "custom/zero_point"], ["custom/q"],
                             name=name),
            helper.make_node("DequantizeLinear", ["custom/q", "custom/scale", "custom/zero_point"], ["custom/dq"],
                             name="custom/DequantizeLinear")]
    node.input[idx] = "custom/dq"
    position = list(graph.node).index(node)
    for offset, new in enumerate(pair):
        graph.node.insert(position + offset, new)
    return model
