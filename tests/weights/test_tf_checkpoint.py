"""TensorFlow checkpoints read without TensorFlow, checked against one written by real TensorFlow."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch
from loader_helpers import TF_FIXTURE, qa_max_diff

from bertrt.config import ConfigError
from bertrt.weights import CheckpointError, load_checkpoint
from bertrt.weights import tf_checkpoint as tfc


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(TF_FIXTURE / "reference.npz") as data:
        return {k: data[k] for k in data.files}


def copy_fixture(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(TF_FIXTURE, folder)
    return folder


# --- the byte-level pieces ---------------------------------------------------------------

def test_crc32c_known_value():
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_snappy_literal_and_overlapping_copy():
    # 13 bytes: literal "abc", copy (length 9, offset 3) that overlaps its own output, literal "X".
    stream = bytes([13, 0x08]) + b"abc" + bytes([0x15, 0x03, 0x00]) + b"X"
    assert tfc.snappy_decompress(stream) == b"abcabcabcabcX"
    with pytest.raises(ValueError, match="header says"):
        tfc.snappy_decompress(bytes([14]) + stream[1:])


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, prev = bytearray(), b""
    for key, value in entries:
        shared = 0
        while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
            shared += 1
        out += bytes([shared, len(key) - shared, len(value)]) + key[shared:] + value
        prev = key
    return bytes(out) + struct.pack("<II", 0, 1)  # one restart point at 0


def _snappy_literal(data: bytes) -> bytes:
    assert len(data) <= 60
    return bytes([len(data), (len(data) - 1) << 2]) + data


def test_read_table_with_snappy_block_and_shared_key_prefixes():
    entries = [(b"bert/a", b"1"), (b"bert/ab", b"22"), (b"bert/b", b"333")]
    data_block = _snappy_literal(_block(entries))
    body = bytearray(data_block + b"\x01" + struct.pack("<I", _mask(tfc.crc32c(data_block + b"\x01"))))
    index_block = _block([(b"bert/c", bytes([0, len(data_block)]))])
    index_offset = len(body)
    body += index_block + b"\x00" + struct.pack("<I", _mask(tfc.crc32c(index_block + b"\x00")))
    footer = bytes([0, 0, index_offset, len(index_block)]).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    assert tfc.read_table(bytes(body) + footer) == entries


# --- the checkpoint written by TensorFlow -------------------------------------------------------

def test_every_tensor_bit_exact(reference):
    arrays = tfc.read_tf_bundle(TF_FIXTURE / "model.ckpt")
    assert arrays["global_step"].dtype == np.int64 and int(arrays["global_step"]) == 1000
    assert "bert/embeddings/LayerNorm/gamma/adam_m" in arrays
    for name, want in reference.items():
        got = arrays[name]
        if name == "cls/squad/output_bias":  # saved as bfloat16: raw bits come back as uint16
            assert got.dtype == np.uint16
            got = (got.astype(np.uint32) << 16).view(np.float32)
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_skip_does_not_read_skipped_tensors():
    arrays = tfc.read_tf_bundle(TF_FIXTURE / "model.ckpt", skip=tfc.is_ignored)
    assert not any(name.endswith(("adam_m", "adam_v")) or name in ("global_step", "cls/predictions/output_bias")
                   for name in arrays)


@pytest.mark.parametrize("form", ["folder", "prefix", "index"])
def test_canonical_tensors(form, reference):
    path = {"folder": TF_FIXTURE, "prefix": TF_FIXTURE / "model.ckpt",
            "index": TF_FIXTURE / "model.ckpt.index"}[form]
    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (32, 2, 4, 64)
    assert ckpt.heads == ("qa",) and ckpt.has_pooler
    assert ckpt.vocab_file == TF_FIXTURE / "vocab.txt"
    t = ckpt.tensors
    layer1 = "bert/encoder/layer_1/"
    qkv = np.concatenate([reference[f"{layer1}attention/self/{p}/kernel"].T for p in ("query", "key", "value")])
    np.testing.assert_array_equal(t["layers.1.attn.qkv.weight"].numpy(), qkv)
    np.testing.assert_array_equal(t["layers.1.ffn.in.weight"].numpy(),
                                  reference[layer1 + "intermediate/dense/kernel"].T)
    np.testing.assert_array_equal(t["layers.1.ffn.ln.weight"].numpy(), reference[layer1 + "output/LayerNorm/gamma"])
    np.testing.assert_array_equal(t["embeddings.token_type"].numpy(),
                                  reference["bert/embeddings/token_type_embeddings"])
    # The SQuAD head is (2, H) in TensorFlow already: not transposed.
    np.testing.assert_array_equal(t["heads.qa.weight"].numpy(), reference["cls/squad/output_weights"])
    assert t["pooler.weight"].dtype == torch.float16
    assert t["heads.qa.bias"].dtype == torch.bfloat16
    np.testing.assert_array_equal(t["heads.qa.bias"].float().numpy(), reference["cls/squad/output_bias"])


def test_matches_hf_question_answering(reference):
    """ReferenceBert on the TF checkpoint == transformers' BertForQuestionAnswering built from the npz."""
    import transformers

    from bertrt.weights.schema import to_hf_names

    ckpt = load_checkpoint(TF_FIXTURE)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    hf = transformers.BertForQuestionAnswering(config).eval()
    # Build the HF state from the npz (not from our loader), through the TF -> HF name map written out here.
    state = {}
    for name, value in reference.items():
        if name.startswith("cls/squad/"):
            state["qa_outputs." + {"output_weights": "weight", "output_bias": "bias"}[name.split("/")[-1]]] = value
            continue
        hf_name = name.replace("/", ".").replace("layer_", "layer.").replace("gamma", "weight").replace("beta", "bias")
        if hf_name.endswith("_embeddings"):
            hf_name += ".weight"
        if hf_name.endswith(".kernel"):
            hf_name, value = hf_name[:-len("kernel")] + "weight", value.T
        state[hf_name] = value
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()
             if not k.startswith("bert.pooler")}  # the QA model has no pooler
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "position_ids" not in m]
    assert set(to_hf_names(ckpt.tensors, ckpt.config)) >= set(state)
    assert qa_max_diff(hf, ckpt) <= 1e-5


def test_classifier_head_names():
    h = 8
    arrays = {"output_weights": np.ones((3, h), np.float32), "output_bias": np.zeros(3, np.float32),
              "bert/pooler/dense/kernel": np.arange(h * h, dtype=np.float32).reshape(h, h)}
    state = tfc.tf_to_hf_names(arrays, source="x")
    assert state["classifier.weight"].shape == (3, h)
    assert torch.equal(state["bert.pooler.dense.weight"], torch.from_numpy(arrays["bert/pooler/dense/kernel"]).t())


def test_unknown_variable_is_named():
    with pytest.raises(CheckpointError, match="mystery/thing"):
        tfc.tf_to_hf_names({"mystery/thing": np.zeros(2, np.float32)}, source="x")


# --- damaged checkpoints ---------------------------------------------------------------------------

def test_truncated_data_shard(tmp_path):
    folder = copy_fixture(tmp_path)
    shard = folder / "model.ckpt.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(folder)


def test_missing_data_shard(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="data shard missing"):
        load_checkpoint(folder)


def test_corrupt_index_fails_crc(tmp_path):
    folder = copy_fixture(tmp_path)
    index = folder / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[100] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="crc32c"):
        load_checkpoint(folder)


def test_truncated_index(tmp_path):
    folder = copy_fixture(tmp_path)
    index = folder / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="magic"):
        load_checkpoint(folder)


def test_missing_bert_config(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "bert_config.json").unlink()
    with pytest.raises(CheckpointError, match="bert_config.json"):
        load_checkpoint(folder)


def test_config_with_wrong_shape(tmp_path):
    folder = copy_fixture(tmp_path)
    config = folder / "bert_config.json"
    config.write_text(config.read_text().replace('"intermediate_size": 64', '"intermediate_size": 128'))
    with pytest.raises(CheckpointError, match=r"layers.0.ffn.in.weight has shape \(64, 32\), expected \(128, 32\)"):
        load_checkpoint(folder)


def test_config_not_bert(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "bert_config.json").write_text('{"model_type": "deberta-v2", "hidden_size": 32}')
    with pytest.raises(ConfigError, match="deberta-v2"):
        load_checkpoint(folder)


def test_several_checkpoints_without_pointer(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "checkpoint").unlink()
    for suffix in ("index", "data-00000-of-00001"):
        shutil.copy(folder / f"model.ckpt.{suffix}", folder / f"model.ckpt-2.{suffix}")
    with pytest.raises(CheckpointError, match="several TensorFlow checkpoints"):
        load_checkpoint(folder)
    # The 'checkpoint' pointer file, or naming one prefix, settles it.
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-2"\n')
    assert load_checkpoint(folder).source.endswith("model.ckpt-2")
    assert load_checkpoint(folder / "model.ckpt").source.endswith("model.ckpt")
