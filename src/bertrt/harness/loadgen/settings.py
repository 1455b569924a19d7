"""What one LoadGen run is: scenario, mode, backend and the knobs the user may turn.

``HarnessOptions.validate`` catches bad settings before anything slow happens (and always before
LoadGen starts); ``loadgen_settings`` turns the options into LoadGen's ``TestSettings`` in the order
MLPerf uses: the built-in ``mlperf.conf`` values for ``bert``, then ``--user-conf``, then the flags
the user gave explicitly.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from bertrt.errors import UserError
from bertrt.tasks.squad import parse_articles  # noqa: F401  (re-exported: one parser of --articles)

# The model name LoadGen's built-in mlperf.conf and user.conf files use for this benchmark.
MLPERF_MODEL = "bert"


class Scenario(str, enum.Enum):
    OFFLINE = "Offline"
    SINGLE_STREAM = "SingleStream"
    MULTI_STREAM = "MultiStream"
    SERVER = "Server"

    @property
    def reports_latency(self) -> bool:
        """SingleStream and MultiStream are judged by a latency; Offline and Server by samples/s."""
        return self in (Scenario.SINGLE_STREAM, Scenario.MULTI_STREAM)


class Mode(str, enum.Enum):
    PERFORMANCE = "performance"
    ACCURACY = "accuracy"


class BackendName(str, enum.Enum):
    BERTRT = "bertrt"
    PYTORCH = "pytorch"
    ONNXRUNTIME = "onnxruntime"


@dataclasses.dataclass
class HarnessOptions:
    """One run of the harness. ``None`` means "LoadGen's default (mlperf.conf / user.conf)".

    Args:
        scenario, mode, backend: what to run.
        engine: a saved engine folder: what the bertrt backend runs; the pytorch/onnxruntime
            backends take its weights when no ``model`` is given (same weights, fair comparison).
        model: a checkpoint (None = the embedded default model, unless ``engine`` is given).
        data: SQuAD v1.1 dev json.
        vocab: a WordPiece vocab.txt for engines built without one (random-weight speed engines).
        articles: a slice of the json's articles (None = all, as MLPerf does).
        user_conf: a LoadGen user.conf file.
        target_qps: Offline expected / Server target samples per second.
        target_latency_ms: Server latency bound; SingleStream / MultiStream expected latency.
        min_duration_s, min_query_count: LoadGen's run length.
        count: use only the first ``count`` features (QSL total and performance sample count).
        max_batch_tokens: the SUT's token budget per batch (padded tokens for padded backends).
        graph_max_tokens: the largest batch (tokens) that replays an engine's CUDA graph, larger
            ones running eagerly; None: ``backends.GRAPH_MAX_TOKENS``.
        out: where LoadGen's logs, report.json and accuracy.json go.
        device: "auto", "cpu", "cuda", "cuda:N".
        devices: several devices, one engine (or CPU reference) each, fed from one queue:
            "cuda:0,cuda:1", "all" (every visible GPU), or "cpu,cpu" (a testing aid); None: ``device``.
        overwrite: ``out`` may replace any folder, not only an empty one or a LoadGen output bertrt wrote.
    """

    scenario: Scenario = Scenario.OFFLINE
    mode: Mode = Mode.PERFORMANCE
    backend: BackendName = BackendName.BERTRT
    engine: Path | None = None
    model: str | None = None
    data: Path = Path("dev-v1.1.json")
    vocab: Path | None = None
    articles: slice | None = None
    user_conf: Path | None = None
    target_qps: float | None = None
    target_latency_ms: float | None = None
    min_duration_s: float | None = None
    min_query_count: int | None = None
    count: int | None = None
    max_batch_tokens: int | None = None
    graph_max_tokens: int | None = None
    out: Path = Path("loadgen-out")
    device: str = "auto"
    devices: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raise UserError (one line) for settings that cannot work; checks only cheap things."""
        for flag, value in (("--target-qps", self.target_qps), ("--target-latency-ms", self.target_latency_ms),
                            ("--min-duration", self.min_duration_s)):
            if value is not None and value == float("inf"):
                raise UserError(f"{flag} must be a finite number, got {value}")
        if self.target_qps is not None and not self.target_qps > 0:
            raise UserError(f"--target-qps must be > 0, got {self.target_qps:g}")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise UserError(f"--target-latency-ms must be > 0, got {self.target_latency_ms:g}")
        if self.min_duration_s is not None and not self.min_duration_s > 0:
            raise UserError(f"--min-duration must be > 0 seconds, got {self.min_duration_s:g}")
        if self.min_query_count is not None and self.min_query_count < 1:
            raise UserError(f"--min-query-count must be >= 1, got {self.min_query_count}")
        if self.count is not None and self.count < 1:
            raise UserError(f"--count must be >= 1, got {self.count}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise UserError(f"--max-batch-tokens must be >= 1, got {self.max_batch_tokens}")
        if self.graph_max_tokens is not None and self.graph_max_tokens < 1:
            raise UserError(f"--graph-max-tokens must be >= 1, got {self.graph_max_tokens}")
        if not Path(self.data).is_file():
            raise UserError(f"SQuAD data file not found: {self.data} (pass --data dev-v1.1.json)")
        if self.vocab is not None and not Path(self.vocab).is_file():
            raise UserError(f"vocabulary not found: {self.vocab}")
        if self.user_conf is not None and not Path(self.user_conf).is_file():
            raise UserError(f"user.conf not found: {self.user_conf}")
        if self.engine is not None and not Path(self.engine).is_dir():
            raise UserError(f"engine folder not found: {self.engine} (build one with `bertrt build`)")
        from bertrt.atomic import check_destination
        from bertrt.device import check_device

        check_device(self.device)
        if self.devices is not None:
            from bertrt.device import check_devices

            check_devices(self.devices)
            if check_device(self.device) != "auto":
                raise UserError(f"--device {self.device} and --devices {self.devices}: give one of them")
            if self.backend is BackendName.ONNXRUNTIME:
                raise UserError("--devices: the onnxruntime backend runs on one device; use --device, or the "
                                "bertrt or pytorch backend")
        check_destination(self.out, folder=True, kind="loadgen", overwrite=self.overwrite,
                          inputs=[("--data", self.data), ("--vocab", self.vocab), ("--user-conf", self.user_conf),
                                  ("--engine", self.engine), ("--model", self.model)])

    def batch_tokens(self) -> int:
        """The token budget per batch: large for Offline (throughput), smaller where latency counts."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return {Scenario.OFFLINE: 65536, Scenario.SERVER: 32768}.get(self.scenario, 8192)


def loadgen_settings(options: HarnessOptions, sample_count: int):
    """LoadGen ``TestSettings`` for ``options`` over a QSL of ``sample_count`` samples.

    Returns:
        mlperf_loadgen.TestSettings
    """
    import mlperf_loadgen as lg

    settings = lg.TestSettings()
    scenario = options.scenario.value
    # conf_type 0: LoadGen's built-in mlperf.conf only (the official bert values: 130 ms p99 for
    # Server, 600 s minimum duration, ...); conf_type 1 reads that and then the user.conf.
    settings.FromConfig("", MLPERF_MODEL, scenario, 0)
    builtin = (settings.min_query_count, settings.min_duration_ms, settings.performance_sample_count_override)
    if options.user_conf is not None:
        if settings.FromConfig(str(options.user_conf), MLPERF_MODEL, scenario, 1) != 0:
            raise UserError(f"LoadGen could not read {options.user_conf} (expected lines like "
                            "'bert.Offline.target_qps = 100')")
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = (lg.TestMode.AccuracyOnly if options.mode is Mode.ACCURACY
                     else lg.TestMode.PerformanceOnly)
    # Every sample of the QSL fits in memory at once, so all of them are performance samples.
    settings.performance_sample_count_override = sample_count
    if options.target_qps is not None:
        settings.offline_expected_qps = options.target_qps
        settings.server_target_qps = options.target_qps
    if options.target_latency_ms is not None:
        ns = int(options.target_latency_ms * 1e6)
        settings.server_target_latency_ns = ns
        settings.single_stream_expected_latency_ns = ns
        settings.multi_stream_expected_latency_ns = ns
    if options.min_duration_s is not None:
        settings.min_duration_ms = max(1, int(options.min_duration_s * 1000))
    if options.min_query_count is not None:
        settings.min_query_count = options.min_query_count
    if options.mode is Mode.PERFORMANCE:
        fit_to_samples(settings, options, sample_count, builtin)
    return settings


def fit_to_samples(settings, options: HarnessOptions, sample_count: int, builtin: tuple[int, int, int]) -> None:
    """Fit a performance run over fewer samples than the full dataset to those samples.

    LoadGen's built-in bert settings ask for 600 s and, Offline, one query of 10,833 samples
    whatever the QSL holds: over the 16 samples of ``--count 16`` on a CPU that is a run of many
    minutes instead of seconds. Unless the user set them (flags or user.conf), the minimum query
    count becomes one pass over the samples and the minimum duration 0, with a warning saying so.
    """
    import math
    import warnings

    from bertrt.errors import BertrtWarning

    query_count, duration_ms, full_count = builtin
    user_set_count = options.min_query_count is not None or settings.min_query_count != query_count
    user_set_duration = options.min_duration_s is not None or settings.min_duration_ms != duration_ms
    if sample_count >= full_count or (user_set_count and user_set_duration):
        return
    fitted = []
    if not user_set_count:
        per_query = settings.multi_stream_samples_per_query if options.scenario is Scenario.MULTI_STREAM else 1
        settings.min_query_count = max(1, math.ceil(sample_count / per_query))
        fitted.append(f"min_query_count {settings.min_query_count} (LoadGen's bert default: {query_count:,})")
    if not user_set_duration:
        settings.min_duration_ms = 0
        if options.scenario is Scenario.OFFLINE and options.target_qps is None:
            settings.offline_expected_qps = 1.0  # with no minimum duration, one query of min_query_count samples
        fitted.append(f"min_duration 0 s (default: {duration_ms / 1000:g} s)")
    warnings.warn(f"{sample_count} samples, fewer than the full {full_count:,}: the performance run is fitted to "
                  f"them: {', '.join(fitted)}; not a valid MLPerf run (give --min-query-count and --min-duration "
                  "to choose)", BertrtWarning, stacklevel=3)


def log_settings(out: Path):
    """LoadGen log settings writing mlperf_log_{summary,detail,accuracy}.* into ``out``."""
    import mlperf_loadgen as lg

    output = lg.LogOutputSettings()
    output.outdir = str(out)
    output.copy_summary_to_stdout = False
    log = lg.LogSettings()
    log.log_output = output
    log.enable_trace = False
    return log
