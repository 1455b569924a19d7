"""Reading LoadGen's ``mlperf_log_summary.txt`` into a short report (table + JSON).

The summary is ``key : value`` lines: the scenario's result ("Samples per second", "Completed
samples per second", "90th percentile latency (ns)", ...), "Result is : VALID|INVALID" and the
latency percentiles ("50.00 percentile latency (ns) : 123").
"""

from __future__ import annotations

import re
from pathlib import Path

SUMMARY = "mlperf_log_summary.txt"
_PERCENTILE = re.compile(r"^(\d+(?:\.\d+)?) percentile latency \(ns\)$")
# SingleStream / MultiStream headline: "90.0th percentile latency (ns)" (spelling varies by version).
_HEADLINE_LATENCY = re.compile(r"^\d+(?:\.\d+)?th percentile latency \(ns\)$")
# The headline throughput of the other scenarios, as LoadGen names it in the summary.
_RESULT_KEYS = {"Offline": "Samples per second", "Server": "Completed samples per second"}


def parse_summary(path: str | Path) -> dict[str, str]:
    """Every ``key : value`` line of a LoadGen summary (the first occurrence of each key)."""
    fields: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and value.strip():
            fields.setdefault(key.strip(), value.strip())
    return fields


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def build_report(out: Path, options, *, backend_name: str, samples: int, batches: int,
                 completed: int) -> dict:
    """The report of one run from the summary LoadGen wrote into ``out``.

    Returns:
        {"scenario", "mode", "backend", "result", "unit", "valid", "verdict", "latency_ms":
        {"p50", "p90", "p99", ...}, "samples_in_qsl", "batches", "summary_file", "settings"}
    """
    fields = parse_summary(Path(out) / SUMMARY)
    scenario = fields.get("Scenario", options.scenario.value)
    latency_ms = {}
    for key, value in fields.items():
        match = _PERCENTILE.match(key)
        if match and _number(value) is not None:
            latency_ms[f"p{float(match.group(1)):g}"] = _number(value) / 1e6
    for name, key in (("mean", "Mean latency (ns)"), ("min", "Min latency (ns)"), ("max", "Max latency (ns)")):
        if _number(fields.get(key)) is not None:
            latency_ms[name] = _number(fields[key]) / 1e6
    if scenario in _RESULT_KEYS:
        unit, result = "samples/s", _number(fields.get(_RESULT_KEYS[scenario]))
    else:
        key = next((k for k in fields if _HEADLINE_LATENCY.match(k)), None)
        unit, result = "ms", _number(fields.get(key)) if key else None
        result = None if result is None else result / 1e6
    # Accuracy runs have no timing verdict.
    verdict = fields.get("Result is", "-" if options.mode.value == "accuracy" else "unknown")
    return {
        "scenario": scenario,
        "mode": options.mode.value,
        "backend": backend_name,
        "result": result,
        "unit": unit,
        "valid": verdict == "VALID",
        "verdict": verdict,
        "latency_ms": latency_ms,
        "samples_in_qsl": samples,
        "batches": batches,
        "samples_completed": completed,
        "summary_file": str(Path(out) / SUMMARY),
        "settings": {k: fields[k] for k in fields if k in (
            "min_duration (ms)", "min_query_count", "target_qps", "target_latency (ns)",
            "performance_sample_count", "samples_per_query")},
    }


def format_table(reports: list[dict]) -> str:
    """A short text table: one row per report."""
    header = ("scenario", "mode", "backend", "result", "p50 ms", "p90 ms", "p99 ms", "verdict", "f1")
    rows = [header]
    for r in reports:
        lat = r.get("latency_ms", {})
        result = "-" if r.get("result") is None else f"{r['result']:.4g} {r['unit']}"
        f1 = r.get("accuracy", {}).get("f1")
        rows.append((r["scenario"], r["mode"], r["backend"], result,
                     *(f"{lat[p]:.3f}" if p in lat else "-" for p in ("p50", "p90", "p99")),
                     r["verdict"], "-" if f1 is None else f"{f1:.2f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
