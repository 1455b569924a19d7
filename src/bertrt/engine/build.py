"""Build an engine: canonical weights cast to one precision, checked, saved with a description.

Building is cheap on purpose (seconds, not the minutes-to-hours of TensorRT): there is nothing
to compile ahead of time. The runtime captures CUDA graphs lazily per token bucket, so a new
request shape never needs a rebuild. The one measurement a GPU build makes is which backend runs
the FFN up-projection + bias + GELU, attention and the two projections back to hidden width at a
few token counts (``tune_gemm_choices``), recorded in ``engine.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from bertrt.config import Precision, check_engine_support
from bertrt.device import resolve_device
from bertrt.engine.format import (SPEC_FILE, TOKENIZER_FILES, VOCAB_FILE, WEIGHTS_FILE, EngineError, EngineSpec,
                                  GemmChoices, file_sha256, now_iso, parse_gemm_choices, write_atomically)
from bertrt.engine.quantized import quantize_tensors, require_fp8_device
from bertrt.engine.tuning import tune_gemm_choices, tuned_tensors
from bertrt.quant.calibration import Calibration, calibrate, checkpoint_sha256
from bertrt.quant.data import CalibrationSettings, calibration_batches, check_data
from bertrt.quant.recipe import QUANT_FORMATS, QuantError, QuantRecipe
from bertrt.weights.schema import Checkpoint

DEFAULT_MAX_BATCH = 128
DEFAULT_MAX_SEQ_LENGTH = 384
# Default max_tokens: max_batch sequences of max_seq_length, up to this many tokens (BERT's 128 x 384 =
# 49,152 is under it). Long-sequence builds (ModernBERT, --max-seq-length 8192) would otherwise be sized
# for a million tokens: GB-sized activations, and build-time timing at that count. Bigger batches are
# split into passes of whole sequences (Engine._split), so the cap costs nothing but launch overhead.
DEFAULT_MAX_TOKENS = 65_536


def device_capability(device: torch.device) -> tuple[tuple[int, int] | None, str | None]:
    """(compute capability, GPU name) of a CUDA device; (None, None) for the CPU."""
    if device.type != "cuda":
        return None, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)), torch.cuda.get_device_name(index)


def prepare_tensors(checkpoint: Checkpoint, precision: Precision) -> dict[str, torch.Tensor]:
    """Canonical tensors cast to the engine precision, contiguous, in the kernels' layout (the schema's).

    One cast per tensor (~400 for BERT-Large): the cost is memory bandwidth, not Python.
    """
    dtype = precision.dtype
    return {name: t.detach().to(dtype=dtype).contiguous() for name, t in checkpoint.tensors.items()}


def make_spec(checkpoint: Checkpoint, precision: Precision, *, max_tokens: int | None, max_seq_length: int | None,
              max_batch: int, device: torch.device, gemm_choices: GemmChoices | None = None,
              quantization: QuantRecipe | None = None) -> EngineSpec:
    """The engine description (without the weights checksum, filled in once the file exists)."""
    from bertrt import __version__

    config = checkpoint.config
    if max_seq_length is None:
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, config.max_sequence_length)
    if max_tokens is None:
        max_tokens = max(max_seq_length, min(max_batch * max_seq_length, DEFAULT_MAX_TOKENS))
    capability, name = device_capability(device)
    return EngineSpec(
        config=config, precision=precision, max_tokens=max_tokens, max_seq_length=max_seq_length,
        max_batch=max_batch, compute_capability=capability, device_name=name, heads=checkpoint.heads,
        has_pooler=checkpoint.has_pooler, has_vocab=checkpoint.vocab_file is not None,
        source=checkpoint.source, bertrt_version=__version__, created=now_iso(), torch_version=torch.__version__,
        labels=tuple(checkpoint.labels),
        gemm_choices=parse_gemm_choices(gemm_choices or {}, source="gemm_choices"), quantization=quantization,
    )


def build(model: str | Path | Checkpoint | None, out_dir: str | Path, *, precision: str | Precision = "fp16",
          max_tokens: int | None = None, max_seq_length: int | None = None, max_batch: int = DEFAULT_MAX_BATCH,
          device: str | torch.device | None = None, gemm_choices: GemmChoices | None = None,
          int8_mode: int | None = None, calibration: CalibrationSettings | Calibration | None = None,
          recipe: QuantRecipe | None = None) -> Path:
    """Build an engine folder from any checkpoint.

    Args:
        model: a checkpoint path or hub name (anything ``load_checkpoint`` takes), None for the
            embedded default model, or a loaded :class:`Checkpoint`.
        out_dir: the engine folder to write (replaced atomically if it holds an engine).
        precision: "fp32", "fp16" or "bf16": the dtype of every stored tensor; or "fp8" / "int8":
            the encoder's projections quantised (``bertrt.quant``), the rest in fp16 on a GPU
            build and fp32 on a CPU build.
        max_tokens: most tokens per forward pass (default ``max_batch * max_seq_length``, at most
            ``DEFAULT_MAX_TOKENS`` unless one sequence needs more).
        max_seq_length: longest accepted sequence (default min(384, the position table); ModernBERT
            takes up to its 8,192 positions).
        max_batch: most sequences per forward pass.
        device: the GPU to build for (its compute capability is recorded), or "cpu" for a portable
            build; default the current GPU when there is one.
        gemm_choices: GEMM backends to record instead of timing them (see ``EngineSpec``); default:
            timed on a GPU build (``tune_gemm_choices``), none (cuBLAS) on a CPU build.
        int8_mode: 1 or 2 for "int8" (default 1; see ``bertrt.quant.recipe``).
        calibration: for "fp8"/"int8": where the input scales come from, as
            :class:`~bertrt.quant.data.CalibrationSettings` (SQuAD data and/or a cache file) or a
            ready :class:`~bertrt.quant.calibration.Calibration`. A quantization-aware checkpoint
            brings its own scales and needs none.
        recipe: the full :class:`~bertrt.quant.QuantRecipe` instead of the default for the format.

    Returns:
        The engine folder: ``engine.json``, ``weights.safetensors`` and ``vocab.txt`` when the
        checkpoint has one; without one, its tokenizer files (``format.TOKENIZER_FILES``).

    An fp8 engine calibrated on SQuAD articles 0-31: ``build(model, "engines/fp8", precision="fp8",
    calibration=CalibrationSettings(data="dev-v1.1.json", cache="calib.json"))``.

    Example:
        >>> import tempfile
        >>> path = build(None, tempfile.mkdtemp() + "/default-fp16", device="cpu")  # the embedded model
        >>> sorted(p.name for p in path.iterdir())
        ['engine.json', 'vocab.txt', 'weights.safetensors']
    """
    from safetensors.torch import save_file

    from bertrt.weights import load_checkpoint

    name = precision.value if isinstance(precision, Precision) else str(precision)
    if name not in (*(p.value for p in Precision), *QUANT_FORMATS):
        raise EngineError(f"precision {name!r}: use one of fp32, fp16, bf16, fp8, int8")
    if recipe is None and name in QUANT_FORMATS:
        recipe = QuantRecipe.default(name, int8_mode)
        if isinstance(calibration, (CalibrationSettings, Calibration)) and calibration.method:
            recipe = dataclasses.replace(recipe, method=calibration.method)
    elif int8_mode is not None and name != "int8":
        raise EngineError(f"int8_mode applies to precision int8, not {name}")
    device = resolve_device(device, flag="device")
    if recipe is not None and recipe.format == "fp8":
        require_fp8_device(device)
    if recipe is None and calibration is not None:
        raise EngineError(f"calibration applies to fp8 and int8 builds, not {name}")
    if isinstance(calibration, CalibrationSettings) and calibration.cache is None:
        check_data(calibration)  # before any model is loaded
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    check_engine_support(checkpoint.config)
    if recipe is not None and checkpoint.config.pre_layer_norm:
        raise QuantError(f"{checkpoint.source}: fp8 and int8 engines run post-LayerNorm families, not "
                         f"{checkpoint.config.model_type} (pre-LN); build this model in fp16 or bf16")
    if recipe is not None:
        precision = Precision("fp16" if device.type == "cuda" else "fp32")
        calibration, recipe = resolve_calibration(checkpoint, recipe, calibration, max_seq_length=max_seq_length,
                                                  device=device)
    precision = Precision(precision)
    spec = make_spec(checkpoint, precision, max_tokens=max_tokens, max_seq_length=max_seq_length,
                     max_batch=max_batch, device=device, quantization=recipe)
    tensors = prepare_tensors(checkpoint, precision)
    if gemm_choices is None and device.type == "cuda":
        on_device = {k: tensors[k].to(device) for k in tuned_tensors(spec.config)}
        gemm_choices = tune_gemm_choices(on_device, max_tokens=spec.max_tokens,
                                         num_heads=spec.config.num_attention_heads,
                                         max_seq_length=spec.max_seq_length,
                                         attention_only=spec.config.pre_layer_norm)
        if recipe is not None:  # the quantised projections have no alternatives to time
            gemm_choices = {op: table for op, table in gemm_choices.items() if op == "attention"}
    spec = dataclasses.replace(spec, gemm_choices=parse_gemm_choices(gemm_choices or {}, source="gemm_choices"))
    if recipe is not None:
        qat = getattr(checkpoint, "quant", None)
        weight_amax = ({k: v for k, v in qat.amax.items() if k.endswith(".weight")} if qat is not None else None)
        tensors = quantize_tensors(tensors, checkpoint.tensors, checkpoint.config.num_hidden_layers, recipe,
                                   calibration, weight_amax=weight_amax)

    def fill(folder: Path) -> None:
        weights = folder / WEIGHTS_FILE
        save_file(tensors, str(weights), metadata={"format": "pt", "bertrt_precision": precision.value})
        final = dataclasses.replace(spec, weights_sha256=file_sha256(weights), weights_bytes=weights.stat().st_size)
        if checkpoint.vocab_file is not None:
            (folder / VOCAB_FILE).write_bytes(Path(checkpoint.vocab_file).read_bytes())
            final = dataclasses.replace(final, vocab_sha256=file_sha256(folder / VOCAB_FILE))
        elif checkpoint.tokenizer_dir is not None:  # no vocab.txt: the checkpoint's own tokenizer files
            copied = {}
            for name in TOKENIZER_FILES:
                if (Path(checkpoint.tokenizer_dir) / name).is_file():
                    (folder / name).write_bytes((Path(checkpoint.tokenizer_dir) / name).read_bytes())
                    copied[name] = file_sha256(folder / name)
            final = dataclasses.replace(final, tokenizer_sha256=copied)
        (folder / SPEC_FILE).write_text(json.dumps(final.to_json(), indent=2) + "\n", encoding="utf-8")

    return write_atomically(Path(out_dir), fill)


def resolve_calibration(checkpoint: Checkpoint, recipe: QuantRecipe,
                        calibration: CalibrationSettings | Calibration | None, *,
                        max_seq_length: int | None, device: torch.device | str = "cpu") -> tuple[Calibration, QuantRecipe]:
    """The clip values a low-precision build uses, and the recipe that records where they came
    from: a quantization-aware checkpoint's own, a given Calibration, a matching cache file, or
    a calibration run over the data (whose result is written to the cache when one is named)."""
    sha = checkpoint_sha256(checkpoint.tensors)
    qat = getattr(checkpoint, "quant", None)
    if qat is not None:
        if qat.format != recipe.format:
            raise QuantError(f"{checkpoint.source} was quantised for {qat.format}; build it with --precision "
                             f"{qat.format}")
        if recipe.mode2:
            raise QuantError(f"{checkpoint.source}: a quantization-aware graph has no scales for GEMM outputs and "
                             "residuals, which int8 mode 2 rounds; build it with --int8-mode 1")
        amax = {k: float(v.max()) for k, v in qat.amax.items() if not k.endswith(".weight")}
        per_channel = any(v.numel() > 1 for k, v in qat.amax.items() if k.endswith(".weight"))
        found = Calibration(method="qat", amax=amax, model_sha256=sha, data={"file": checkpoint.source})
        found.require(recipe.calibrated_names(checkpoint.config.num_hidden_layers), source=checkpoint.source)
        return found, dataclasses.replace(recipe, method="qat", calibration=found.data,
                                          weights="per-channel" if per_channel else "per-tensor")
    if calibration is None:
        raise QuantError(f"a {recipe.format} build needs calibration data (--calib-data FILE) or a --calib-cache")
    if isinstance(calibration, Calibration):
        calibration.check_model(sha, source="calibration")
        found = calibration
    else:
        cache = Path(calibration.cache) if calibration.cache is not None else None
        if cache is not None and cache.exists():
            found = Calibration.load(cache)
            found.check_model(sha, source=str(cache))
            if found.method != (calibration.method or recipe.method):
                raise QuantError(f"{cache}: made with --calib-method {found.method}, not "
                                 f"{calibration.method or recipe.method}; name another cache file or the same method")
        else:
            from bertrt.tokenizer import BertTokenizer

            if checkpoint.vocab_file is None:
                raise QuantError(f"{checkpoint.source}: no vocab.txt, so SQuAD calibration data cannot be tokenised "
                                 "for it")
            tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case)
            seq = max_seq_length or min(DEFAULT_MAX_SEQ_LENGTH, checkpoint.config.max_sequence_length)
            batches, data = calibration_batches(calibration, tokenizer, max_seq_length=seq)
            found = calibrate(checkpoint, batches, method=calibration.method or recipe.method, fmt=recipe.format, data=data,
                              progress=calibration.progress, device=device)
            if cache is not None:
                found.save(cache)
    found.require(recipe.calibrated_names(checkpoint.config.num_hidden_layers), source="calibration")
    return found, dataclasses.replace(recipe, method=found.method, calibration={**found.data, "model_sha256": sha})

