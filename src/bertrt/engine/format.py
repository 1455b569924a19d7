"""The saved engine: a folder with ``engine.json``, ``weights.safetensors`` and ``vocab.txt``.

``engine.json`` holds an :class:`EngineSpec`: the model's shape, the precision (and, for an fp8
or int8 engine, its :class:`~bertrt.quant.QuantRecipe`), the limits the runtime was sized for, the
GPU compute capability it was built for, the sha256 of the weights and of the vocabulary, and a
checksum of its own content. A checksum detects corruption and accidental edits, not a malicious
edit (whoever can edit the file can recompute it); weights are safetensors, never pickles.
Everything here is plain I/O and checking; no tensor math. Every problem a load can meet raises
:class:`EngineError` with one sentence saying what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertrt.atomic import write_folder_atomically
from bertrt.config import BertConfig, ConfigError, Precision
from bertrt.errors import BertrtError
from bertrt.ops.attention_triton import TILINGS as ATTENTION_TILING_CONFIGS
from bertrt.quant.recipe import QuantRecipe

FORMAT = "bertrt-engine"
FORMAT_VERSION = 2  # 2: quantization recipes, scale tensors, checksums of engine.json and vocab.txt
SPEC_FILE = "engine.json"
WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocab.txt"
# A checkpoint's own tokenizer files, copied into an engine that has no vocab.txt (ModernBERT's
# tokenizer.json, RoBERTa's vocab.json + merges.txt), with tokenizer_config.json's settings.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Linear weights stay (out_features, in_features) as in the canonical schema: cuBLAS takes them as a
# transposed operand, which costs nothing (and is the layout cuBLASLt's fp8 kernels require).
# Ops that have a Triton alternative: op -> {token-count upper bound: backend}, timed at build time
# on the GPU (see tuning.tune_gemm_choices). "ffn_in_gelu" is the FFN up-projection with its bias and
# GELU: "cublas" = F.linear then the bias_gelu kernel, "triton" = linear_bias_gelu (fused epilogue)
# with the tiling config_for picks, "cublaslt-gelu" =
# linear_gelu_tanh (one cuBLASLt call, bias and tanh-form GELU in its epilogue).
# "attention": "triton" = bertrt.ops.attention_triton with attention_config_for's tiling, "triton-<M>x<N>"
# = the same with that tiling (attention_triton.TILINGS), "torch" = PyTorch's fused varlen flash kernel.
# "attn_out" / "ffn_out": the attention output and FFN down projections, each followed by its bias +
# residual + LayerNorm kernel: "cublas" = F.linear, "splitk<S>" = linear_splitk with S slices of K,
# whose fp32 partials that LayerNorm kernel sums (SPLITK_BACKENDS), "cublas-accumulate" = cuBLAS
# adding the product into the residual in place (beta = 1), so the LayerNorm reads one tensor, not two.
# The first backend of each op is its default where nothing was recorded.
SPLITK_BACKENDS = {"splitk2": 2, "splitk4": 4}
ATTENTION_TILINGS = tuple(ATTENTION_TILING_CONFIGS)
OP_BACKENDS = {"ffn_in_gelu": ("cublas", "triton", "cublaslt-gelu"),
               "attention": ("triton", "torch", *ATTENTION_TILINGS),
               "attn_out": ("cublas", *SPLITK_BACKENDS, "cublas-accumulate"),
               "ffn_out": ("cublas", *SPLITK_BACKENDS, "cublas-accumulate")}
GEMM_OPS = tuple(OP_BACKENDS)
GemmChoices = dict[str, dict[int, str]]


def gemm_choice(choices: GemmChoices, op: str, tokens: int) -> str:
    """The backend recorded for ``op`` at ``tokens`` tokens: that of the smallest recorded bound
    >= tokens (the largest bound's beyond it); the op's default when nothing was recorded."""
    table = choices.get(op) or {}
    if not table:
        return OP_BACKENDS[op][0]
    fitting = [bound for bound in table if bound >= tokens]
    return table[min(fitting) if fitting else max(table)]


def parse_gemm_choices(raw: Any, *, source: str) -> GemmChoices:
    """``engine.json``'s ``gemm_choices`` (JSON keys are strings) checked and keyed by int."""
    if not isinstance(raw, dict):
        raise EngineError(f"{source}: gemm_choices must be an object, got {raw!r}")
    parsed: GemmChoices = {}
    for op, table in raw.items():
        if op not in GEMM_OPS or not isinstance(table, dict):
            raise EngineError(f"{source}: gemm_choices[{op!r}]: unknown op or not an object; rebuild the engine")
        try:
            parsed[op] = {int(bound): backend for bound, backend in table.items()}
        except ValueError as exc:
            raise EngineError(f"{source}: gemm_choices[{op!r}] keys must be token counts ({exc})") from exc
        bad = [b for b in parsed[op].values() if b not in OP_BACKENDS[op]]
        if bad or any(bound <= 0 for bound in parsed[op]):
            raise EngineError(f"{source}: gemm_choices[{op!r}] = {table!r}: backends are {OP_BACKENDS[op]} "
                              "at positive token counts; rebuild the engine")
    return parsed


class EngineError(BertrtError, ValueError):
    """An engine folder that cannot be loaded here; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What ``engine.json`` records about a built engine.

    Args:
        config: the encoder's shape.
        precision: dtype of every stored tensor.
        max_tokens: most tokens one forward pass takes (larger batches are split).
        max_seq_length: longest sequence the engine accepts.
        max_batch: most sequences one forward pass takes.
        compute_capability: (major, minor) of the GPU it was built for; None for a CPU build,
            which loads anywhere.
        weights_sha256 / weights_bytes: checksum and size of ``weights.safetensors``.
        gemm_choices: op -> {token-count upper bound: backend} (see ``OP_BACKENDS``, ``gemm_choice``);
            empty (cuBLAS everywhere) for a CPU build.
        quantization: for an fp8 or int8 engine, what its GEMMs quantise and how; ``precision``
            is then that of everything else (activations, LayerNorms, embeddings, heads).
        vocab_sha256: checksum of ``vocab.txt`` ("" without one).
        tokenizer_sha256: file name -> checksum of the tokenizer files (``TOKENIZER_FILES``) an
            engine without a vocab.txt carries; empty for one with a vocab.txt.
        labels: the heads' output names in label-id order, when the checkpoint names them.
    """

    config: BertConfig
    precision: Precision
    max_tokens: int
    max_seq_length: int
    max_batch: int
    compute_capability: tuple[int, int] | None
    heads: tuple[str, ...] = ()
    has_pooler: bool = False
    has_vocab: bool = False
    device_name: str | None = None
    weights_sha256: str = ""
    weights_bytes: int = 0
    source: str = "<memory>"
    bertrt_version: str = ""
    format_version: int = FORMAT_VERSION
    created: str = ""
    torch_version: str = ""
    gemm_choices: GemmChoices = dataclasses.field(default_factory=dict)
    quantization: QuantRecipe | None = None
    vocab_sha256: str = ""
    tokenizer_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    labels: tuple[str, ...] = ()

    @property
    def precision_name(self) -> str:
        """What the engine computes its GEMMs in: "fp8", "int8-mode1", ... or the precision."""
        return self.quantization.name if self.quantization else self.precision.value

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_seq_length", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EngineError(f"{name} must be a positive integer, got {value!r}")
        if self.max_seq_length > self.config.max_sequence_length:
            raise EngineError(f"max_seq_length {self.max_seq_length} exceeds the {self.config.max_sequence_length} "
                              "positions of the model's max_position_embeddings")
        if self.max_tokens < self.max_seq_length:
            raise EngineError(f"max_tokens {self.max_tokens} must be at least max_seq_length "
                              f"{self.max_seq_length}, so that any one sequence fits")

    def to_json(self) -> dict[str, Any]:
        """The content of ``engine.json``, with its ``checksum``."""
        raw = {
            "format": FORMAT,
            "format_version": self.format_version,
            "bertrt_version": self.bertrt_version,
            "created": self.created,
            "torch_version": self.torch_version,
            "source": self.source,
            "config": dataclasses.asdict(self.config),
            "precision": self.precision.value,
            "max_tokens": self.max_tokens,
            "max_seq_length": self.max_seq_length,
            "max_batch": self.max_batch,
            "compute_capability": list(self.compute_capability) if self.compute_capability else None,
            "device_name": self.device_name,
            "heads": list(self.heads),
            "has_pooler": self.has_pooler,
            "quantization": self.quantization.to_json() if self.quantization else None,
            "gemm_choices": {op: {str(bound): backend for bound, backend in sorted(table.items())}
                             for op, table in self.gemm_choices.items()},
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256, "bytes": self.weights_bytes},
            "vocab": {"file": VOCAB_FILE, "sha256": self.vocab_sha256} if self.has_vocab else None,
            "tokenizer": dict(sorted(self.tokenizer_sha256.items())) or None,
            "labels": list(self.labels),
        }
        return {**raw, "checksum": content_checksum(raw)}

    @classmethod
    def from_json(cls, raw: Any, *, source: str) -> "EngineSpec":
        """Parse and check ``engine.json`` content; raises EngineError naming the bad field."""
        from bertrt import __version__

        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise EngineError(f"{source}: not a bertrt engine description (no \"format\": \"{FORMAT}\")")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise EngineError(f"{source}: engine format version {version!r}, this bertrt reads version "
                              f"{FORMAT_VERSION}; rebuild the engine with `bertrt build`")
        checksum = raw.get("checksum")
        if checksum != content_checksum({k: v for k, v in raw.items() if k != "checksum"}):
            raise EngineError(f"{source}: its content does not match its checksum (edited or corrupted); "
                              "rebuild the engine with `bertrt build`")
        if raw.get("bertrt_version") != __version__:
            raise EngineError(f"{source}: built by bertrt {raw.get('bertrt_version')!r}, this is bertrt "
                              f"{__version__}; rebuild the engine with `bertrt build`")
        try:
            weights = raw["weights"]
            cc = raw["compute_capability"]
            vocab = raw.get("vocab")
            quantization = raw.get("quantization")
            tokenizer = raw.get("tokenizer") or {}
            if not isinstance(tokenizer, dict) or not set(tokenizer) <= set(TOKENIZER_FILES):
                raise EngineError(f"{source}: tokenizer must name files of {', '.join(TOKENIZER_FILES)}, "
                                  f"got {tokenizer!r}; rebuild the engine")
            if cc is not None and (not isinstance(cc, list) or len(cc) != 2
                                   or not all(isinstance(c, int) for c in cc)):
                raise EngineError(f"{source}: compute_capability must be [major, minor] or null, got {cc!r}")
            return cls(
                config=BertConfig(**raw["config"]),
                precision=Precision(raw["precision"]),
                max_tokens=raw["max_tokens"],
                max_seq_length=raw["max_seq_length"],
                max_batch=raw["max_batch"],
                compute_capability=tuple(cc) if cc is not None else None,
                heads=tuple(raw.get("heads", ())),
                has_pooler=bool(raw.get("has_pooler", False)),
                has_vocab=vocab is not None,
                vocab_sha256=str(vocab["sha256"]) if vocab is not None else "",
                tokenizer_sha256={str(k): str(v) for k, v in tokenizer.items()},
                labels=tuple(str(label) for label in raw.get("labels") or ()),
                quantization=QuantRecipe.from_json(quantization) if quantization is not None else None,
                device_name=raw.get("device_name"),
                weights_sha256=str(weights["sha256"]),
                weights_bytes=int(weights["bytes"]),
                source=str(raw.get("source", "")),
                bertrt_version=raw["bertrt_version"],
                format_version=version,
                created=str(raw.get("created", "")),
                torch_version=str(raw.get("torch_version", "")),
                gemm_choices=parse_gemm_choices(raw.get("gemm_choices", {}), source=source),
            )
        except EngineError:
            raise
        except KeyError as exc:
            raise EngineError(f"{source}: missing field {exc.args[0]!r}; rebuild the engine") from exc
        except (TypeError, ValueError, ConfigError) as exc:
            raise EngineError(f"{source}: invalid engine description ({exc}); rebuild the engine") from exc


def content_checksum(raw: dict[str, Any]) -> str:
    """sha256 of a JSON object's canonical text (sorted keys, no spaces)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_compute_capability(built_for: tuple[int, int] | None, device_capability: tuple[int, int] | None,
                             *, source: str) -> None:
    """Raise EngineError when an engine built for one GPU generation is loaded on another.

    ``None`` on either side means "not a GPU": a CPU build runs anywhere, and any build can be
    loaded onto the CPU.
    """
    if built_for is None or device_capability is None:
        return
    if tuple(built_for) != tuple(device_capability):
        want, have = ".".join(map(str, built_for)), ".".join(map(str, device_capability))
        raise EngineError(f"{source}: built for GPU compute capability {want}, this GPU is {have}; "
                          "rebuild the engine on this machine with `bertrt build`")


def read_spec(folder: Path) -> EngineSpec:
    """Read ``engine.json`` of an engine folder (no weights read)."""
    path = folder / SPEC_FILE
    if not folder.is_dir():
        raise EngineError(f"{folder}: no such engine folder")
    if not path.is_file():
        raise EngineError(f"{folder}: not a bertrt engine (no {SPEC_FILE}); build one with `bertrt build`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path}: not valid JSON ({exc}); rebuild the engine") from exc
    return EngineSpec.from_json(raw, source=str(path))


def verify_weights(folder: Path, spec: EngineSpec) -> Path:
    """The weights file, once its size and sha256 match ``engine.json``."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise EngineError(f"{folder}: {WEIGHTS_FILE} is missing; rebuild the engine")
    size = path.stat().st_size
    if size != spec.weights_bytes:
        raise EngineError(f"{path}: {size} bytes, engine.json says {spec.weights_bytes} (truncated or "
                          "replaced); rebuild the engine")
    digest = file_sha256(path)
    if digest != spec.weights_sha256:
        raise EngineError(f"{path}: checksum mismatch (sha256 {digest[:12]}..., engine.json says "
                          f"{spec.weights_sha256[:12]}...): the file is corrupted; rebuild the engine")
    return path


def verify_vocab(folder: Path, spec: EngineSpec) -> Path | None:
    """The vocabulary file once its sha256 matches ``engine.json`` (None for an engine without one)."""
    if not spec.has_vocab:
        return None
    path = folder / VOCAB_FILE
    if not path.is_file():
        raise EngineError(f"{folder}: {VOCAB_FILE} is missing; rebuild the engine")
    if file_sha256(path) != spec.vocab_sha256:
        raise EngineError(f"{path}: checksum mismatch (edited or corrupted); rebuild the engine")
    return path


def verify_tokenizer(folder: Path, spec: EngineSpec) -> Path | None:
    """The engine folder as a tokenizer folder (``tokenizer.load_tokenizer``) once its tokenizer
    files match ``engine.json``; None for an engine without them."""
    if not spec.tokenizer_sha256:
        return None
    for name, digest in spec.tokenizer_sha256.items():
        path = folder / name
        if not path.is_file():
            raise EngineError(f"{folder}: {name} is missing; rebuild the engine")
        if file_sha256(path) != digest:
            raise EngineError(f"{path}: checksum mismatch (edited or corrupted); rebuild the engine")
    return folder


def write_atomically(out: Path, fill: Callable[[Path], None]) -> Path:
    """Create engine folder ``out`` whole or not at all (an existing engine is replaced only once
    the new one is complete; a folder that is not an engine is never overwritten)."""
    def is_engine_or_empty(existing: Path) -> bool:
        return existing.is_dir() and ((existing / SPEC_FILE).is_file() or not any(existing.iterdir()))

    try:
        return write_folder_atomically(out, fill, may_replace=is_engine_or_empty,
                                       refuse_message="exists and is not a bertrt engine; refusing to overwrite it")
    except EngineError:
        raise
    except ValueError as exc:
        raise EngineError(str(exc)) from exc
