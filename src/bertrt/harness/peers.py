"""The Hugging Face peers bertrt is measured against, and the one builder of their model.

Peers (each built from the same weights, in the same precision):

- ``hf``: transformers ``BertForQuestionAnswering`` run eagerly (its default attention kernel), or
  ``ModernBertForQuestionAnswering`` for a ModernBERT engine;
- ``hf-graph``: that model captured in one CUDA graph per shape;
- ``compile``: ``torch.compile(mode="max-autotune")`` of that model (minutes to compile).

The LoadGen harness's ``pytorch`` and ``onnxruntime`` backends start from the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from bertrt.config import BertConfig

PEERS = ("hf", "hf-graph", "compile")
BERTRT = "bertrt"  # the system name of bertrt's own rows, beside the peers' names


def hf_qa_model(config: BertConfig, tensors: Mapping[str, torch.Tensor], *, device: torch.device | str,
                dtype: torch.dtype, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """transformers ``BertForQuestionAnswering`` holding these canonical weights, in eval mode.

    Args:
        config: the model's configuration.
        tensors: canonical name -> tensor (``weights.schema``), with the ``qa`` head.
        device: where the model is created and runs.
        dtype: its parameter dtype (fp16 on a GPU peer, fp32 on the CPU).
        attn_implementation: transformers' attention backend ("sdpa", or "eager" for ONNX export).

    Raises:
        ValueError: the weights have no question-answering head.
    """
    import transformers

    from bertrt.weights.schema import to_hf_names

    if "heads.qa.weight" not in tensors:
        raise ValueError("the model has no QA head, so there is no BertForQuestionAnswering peer")
    if config.model_type == "modernbert":
        return _modernbert_qa_model(config, tensors, device=device, dtype=dtype,
                                    attn_implementation=attn_implementation)
    hf_config = transformers.BertConfig(**config.to_hf_dict("BertForQuestionAnswering"),
                                        attn_implementation=attn_implementation)
    with torch.device(device):  # initialise on the device: fast even for BERT-Large
        model = transformers.BertForQuestionAnswering(hf_config)
    skipped = ("bert.pooler", "classifier.")  # parts of the checkpoint that a QA model does not have
    state = {k: v for k, v in to_hf_names(dict(tensors), config).items() if not k.startswith(skipped)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"HF peer weights do not line up: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.to(dtype).eval()


def _modernbert_qa_model(config: BertConfig, tensors: Mapping[str, torch.Tensor], *, device, dtype,
                         attn_implementation: str) -> torch.nn.Module:
    """transformers ``ModernBertForQuestionAnswering`` holding these canonical weights: the peer of a
    ModernBERT engine (its config in the names transformers 4 and 5 both read)."""
    import transformers

    from bertrt.weights.schema import to_hf_modernbert_names

    hf_config = transformers.ModernBertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        hidden_activation={"gelu_tanh": "gelu_pytorch_tanh"}.get(config.hidden_act, config.hidden_act),
        max_position_embeddings=config.max_position_embeddings, norm_eps=config.layer_norm_eps,
        norm_bias=config.norm_bias, attention_bias=config.linear_bias, mlp_bias=config.linear_bias,
        classifier_bias=config.linear_bias, classifier_activation=config.pooler_act,
        classifier_pooling=config.classifier_pooling, global_rope_theta=config.rotary_base,
        local_rope_theta=config.local_rotary_base, global_attn_every_n_layers=config.global_attention_every,
        local_attention=config.local_attention_window, pad_token_id=config.pad_token_id, bos_token_id=None,
        eos_token_id=None, cls_token_id=None, sep_token_id=None, attn_implementation=attn_implementation)
    with torch.device(device):
        model = transformers.ModernBertForQuestionAnswering(hf_config)
    missing, unexpected = model.load_state_dict(to_hf_modernbert_names(dict(tensors)), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF peer weights do not line up: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.to(dtype).eval()


def hf_model(engine) -> torch.nn.Module:
    """The Hugging Face peer of an engine: its weights, precision and device."""
    if "qa" not in engine.heads:
        raise ValueError("the engine has no QA head, so there is no BertForQuestionAnswering peer")
    return hf_qa_model(engine.config, engine.tensors(), device=engine.device, dtype=engine.dtype)


def hf_call(model, ids, types, mask=None):
    """``model`` on padded (B, S) ids, token types and attention mask; a family whose config has no
    token types (DistilBERT, ModernBERT) is not given any."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "type_vocab_size", None) is None:
        return model(input_ids=ids, attention_mask=mask)
    return model(input_ids=ids, token_type_ids=types, attention_mask=mask)


def graphed(fn: Callable[[], object], device: torch.device) -> tuple[Callable[[], None], Any]:
    """Capture ``fn`` (which reads static tensors) in one CUDA graph; returns (replay, objects to keep)."""
    with torch.inference_mode():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
    return graph.replay, (graph, out)


def peer_runner(name: str, model: torch.nn.Module, ids: torch.Tensor, types: torch.Tensor,
                mask: torch.Tensor | None = None, *, compiled: dict | None = None) -> tuple[Callable[[], object], Any]:
    """A no-argument callable running peer ``name`` on these static inputs, plus objects to keep alive.

    ``mask`` defaults to all ones, as a server passes it: without a mask, transformers 5 captured in
    a CUDA graph falls back to fp32 math attention (3.67 ms instead of 1.90 at BERT-Large b1 s384
    on an H100, ``benchmarks/results/h100/alternatives.json``), which would flatter bertrt.
    """
    device = ids.device
    if mask is None:
        mask = torch.ones_like(ids)
    if name == "hf":
        return (lambda: hf_call(model, ids, types, mask)), None
    if name == "hf-graph":
        if device.type != "cuda":
            raise RuntimeError("hf-graph needs a CUDA device")
        return graphed(lambda: hf_call(model, ids, types, mask), device)
    if name == "compile":
        if compiled is None:
            compiled = {}
        if "model" not in compiled:
            compiled["model"] = torch.compile(model, mode="max-autotune", dynamic=False)
        cmodel = compiled["model"]
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

        def run():
            if mark is not None:
                mark()  # compiled graphs reuse their outputs' memory from one call to the next
            return hf_call(cmodel, ids, types, mask)

        return run, compiled
    raise ValueError(f"unknown peer {name!r} (choose from {', '.join(PEERS)})")
