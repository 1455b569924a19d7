"""Every BERT family against Hugging Face transformers in fp32: hidden states and each head's logits.

Each test builds a tiny random model with odd sizes from a ``transformers`` config, saves it as a
Hugging Face folder, loads it through ``load_checkpoint`` and runs it on the reference's packed
tokens; transformers runs the same sequences padded.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bertrt.config import BertConfig, ConfigError, check_engine_support
from bertrt.packed import pack_sequences, pad_sequences
from bertrt.reference import ReferenceBert
from bertrt.weights import CheckpointError, load_checkpoint

transformers = pytest.importorskip("transformers")

TOL = 1e-4
LENGTHS = (11, 29, 3, 17)
# Odd sizes: 3 heads of 19, an FFN of 73, 97 tokens, 2 layers.
SHAPE = dict(vocab_size=97, hidden_size=57, num_hidden_layers=2, num_attention_heads=3, intermediate_size=73,
             max_position_embeddings=67)


def _family_config(family: str, **extra):
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=97, dim=57, n_layers=2, n_heads=3, hidden_dim=73,
                                             max_position_embeddings=67, **extra)
    cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
           "xlm-roberta": transformers.XLMRobertaConfig, "electra": transformers.ElectraConfig,
           "megatron-bert": transformers.MegatronBertConfig}[family]
    if family in ("roberta", "xlm-roberta"):  # positions start at padding_idx + 1
        extra = dict(max_position_embeddings=67 + 2, type_vocab_size=1, **extra)
    return cls(**{**SHAPE, **extra})


FAMILIES = {
    # family: (prefix of the HF class names, config extras)
    "roberta": ("Roberta", {}),
    "xlm-roberta": ("XLMRoberta", {"hidden_act": "gelu_new"}),
    "distilbert": ("DistilBert", {}),
    "electra": ("Electra", {"embedding_size": 23}),
    "megatron-bert": ("MegatronBert", {}),
    "bert": ("Bert", {"hidden_act": "relu"}),
}


def random_hf(family: str, task: str, seed: int = 0, num_labels: int = 3):
    """A transformers model of ``family`` with every parameter random (HF leaves biases 0, norms 1)."""
    prefix, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = _family_config(family, num_labels=num_labels, **extra)
    model = getattr(transformers, f"{prefix}{task}")(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name.lower() or name.endswith(".ln.weight") or ".ln." in name:
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                param.copy_(0.08 * noise)
    return model


def sequences(family: str, seed: int = 0):
    """Ragged id lists avoiding the pad id, with two token types where the family has them."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, SHAPE["vocab_size"], (n,), generator=gen).tolist() for n in LENGTHS]
    if family in ("bert", "electra", "megatron-bert"):
        types = [[0] * (n // 2) + [1] * (n - n // 2) for n in LENGTHS]
    else:
        types = [[0] * n for n in LENGTHS]
    return ids, types


def hf_inputs(family, ids, types):
    input_ids, mask, token_types = pad_sequences(ids, types)
    if family in ("roberta", "xlm-roberta"):
        input_ids = input_ids.masked_fill(mask == 0, 1)  # padding_idx, so positions are HF's own
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if family != "distilbert":
        inputs["token_type_ids"] = token_types
    return inputs, mask.bool()


def load(model, tmp_path):
    model.save_pretrained(str(tmp_path / "hf"))
    return load_checkpoint(tmp_path / "hf")


def close(ours, theirs):
    assert theirs.abs().max() > 0.1  # outputs that can show a difference
    err = (ours - theirs).abs().max().item()
    assert err <= TOL, err


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hidden_states_and_sequence_logits(family, tmp_path):
    model = random_hf(family, "ForSequenceClassification")
    ckpt = load(model, tmp_path)
    assert ckpt.config.model_type == family and ckpt.heads == ("classifier",) and ckpt.has_pooler
    ids, types = sequences(family)
    batch = pack_sequences(ids, types)
    inputs, mask = hf_inputs(family, ids, types)
    ref = ReferenceBert.from_checkpoint(ckpt)
    with torch.no_grad():
        hidden = ref.encode(batch)
        out = model(**inputs, output_hidden_states=True)
        logits = ref.classify(batch)
    close(hidden, out.hidden_states[-1][mask])
    close(logits, out.logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_token_classification_logits(family, tmp_path):
    model = random_hf(family, "ForTokenClassification", seed=1, num_labels=5)
    ckpt = load(model, tmp_path)
    # The per-token classifier is its own head, never mistaken for a sequence classifier.
    assert ckpt.heads == ("token_classifier",)
    ids, types = sequences(family, seed=1)
    inputs, mask = hf_inputs(family, ids, types)
    with torch.no_grad():
        ours = ReferenceBert.from_checkpoint(ckpt).token_logits(pack_sequences(ids, types))
        theirs = model(**inputs).logits[mask]
    close(ours, theirs)


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "megatron-bert"])
def test_question_answering_logits(family, tmp_path):
    model = random_hf(family, "ForQuestionAnswering", seed=2, num_labels=2)
    ckpt = load(model, tmp_path)
    ids, types = sequences(family, seed=2)
    inputs, mask = hf_inputs(family, ids, types)
    with torch.no_grad():
        ours = ReferenceBert.from_checkpoint(ckpt).qa_logits(pack_sequences(ids, types))
        out = model(**inputs)
    close(ours, torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1))


def test_family_fields_are_read_from_the_config(tmp_path):
    cfg = load(random_hf("roberta", "ForSequenceClassification"), tmp_path / "r").config
    assert (cfg.position_offset, cfg.type_vocab_size, cfg.max_sequence_length) == (2, 1, 67)
    cfg = load(random_hf("distilbert", "ForSequenceClassification"), tmp_path / "d").config
    assert (cfg.type_vocab_size, cfg.pooler_act, cfg.hidden_size, cfg.intermediate_size) == (0, "relu", 57, 73)
    cfg = load(random_hf("electra", "ForSequenceClassification"), tmp_path / "e").config
    assert (cfg.embedding_size, cfg.embedding_width, cfg.pooler_act) == (23, 23, "gelu")
    cfg = load(random_hf("megatron-bert", "ForSequenceClassification"), tmp_path / "m").config
    assert cfg.pre_layer_norm and not cfg.embedding_layer_norm


def test_the_engine_refuses_other_families_by_name(tmp_path):
    check_engine_support(BertConfig())  # post-LN BERT with exact GELU: the engine's own
    relu_bert = load(random_hf("bert", "ForSequenceClassification"), tmp_path / "b").config
    with pytest.raises(ConfigError, match="hidden_act 'relu'"):
        check_engine_support(relu_bert)
    modernbert = load(random_modernbert("ForSequenceClassification"), tmp_path / "modernbert").config
    check_engine_support(modernbert)
    post_ln = dataclasses.replace(modernbert, pre_layer_norm=False)
    with pytest.raises(ConfigError, match="rotary positions, GeGLU or bias-free layers in a post-LayerNorm.*reference"):
        check_engine_support(post_ln)


def test_fp8_and_int8_engines_refuse_pre_ln_families(tmp_path):
    from bertrt.engine import build
    from bertrt.quant.recipe import QuantError

    ckpt = load(random_hf("megatron-bert", "ForQuestionAnswering", num_labels=2), tmp_path)
    with pytest.raises(QuantError, match="post-LayerNorm families"):
        build(ckpt, tmp_path / "e", precision="int8", device="cpu")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "megatron-bert"])
@pytest.mark.parametrize("head", ["ForQuestionAnswering", "ForSequenceClassification"])
def test_the_engine_runs_the_other_families_as_hugging_face_does(family, head, tmp_path):
    from bertrt.engine import Engine, build

    model = random_hf(family, head, seed=3, num_labels=2 if head == "ForQuestionAnswering" else 3)
    ckpt = load(model, tmp_path)
    engine = Engine.load(build(ckpt, tmp_path / "engine", precision="fp32", device="cpu"), device="cpu")
    reserved = ckpt.config.position_offset  # RoBERTa's positions before padding_idx + 1
    assert engine.max_seq_length == min(384, ckpt.config.max_position_embeddings - reserved)
    ids, types = sequences(family, seed=3)
    batch = pack_sequences(ids, types)
    inputs, mask = hf_inputs(family, ids, types)
    with torch.no_grad():
        out = model(**inputs)
        if head == "ForQuestionAnswering":
            close(engine.qa_logits(batch), torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1))
        else:
            close(engine.classify(batch), out.logits)


def test_electra_discriminator_loads_without_its_pretraining_head(tmp_path):
    torch.manual_seed(0)
    model = transformers.ElectraForPreTraining(_family_config("electra", embedding_size=23)).eval()
    ckpt = load(model, tmp_path)
    assert ckpt.heads == () and not ckpt.has_pooler
    ids, types = sequences("electra", seed=3)
    inputs, mask = hf_inputs("electra", ids, types)
    with torch.no_grad():
        hidden = ReferenceBert.from_checkpoint(ckpt).encode(pack_sequences(ids, types))
        theirs = model.electra(**inputs).last_hidden_state[mask]
    assert (hidden - theirs).abs().max().item() <= TOL


def test_unknown_family_is_named(tmp_path):
    model = random_hf("roberta", "Model")
    model.save_pretrained(str(tmp_path / "hf"))
    cfg = (tmp_path / "hf" / "config.json")
    cfg.write_text(cfg.read_text().replace('"roberta"', '"deberta-v2"'))
    with pytest.raises(ConfigError, match="deberta-v2"):
        load_checkpoint(tmp_path / "hf")


def test_a_missing_family_tensor_is_named(tmp_path):
    model = random_hf("electra", "Model")
    state = {k: v for k, v in model.state_dict().items() if "embeddings_project" not in k}
    model.save_pretrained(str(tmp_path / "hf"), state_dict=state)
    with pytest.raises(CheckpointError, match="embeddings.project.weight"):
        load_checkpoint(tmp_path / "hf")


# --- ModernBERT: rotary positions (two bases), GeGLU, no biases, global + sliding-window layers ---------

MODERNBERT = dict(vocab_size=97, hidden_size=54, num_hidden_layers=4, num_attention_heads=3, intermediate_size=37,
                  max_position_embeddings=512, local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  cls_token_id=1, sep_token_id=2)


def random_modernbert(task: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(**{**MODERNBERT, **extra})
    model = getattr(transformers, f"ModernBert{task}")(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.1 * noise)
    return model


def modernbert_inputs(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, 97, (n,), generator=gen).tolist() for n in lengths]
    input_ids, mask, _ = pad_sequences(ids, [[0] * n for n in lengths])
    return ids, {"input_ids": input_ids, "attention_mask": mask}, mask.bool()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_hidden_states_and_sequence_logits(pooling, tmp_path):
    model = random_modernbert("ForSequenceClassification", classifier_pooling=pooling, num_labels=3)
    ckpt = load(model, tmp_path)
    cfg = ckpt.config
    assert (cfg.rotary_base, cfg.local_rotary_base, cfg.local_attention_window, cfg.global_attention_every) == (
        160000.0, 10000.0, 8, 3)
    assert cfg.gated_ffn and not cfg.linear_bias and not cfg.norm_bias and "layers.0.attn.ln.weight" not in ckpt.tensors
    ids, inputs, mask = modernbert_inputs((29, 5, 17, 11))  # longer than the 8-token window
    batch = pack_sequences(ids)
    ref = ReferenceBert.from_checkpoint(ckpt)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        hidden = ref.encode(batch)
        logits = ref.classify(batch)
        theirs_hidden = model.model(**inputs).last_hidden_state[mask]
    close(hidden, theirs_hidden)
    close(logits, out.logits)


def test_modernbert_window_matters_and_spans_query_blocks(tmp_path):
    model = random_modernbert("Model", seed=3)
    ckpt = load(model, tmp_path)
    ids, inputs, mask = modernbert_inputs((300, 40), seed=3)  # 300 tokens: two query blocks of 256
    ref = ReferenceBert.from_checkpoint(ckpt)
    with torch.no_grad():
        ours = ref.encode(pack_sequences(ids))
        theirs = model(**inputs).last_hidden_state[mask]
        close(ours, theirs)
        # Every layer global instead: a different model, so the window is really applied.
        wide = ReferenceBert.from_checkpoint(dataclasses.replace(
            ckpt, config=dataclasses.replace(ckpt.config, global_attention_every=1)))
        assert (wide.encode(pack_sequences(ids)) - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("task", ["ForTokenClassification", "ForQuestionAnswering"])
def test_modernbert_token_heads(task, tmp_path):
    model = random_modernbert(task, seed=1, num_labels=2 if task == "ForQuestionAnswering" else 5)
    ckpt = load(model, tmp_path)
    ids, inputs, mask = modernbert_inputs((13, 21, 4), seed=1)
    ref = ReferenceBert.from_checkpoint(ckpt)
    with torch.no_grad():
        out = model(**inputs)
        if task == "ForQuestionAnswering":
            assert ckpt.heads == ("qa",)
            ours = ref.qa_logits(pack_sequences(ids))
            theirs = torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1)
        else:
            assert ckpt.heads == ("token_classifier",)
            ours, theirs = ref.token_logits(pack_sequences(ids)), out.logits[mask]
    close(ours, theirs)


def test_modernbert_masked_lm_loads_as_an_encoder(tmp_path):
    model = random_modernbert("ForMaskedLM", seed=2)
    ckpt = load(model, tmp_path)
    assert ckpt.heads == () and not ckpt.has_pooler
    ids, inputs, mask = modernbert_inputs((9, 14), seed=2)
    with torch.no_grad():
        close(ReferenceBert.from_checkpoint(ckpt).encode(pack_sequences(ids)),
              model.model(**inputs).last_hidden_state[mask])


def test_a_saved_bert_keeps_its_activation_and_other_families_are_not_written_as_bert(tmp_path):
    from bertrt.weights import save_hf_folder

    ckpt = load(random_hf("bert", "ForSequenceClassification"), tmp_path / "relu")
    again = load_checkpoint(save_hf_folder(ckpt, tmp_path / "saved"))
    assert again.config.hidden_act == "relu" and again.config == ckpt.config
    with pytest.raises(CheckpointError, match="writing megatron-bert weights is not supported"):
        save_hf_folder(load(random_hf("megatron-bert", "ForSequenceClassification"), tmp_path / "m"), tmp_path / "x")


def test_a_quantised_electra_engine_rounds_after_its_embedding_projection(tmp_path):
    """ELECTRA's first GEMM reads the projected embeddings: their e4m3 copy is rounded after the
    projection, so the fp8 engine stays near the fp32 one (a copy of the narrower LayerNorm output
    would not even have the right width)."""
    from bertrt.engine import Engine, build
    from bertrt.quant.calibration import calibrate

    model = random_hf("electra", "ForQuestionAnswering", seed=4, num_labels=2)
    ckpt = load(model, tmp_path)
    assert ckpt.config.embedding_size != ckpt.config.hidden_size
    ids, types = sequences("electra", seed=4)
    batch = pack_sequences(ids, types)
    calibration = calibrate(ckpt, [batch], method="max", fmt="fp8", progress=False)
    fp8 = Engine.load(build(ckpt, tmp_path / "fp8", precision="fp8", device="cpu", calibration=calibration),
                      device="cpu")
    fp32 = Engine.load(build(ckpt, tmp_path / "fp32", precision="fp32", device="cpu"), device="cpu")
    got, want = fp8.qa_logits(batch), fp32.qa_logits(batch)
    assert 0 < float((got - want).abs().max()) < 0.1 * float(want.abs().max())


# --- ModernBERT on the engine ------------------------------------------------------------------------

MODERNBERT_TASKS = [("ForSequenceClassification", "cls"), ("ForSequenceClassification", "mean"),
                    ("ForQuestionAnswering", "cls"), ("ForTokenClassification", "cls"), ("Model", "cls")]


def modernbert_outputs(engine_or_ref, model, task, ids, inputs, mask):
    """(ours, theirs): the task's logits (last hidden states for the bare encoder), ours on packed
    tokens and Hugging Face's on the padded batch, real tokens only."""
    batch = pack_sequences(ids)
    out = model(**inputs)
    if task == "ForSequenceClassification":
        return engine_or_ref.classify(batch), out.logits
    if task == "ForQuestionAnswering":
        return engine_or_ref.qa_logits(batch), torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1)
    if task == "ForTokenClassification":
        return engine_or_ref.token_logits(batch), out.logits[mask]
    return engine_or_ref.encode(batch), out.last_hidden_state[mask]


@pytest.mark.parametrize("task, pooling", MODERNBERT_TASKS, ids=["cls", "mean", "qa", "tokens", "encoder"])
def test_the_engine_runs_modernbert_as_hugging_face_does(task, pooling, tmp_path):
    from bertrt.engine import Engine, build

    labels = {"ForQuestionAnswering": 2, "ForTokenClassification": 5}.get(task, 3)
    model = random_modernbert(task, seed=5, classifier_pooling=pooling, num_labels=labels)
    ckpt = load(model, tmp_path)
    engine = Engine.load(build(ckpt, tmp_path / "engine", precision="fp32", device="cpu"), device="cpu")
    assert engine.heads == ckpt.heads
    # 37 tokens against an 8-token window (every third layer global), mixed lengths packed.
    ids, inputs, mask = modernbert_inputs((37, 5, 17, 1, 11), seed=5)
    with torch.no_grad():
        close(*modernbert_outputs(engine, model, task, ids, inputs, mask))


def test_modernbert_engine_kernels_under_the_interpreter(interpret, tmp_path):
    """The engine's Triton path (rotary on the fused QKV, the windowed and global attention kernels,
    the gated activation, the LayerNorm and QA-head kernels) in fp32 under Triton's interpreter."""
    from bertrt.engine import Engine

    model = random_modernbert("ForQuestionAnswering", seed=6, num_labels=2, num_hidden_layers=3,
                              hidden_size=48, num_attention_heads=2)
    ckpt = load(model, tmp_path)
    engine = Engine.from_checkpoint(ckpt, precision="fp32", device="cpu", max_seq_length=128)
    ids, inputs, mask = modernbert_inputs((70, 1, 37, 9), seed=6)  # 70 tokens: two 64-query blocks
    with torch.no_grad():
        close(*modernbert_outputs(engine, model, "ForQuestionAnswering", ids, inputs, mask))


def test_modernbert_engine_takes_long_sequences(tmp_path):
    """A build for ModernBERT's 8,192 positions: max_tokens stays bounded (batches are split into
    passes of whole sequences), and a 600-token sequence (75 windows of 8) runs as Hugging Face's."""
    from bertrt.engine import Engine, build
    from bertrt.engine.build import DEFAULT_MAX_TOKENS

    model = random_modernbert("Model", seed=7, max_position_embeddings=8192, num_hidden_layers=2)
    ckpt = load(model, tmp_path)
    engine = Engine.load(build(ckpt, tmp_path / "engine", precision="fp32", device="cpu", max_seq_length=8192),
                         device="cpu")
    assert (engine.max_seq_length, engine.max_tokens) == (8192, DEFAULT_MAX_TOKENS)
    ids, inputs, mask = modernbert_inputs((600, 23), seed=7)
    with torch.no_grad():
        close(*modernbert_outputs(engine, model, "Model", ids, inputs, mask))


def test_modernbert_graph_staging_gives_the_eager_answer(tmp_path):
    """The CUDA-graph padding scheme (a padding sequence at position 0, empty slots) leaves real tokens
    as they are in windowed layers too (staged on the CPU, without capturing)."""
    from bertrt.engine import Engine
    from bertrt.engine.graphs import GraphRunner

    ckpt = load(random_modernbert("ForQuestionAnswering", seed=8, num_labels=2), tmp_path)
    engine = Engine.from_checkpoint(ckpt, device="cpu", max_batch=4, max_tokens=256, max_seq_length=128)
    runner = GraphRunner(engine._qa, device=engine.device, max_tokens=256, max_batch=4, max_seq_length=128,
                         use_graphs=False)
    batch = pack_sequences(modernbert_inputs((37, 64, 1, 3), seed=8)[0])  # 105 tokens -> bucket 128
    torch.testing.assert_close(runner.run(batch, from_host=False), engine.qa_logits(batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runner.run(batch), engine.qa_logits(batch), atol=1e-5, rtol=1e-5)


def test_the_hugging_face_peer_of_a_modernbert_engine(tmp_path):
    """`bertrt perf --peers hf` on a ModernBERT engine times ModernBertForQuestionAnswering holding the
    engine's weights: the same logits."""
    from bertrt.engine import Engine
    from bertrt.harness.peers import hf_call, hf_model

    ckpt = load(random_modernbert("ForQuestionAnswering", seed=10, num_labels=2), tmp_path)
    engine = Engine.from_checkpoint(ckpt, device="cpu")
    peer = hf_model(engine)
    ids, inputs, mask = modernbert_inputs((37, 5, 17), seed=10)
    with torch.no_grad():
        out = hf_call(peer, inputs["input_ids"], torch.zeros_like(inputs["input_ids"]), inputs["attention_mask"])
    close(engine.qa_logits(pack_sequences(ids)), torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1))


def test_fp8_and_int8_engines_refuse_modernbert_by_name(tmp_path):
    from bertrt.engine import build
    from bertrt.quant.recipe import QuantError

    ckpt = load(random_modernbert("ForSequenceClassification"), tmp_path)
    for precision in ("fp8", "int8"):
        with pytest.raises(QuantError, match="post-LayerNorm families, not modernbert"):
            build(ckpt, tmp_path / "e", precision=precision, device="cpu")
    assert not (tmp_path / "e").exists()


GPU_MODERNBERT = dict(vocab_size=500, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                      intermediate_size=256, max_position_embeddings=8192, local_attention=128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("lengths", [(1000, 130, 1, 257, 64, 700), (8192, 77)], ids=["mixed", "8192"])
def test_modernbert_fp16_engine_on_gpu(lengths, tmp_path):
    """The fp16 engine (Triton kernels, CUDA graphs, build-time attention timing) against Hugging Face
    fp32: within twice Hugging Face fp16's own error, plus a small slack, for hidden states and
    sequence logits; sequences far longer than the 128-token window, and one of 8,192 tokens."""
    from bertrt.engine import Engine, build

    model = random_modernbert("ForSequenceClassification", seed=9, num_labels=3, **GPU_MODERNBERT)
    ckpt = load(model, tmp_path)
    model.cuda()
    engine = Engine.load(build(ckpt, tmp_path / "engine", precision="fp16", max_seq_length=8192, max_batch=8),
                         device="cuda")
    assert engine.graphs and set(engine.spec.gemm_choices) == {"attention"}  # pre-LN: attention alone is timed
    gen = torch.Generator().manual_seed(9)
    ids = [torch.randint(3, GPU_MODERNBERT["vocab_size"], (n,), generator=gen).tolist() for n in lengths]
    input_ids, mask, _ = pad_sequences(ids, [[0] * n for n in lengths])
    inputs = {"input_ids": input_ids.cuda(), "attention_mask": mask.cuda()}
    real = mask.bool().cuda()
    batch = pack_sequences(ids)
    with torch.inference_mode():
        want_hidden, want_logits = model.model(**inputs).last_hidden_state[real], model(**inputs).logits
        half = model.half()
        hf_hidden, hf_logits = half.model(**inputs).last_hidden_state[real], half(**inputs).logits
        hidden = engine.encode(batch)
        logits = engine.classify(batch)
        again = engine.encode(batch)  # a replay of the captured graph
    assert engine.graphs, "the CUDA graph was not captured"
    torch.testing.assert_close(again, hidden, rtol=0, atol=0)
    for ours, theirs, want in ((hidden, hf_hidden, want_hidden), (logits, hf_logits, want_logits)):
        assert torch.isfinite(ours).all()
        err = (ours.double() - want.double()).abs().max().item()
        hf_err = (theirs.double() - want.double()).abs().max().item()
        assert err <= 2 * hf_err + 1e-3, f"engine fp16 error {err:.3g}, Hugging Face fp16's {hf_err:.3g}"


def test_the_standard_modernbert_shape_is_modernbert_base():
    """`bertrt build --random modernbert-base` (speed runs) has the fields ModernBERT-base's config.json gives."""
    from bertrt.config import STANDARD_CONFIGS

    raw = dict(model_type="modernbert", vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
               intermediate_size=1152, max_position_embeddings=8192, global_rope_theta=160000.0,
               local_rope_theta=10000.0, global_attn_every_n_layers=3, local_attention=128, hidden_activation="gelu",
               norm_eps=1e-5, pad_token_id=50283, classifier_activation="gelu", classifier_pooling="mean",
               attention_bias=False, mlp_bias=False, norm_bias=False)
    standard = STANDARD_CONFIGS["modernbert-base"]
    assert dataclasses.replace(BertConfig.from_dict(raw), do_lower_case=False) == standard
    check_engine_support(standard)
