"""TensorFlow checkpoints as Google and NGC ship BERT, read without TensorFlow.

A checkpoint is ``PREFIX.index`` + ``PREFIX.data-0000K-of-0000N`` (+ ``bert_config.json`` and
``vocab.txt`` beside them). The ``.index`` file is a LevelDB-format table (an SSTable) mapping each
variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c) that says where
its raw little-endian bytes lie in a data shard; the entry with the empty key is the
``BundleHeaderProto``. Both protobufs are decoded here by hand: only a few varint fields matter.

Table blocks may be uncompressed (what TensorFlow writes) or snappy-compressed (decoded here too).
Block checksums of the index are verified; tensor bytes are bounds-checked against the shard size
but their crc32c is not recomputed (a pure-Python crc over a 1.3 GB shard would take minutes).
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import numpy as np
import torch

from bertrt.config import BertConfig
from bertrt.weights.schema import Checkpoint, CheckpointError, from_hf_names

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # two varint block handles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_LEN = 5  # compression type (1 byte) + masked crc32c (4 bytes)

# tensorflow/core/framework/types.proto values -> numpy dtype (bfloat16 is read as its raw bits).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 14: np.uint16, 19: np.float16}
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 7: "string", 9: "int64", 10: "bool",
                14: "bfloat16", 19: "float16"}
_FLOAT_DTYPES = (1, 2, 14, 19)


# --- bytes: varints, crc32c, snappy --------------------------------------------------

def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as LevelDB and TensorFlow checksum blocks and tensors."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def snappy_decompress(data: bytes) -> bytes:
    """Decode a raw snappy stream (the block format LevelDB tables use)."""
    size, pos = _varint(data, 0)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > len(data):
                raise ValueError("snappy literal runs past the end of the block")
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            length, offset = 1 + (tag >> 2), int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = 1 + (tag >> 2), int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise ValueError("snappy copy points before the start of the output")
        for _ in range(length):  # byte by byte: a copy may overlap what it is producing
            out.append(out[-offset])
    if len(out) != size:
        raise ValueError(f"snappy block decodes to {len(out)} bytes, header says {size}")
    return bytes(out)


# --- the table (SSTable) ---------------------------------------------------------------

def _read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size + _BLOCK_TRAILER_LEN
    if end > len(data):
        raise ValueError(f"{what} block [{offset}, {end}) lies past the end of the file ({len(data)} bytes)")
    block, kind = data[offset:offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if crc32c(data[offset:offset + size + 1]) != _unmask_crc(stored):
        raise ValueError(f"{what} block at offset {offset} fails its crc32c check (corrupt file)")
    if kind == 0:
        return block
    if kind == 1:
        return snappy_decompress(block)
    raise ValueError(f"{what} block uses compression type {kind}; only none and snappy are supported")


def _block_entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one block: prefix-compressed keys, then restart offsets, then their count."""
    if len(block) < 4:
        raise ValueError(f"{what} block is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError(f"{what} block claims {num_restarts} restart points, more than fit")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise ValueError(f"{what} block has an entry that does not fit")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table, in key order."""
    if len(data) < _FOOTER_LEN:
        raise ValueError(f"file is {len(data)} bytes, shorter than a table footer")
    footer = data[-_FOOTER_LEN:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise ValueError("no table magic number at the end (not a checkpoint index, or truncated)")
    _, pos = _varint(footer, 0)  # metaindex handle: the bundle has no meta blocks we need
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = []
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, "index"), "index"):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        entries += _block_entries(_read_block(data, offset, size, "data"), "data")
    return entries


# --- the protobufs -----------------------------------------------------------------------

def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("protobuf field runs past the end of its message")
        fields.append((number, value))
    return fields


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies: ``size`` bytes at ``offset`` of data shard ``shard_id``."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool

    @classmethod
    def parse(cls, buf: bytes) -> "BundleEntry":
        dtype, shape, shard, offset, size, crc, sliced = 0, [], 0, 0, 0, 0, False
        for number, value in _proto_fields(buf):
            if number == 1:
                dtype = value
            elif number == 2:  # TensorShapeProto: repeated Dim (field 2) {size: field 1}
                for dim_number, dim in _proto_fields(value):
                    if dim_number == 2:
                        shape.append(dict(_proto_fields(dim)).get(1, 0))
            elif number == 3:
                shard = value
            elif number == 4:
                offset = value
            elif number == 5:
                size = value
            elif number == 6:
                crc = value
            elif number == 7:
                sliced = True
        return cls(dtype, tuple(shape), shard, offset, size, crc, sliced)


# --- locating and reading a checkpoint ---------------------------------------------------

_CKPT_STATE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.M)


def _find_prefix(path: Path) -> Path | None:
    """The ``PREFIX`` of ``PREFIX.index`` for a folder, a prefix path or an ``.index`` path."""
    if path.suffix == ".index" and path.is_file():
        return path.with_suffix("")
    if Path(f"{path}.index").is_file():
        return path
    if not path.is_dir():
        return None
    state = path / "checkpoint"
    if state.is_file():  # TensorFlow's pointer to the latest of several saved steps
        match = _CKPT_STATE.search(state.read_text(encoding="utf-8", errors="replace"))
        if match:
            named = Path(match.group(1))
            for candidate in (named, path / named, path / named.name):
                if Path(f"{candidate}.index").is_file():
                    return candidate
    indexes = sorted(path.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes[:4])
        raise CheckpointError(f"{path}: several TensorFlow checkpoints ({names}); pass one "
                              "PREFIX.index path, or add a 'checkpoint' file naming the one to use")
    return None


def is_tf_checkpoint(path: str | Path) -> bool:
    """True for a folder holding a ``*.index`` checkpoint, a ``model.ckpt`` prefix or its ``.index``."""
    try:
        return _find_prefix(Path(path)) is not None
    except CheckpointError:
        return True  # it is one; loading will say which to pick


def read_tf_bundle(prefix: str | Path, *, skip=lambda name: False) -> dict[str, np.ndarray]:
    """Read every tensor of a TensorFlow checkpoint ``prefix`` (without TensorFlow).

    Args:
        prefix: the path without ``.index`` (e.g. ``.../model.ckpt-7988``).
        skip: name -> bool; skipped tensors are not read (optimizer slots are large).
    Returns:
        name -> array in the checkpoint's dtype and shape; bfloat16 comes back as uint16 bits.
    Raises:
        CheckpointError: unreadable index, missing or truncated data shard, sliced variables.
    """
    prefix = Path(prefix)
    index = Path(f"{prefix}.index")
    try:
        table = read_table(index.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index}: cannot read the checkpoint index ({exc})") from exc
    num_shards, entries = 1, {}
    try:
        for key, value in table:
            if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2: 0 little, 1 big)
                header = dict(_proto_fields(value))
                num_shards = header.get(1, 1)
                if header.get(2, 0) != 0:
                    raise CheckpointError(f"{index}: big-endian checkpoints are not supported")
            else:
                entries[key.decode("utf-8")] = BundleEntry.parse(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: corrupt index entry ({exc})") from exc

    out: dict[str, np.ndarray] = {}
    shards: dict[int, object] = {}
    try:
        for name, entry in entries.items():
            if skip(name):
                continue
            if entry.sliced:
                raise CheckpointError(f"{index}: {name} is saved as partitioned slices, which bertrt "
                                      "does not read; re-save the checkpoint without partitioning")
            dtype = _DTYPES.get(entry.dtype)
            if dtype is None:
                raise CheckpointError(f"{index}: {name} has dtype "
                                      f"{_DTYPE_NAMES.get(entry.dtype, entry.dtype)}, which bertrt cannot read")
            count = int(np.prod(entry.shape, dtype=np.int64))
            if count * np.dtype(dtype).itemsize != entry.size:
                raise CheckpointError(f"{index}: {name} has shape {entry.shape} but {entry.size} bytes")
            if entry.shard_id >= num_shards:
                raise CheckpointError(f"{index}: {name} is in shard {entry.shard_id} of {num_shards}")
            if entry.shard_id not in shards:
                shard = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
                if not shard.is_file():
                    raise CheckpointError(f"{shard}: data shard missing")
                shards[entry.shard_id] = (shard, shard.open("rb"), shard.stat().st_size)
            shard, handle, shard_size = shards[entry.shard_id]
            if entry.offset + entry.size > shard_size:
                raise CheckpointError(f"{shard}: truncated ({shard_size} bytes) - {name} needs bytes "
                                      f"[{entry.offset}, {entry.offset + entry.size})")
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
            out[name] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(entry.shape).copy()
    finally:
        for _, handle, _ in shards.values():
            handle.close()
    return out


# --- Google/NGC names -> canonical ----------------------------------------------------------

# Variables of training, pre-training heads and loss scaling that inference never uses.
_IGNORED_SUFFIXES = ("/adam_m", "/adam_v", "/Adam", "/Adam_1", "/Momentum", "/ExponentialMovingAverage")
_IGNORED_PREFIXES = ("cls/predictions/", "cls/seq_relationship/")
_IGNORED_NAMES = {"global_step", "beta1_power", "beta2_power", "loss_scale", "current_loss_scale",
                  "good_steps"}
_TF_HEADS = {
    "cls/squad/output_weights": "qa_outputs.weight", "cls/squad/output_bias": "qa_outputs.bias",
    "output_weights": "classifier.weight", "output_bias": "classifier.bias",
}


def is_ignored(name: str) -> bool:
    """True for optimizer slots, pre-training heads and counters: tensors inference never reads."""
    return (name in _IGNORED_NAMES or name.endswith(_IGNORED_SUFFIXES) or name.startswith(_IGNORED_PREFIXES)
            or "LAMB" in name)


def tf_to_hf_names(arrays: dict[str, np.ndarray], *, source: str) -> dict[str, torch.Tensor]:
    """Google BERT variable names -> Hugging Face names, kernels transposed to (out, in)."""
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for name, array in arrays.items():
        if is_ignored(name):
            continue
        tensor = torch.from_numpy(array)
        if array.dtype == np.uint16:  # bfloat16 bits
            tensor = tensor.view(torch.int16).view(torch.bfloat16)
        if name in _TF_HEADS:  # (num_outputs, H) already, as run_squad/run_classifier create them
            state[_TF_HEADS[name]] = tensor
            continue
        if not name.startswith("bert/"):
            unknown.append(name)
            continue
        parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in name.split("/")]
        leaf = parts.pop()
        if leaf == "kernel":  # tf.layers.dense keeps (in, out)
            tensor, leaf = tensor.t().contiguous(), "weight"
        elif leaf.endswith("_embeddings"):
            parts.append(leaf)
            leaf = "weight"
        else:
            leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
        state[".".join(parts + [leaf])] = tensor
    if unknown:
        raise CheckpointError(f"{source}: variables that are not part of a BERT model: {', '.join(unknown[:6])}")
    return state


def _read_config(folder: Path, tensors: dict[str, torch.Tensor]) -> BertConfig:
    for name in ("bert_config.json", "config.json"):
        if (folder / name).is_file():
            config = BertConfig.from_json(folder / name)
            break
    else:
        raise CheckpointError(f"{folder}: no bert_config.json beside the TensorFlow checkpoint")
    # Google's bert_config.json does not record the classifier's label count: the tensor does.
    classifier = tensors.get("classifier.weight")
    if classifier is not None and classifier.shape[0] != config.num_labels:
        config = dataclasses.replace(config, num_labels=int(classifier.shape[0]))
    return config


def load_tf_checkpoint(path: str | Path) -> Checkpoint:
    """Load a Google/NGC BERT TensorFlow checkpoint (folder, ``model.ckpt`` prefix or ``.index`` path)."""
    path = Path(path)
    prefix = _find_prefix(path)
    if prefix is None:
        raise CheckpointError(f"{path}: no TensorFlow checkpoint (*.index) found")
    folder = prefix.parent
    arrays = read_tf_bundle(prefix, skip=is_ignored)
    state = tf_to_hf_names(arrays, source=str(prefix))
    config = _read_config(folder, state)
    tensors = from_hf_names(state, config, source=str(prefix))
    vocab = folder / "vocab.txt"
    return Checkpoint(config, tensors, vocab_file=vocab if vocab.is_file() else None, source=str(prefix))
