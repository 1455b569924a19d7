"""One harness run end to end: build the QSL and the backend, run LoadGen, score, report.

``prepare`` does the slow, untimed work (tokenising the data, loading or exporting the model);
``run_test`` drives LoadGen with them and may be called many times on the same pair, which is how
``benchmarks/device_loadgen.py`` runs several scenarios in one process.

Example:
    >>> options = HarnessOptions(scenario=Scenario.OFFLINE, data=Path("dev-v1.1.json"), count=64)
    >>> qsl, backend = prepare(options)
    >>> report = run_test(options, qsl, backend)
    >>> report["result"], report["valid"]
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bertrt.atomic import folder_kind, write_folder_atomically
from bertrt.errors import UserError
from bertrt.harness.loadgen import accuracy, report as reporting
from bertrt.device import resolve_device, resolve_devices
from bertrt.harness.loadgen.backends import make_backends, on_device, require_qa_head
from bertrt.harness.loadgen.qsl import SquadQSL
from bertrt.harness.loadgen.settings import BackendName, HarnessOptions, Mode, log_settings, loadgen_settings
from bertrt.harness.loadgen.sut import BatchingSUT
from bertrt.harness.loadgen.trace import TRACE_FILE, rows_of, summarize, write_batches

# The marker kind of a folder ``run_test`` wrote (see ``bertrt.atomic``).
OUTPUT_KIND = "loadgen"
# MLPerf BERT's window: SQuAD features of 384 tokens (doc stride 128, questions of at most 64).
WINDOW = 384
# How often the waiting thread wakes to take a Ctrl-C while LoadGen runs.
POLL_S = 0.1


def require_loadgen():
    try:
        import mlperf_loadgen
    except ImportError:
        raise UserError("the loadgen command needs MLPerf LoadGen: pip install 'bertrt[loadgen]' "
                        "(package mlcommons-loadgen)") from None
    return mlperf_loadgen


def _vocab_file(options: HarnessOptions, checkpoint, backend=None) -> Path | None:
    """The vocabulary to tokenise with: --vocab, else the engine's, else the checkpoint's, else (once
    the backend is built) the loaded engine's, else the default model's; None while undecided."""
    from bertrt.weights import DEFAULT_MODEL_DIR

    candidates = [Path(options.vocab)] if options.vocab is not None else []
    if options.engine is not None:
        candidates.append(Path(options.engine) / "vocab.txt")
    if checkpoint is not None and checkpoint.vocab_file is not None:
        candidates.append(Path(checkpoint.vocab_file))
    if backend is not None:
        # (a DeviceBackends gives its first backend's model)
        loaded = getattr(getattr(backend, "model", None), "vocab_file", None)
        candidates += [Path(loaded)] if loaded is not None else []
        candidates.append(DEFAULT_MODEL_DIR / "vocab.txt")
    for path in candidates:
        if path.is_file():
            return path
    if backend is not None:
        raise UserError("no vocab.txt to tokenise SQuAD with: pass --vocab FILE (the engine has none)")
    return None


def prepare(options: HarnessOptions, *, progress: bool = False) -> tuple[SquadQSL, object]:
    """Validate, tokenise the data and build the backend: everything before the timed run.

    With ``options.devices`` the backend is a ``DeviceBackends``: the same engine (or reference
    model) loaded once per device, each warmed up on its own device."""
    options.validate()
    require_loadgen()
    from bertrt.tokenizer import BertTokenizer
    from bertrt.weights import load_checkpoint

    devices = (resolve_devices(options.devices) if options.devices is not None
               else [resolve_device(options.device)])
    device = devices[0]
    checkpoint = None
    if options.model is not None or options.engine is None:
        checkpoint = load_checkpoint(options.model)
    elif options.backend is not BackendName.BERTRT:
        # The peers run the engine's own weights (fp16 engines come back as fp32 copies).
        from bertrt.engine import Engine

        checkpoint = Engine.load(options.engine, device="cpu").to_checkpoint()
    if checkpoint is not None and options.engine is None:
        require_qa_head(checkpoint)  # before the data is tokenised

    def build():
        return make_backends(options.backend.value, checkpoint=checkpoint, engine=options.engine, devices=devices,
                             graph_max_tokens=options.graph_max_tokens)

    # Tokenise first where the vocabulary is known, so data errors (--count too large) come fast.
    backend = None
    vocab = _vocab_file(options, checkpoint)
    if vocab is None:
        backend = build()
        vocab = _vocab_file(options, checkpoint, backend)
    config = checkpoint.config if checkpoint is not None else getattr(getattr(backend, "model", None), "config", None)
    if config is not None and config.max_position_embeddings < WINDOW:
        raise UserError(f"the model's position table has {config.max_position_embeddings} rows; MLPerf BERT reads "
                        f"SQuAD through {WINDOW}-token windows (use `bertrt squad` for shorter ones)")
    tokenizer = BertTokenizer(vocab, lowercase=config.do_lower_case if config is not None else True,
                              vocab_size=config.vocab_size if config is not None else None)
    qsl = SquadQSL(options.data, tokenizer, articles=options.articles, count=options.count, progress=progress)
    backend = backend or build()
    for one in getattr(backend, "backends", (backend,)):
        with on_device(getattr(one, "device", None)):
            warm_up(one, qsl, options.batch_tokens(), full_batch=device.type == "cuda")
    return qsl, backend


def warm_up(backend, qsl: SquadQSL, max_batch_tokens: int, *, full_batch: bool, mixed_batches: int = 6) -> None:
    """Run one sample and (on a GPU) batches of 1/16 up to all of the token budget, longest samples
    first, then ``mixed_batches`` batches of random samples at each of three budgets, so first-call
    costs (kernel compiles, CUDA graph captures, allocator growth) fall outside LoadGen's timing.

    The mixed batches matter: a kernel's tiling depends on the token count (``config_for``,
    ``attention_config_for``), and each tiling compiles on first use. Without them the first Server
    run on a fresh H100 compiled during the timed run and fell seconds behind (p50 2.4 s at 3,500
    samples/s). Token counts themselves cause no compiles (``ops._triton.jit``'s ``per_request``)."""
    order = np.argsort(-qsl.lengths, kind="stable")
    backend.run([qsl.input_ids[order[0]]], [qsl.token_type_ids[order[0]]])
    if not full_batch:
        return
    if hasattr(backend, "capture_graphs"):
        backend.capture_graphs()
    rng = np.random.default_rng(0)
    orders = [order] * 3 + [rng.permutation(len(qsl)) for _ in range(3 * mixed_batches)]
    budgets = [max_batch_tokens // 16, max_batch_tokens // 4, max_batch_tokens]
    budgets += [b for b in (max_batch_tokens // 8, max_batch_tokens // 2, max_batch_tokens)
                for _ in range(mixed_batches)]
    for budget, samples in zip(budgets, orders):
        take = _fill(backend, qsl, samples, budget)
        backend.run([qsl.input_ids[i] for i in take], [qsl.token_type_ids[i] for i in take])


def _fill(backend, qsl: SquadQSL, samples, budget: int) -> list[int]:
    """Samples from ``samples``, in order, while the batch's cost stays within ``budget``."""
    max_samples = getattr(backend, "max_batch_samples", None) or len(samples)
    take, tokens, longest = [], 0, 0
    for i in samples:
        n = int(qsl.lengths[i])
        cost = (len(take) + 1) * max(longest, n) if backend.padded else tokens + n
        if take and (cost > budget or len(take) == max_samples):
            break
        take.append(int(i))
        tokens, longest = tokens + n, max(longest, n)
    return take


@contextlib.contextmanager
def frozen_heap():
    """Keep Python's full garbage collections short while LoadGen times the run.

    Everything alive before the run (the tokenised QSL, the model, torch's own objects: ~240k
    tracked objects) moves to the collector's permanent generation, so any collection the run
    triggers scans only what the run allocates. A full collection of that heap takes 300 ms on a
    2-core CI machine, and it would hold the GIL the SUT's threads need. Insurance, not a measured
    fix: in a 20 s CPU Server run at 3,650 samples/s no full collection happened without it either
    (benchmarks/results/cpu/server_gc_replay.json), so GC does not explain the ~100 ms batch stalls
    seen on an H100."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_test(options: HarnessOptions, qsl: SquadQSL, backend, *, workers: int = 1, progress: bool = False) -> dict:
    """Run LoadGen once; write its logs, report.json (and accuracy.json) into ``options.out``.

    The run writes into a temporary sibling of ``options.out`` which replaces it only once the
    run is complete, so an interrupted or failed run leaves the previous run's folder as it was.
    ``options.out`` may be replaced when it is empty or a LoadGen output folder bertrt wrote
    (``options.overwrite``: any folder). LoadGen runs on a worker thread, so Ctrl-C reaches the
    calling thread at once (KeyboardInterrupt) instead of after LoadGen returns.

    ``progress``: a bar on stderr counting the samples answered while LoadGen runs.
    ``workers``: the SUT's threads per device.

    Returns:
        The report dict (see ``report.build_report``), with "devices" (per device: samples,
        batches, tokens, busy seconds, share) and "accuracy" in accuracy mode.
    """
    lg = require_loadgen()
    out = Path(options.out)
    settings = loadgen_settings(options, len(qsl))
    reports: list[dict] = []

    def fill(folder: Path) -> None:
        reports.append(_run_into(lg, folder, out, settings, options, qsl, backend, workers=workers,
                                 progress=progress))

    def may_replace(existing: Path) -> bool:
        return options.overwrite or folder_kind(existing) == OUTPUT_KIND or not any(existing.iterdir())

    try:
        write_folder_atomically(out, fill, may_replace=may_replace, kind=OUTPUT_KIND,
                                refuse_message="exists and is not a LoadGen output folder bertrt wrote; "
                                               "choose a new folder or pass --overwrite")
    except ValueError as exc:
        if reports:  # the run itself succeeded: only the destination was refused
            raise UserError(str(exc)) from None
        raise
    return reports[0]


def _run_into(lg, out: Path, final: Path, settings, options: HarnessOptions, qsl: SquadQSL, backend, *,
              workers: int, progress: bool = False) -> dict:
    """Run LoadGen with its logs in ``out``, a temporary folder that becomes ``final``."""
    latency_s = settings.server_target_latency_ns / 1e9
    sut = BatchingSUT(backend, qsl, scenario=options.scenario, max_batch_tokens=options.batch_tokens(),
                      latency_target_s=latency_s, workers=workers).start()
    sut_handle, qsl_handle = sut.construct(), qsl.construct()
    try:
        with frozen_heap():
            # A missing audit.config path keeps a stray ./audit.config from changing the run.
            _interruptible(lg.StartTestWithLogSettings, sut_handle, qsl_handle, settings, log_settings(out),
                           str(out / "audit.config"), answered=(lambda: sut.samples) if progress else None)
    except KeyboardInterrupt:
        # LoadGen goes on calling the SUT from its own threads until the process ends (which the
        # interrupt is about to do): the SUT stays up, since a stopped SUT would fail those calls.
        raise
    except BaseException:
        sut.stop()
        raise
    sut.stop()
    lg.DestroySUT(sut_handle)
    lg.DestroyQSL(qsl_handle)
    if sut.error is not None:
        where = f" on {sut.error_device}" if len(sut.device_names) > 1 else ""
        raise RuntimeError(f"the {backend.name} backend{where} failed during the run: {sut.error} "
                           f"({sut.failed_samples} of the run's samples were answered empty)") from sut.error

    report = reporting.build_report(out, options, backend_name=backend.name, samples=len(qsl),
                                    batches=sut.batches, completed=sut.samples)
    report["devices"] = sut.device_counters()
    report["summary_file"] = str(final / reporting.SUMMARY)
    report["sut_phases_ms"] = summarize(rows_of(write_batches(out / TRACE_FILE, sut.trace)))
    if options.mode is Mode.ACCURACY:
        scores = accuracy.score(qsl, accuracy.read_accuracy_log(out / accuracy.ACCURACY_LOG))
        predictions = scores.pop("predictions")
        (out / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
        (out / "accuracy.json").write_text(json.dumps(scores, indent=2) + "\n")
        report["accuracy"] = scores
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _interruptible(function, *args, answered: Callable[[], int] | None = None) -> None:
    """Call ``function(*args)`` on a daemon thread and wait for it; Ctrl-C (KeyboardInterrupt) is
    taken by the calling thread within ``POLL_S`` and leaves the call to end with the process (the
    KeyboardInterrupt carries ``process_must_end = True``). ``answered``: how many samples are
    done so far, shown as a progress bar while waiting."""
    from tqdm import tqdm

    failure: list[BaseException] = []

    def target() -> None:
        try:
            function(*args)
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            failure.append(exc)

    worker = threading.Thread(target=target, name="loadgen", daemon=True)
    worker.start()
    bar = tqdm(desc="loadgen", unit="sample", disable=answered is None, leave=False)
    try:
        while worker.is_alive():
            worker.join(POLL_S)
            if answered is not None:
                bar.update(answered() - bar.n)
    except KeyboardInterrupt as exc:
        # LoadGen cannot be stopped from outside and its threads go on: the process has to end
        # without the interpreter's normal shutdown (``bertrt.cli`` does so on this flag).
        exc.process_must_end = True
        raise
    finally:
        bar.close()
    if failure:
        raise failure[0]


def run(options: HarnessOptions, *, progress: bool = False) -> dict:
    """``prepare`` then ``run_test``."""
    qsl, backend = prepare(options, progress=progress)
    return run_test(options, qsl, backend, progress=progress)
