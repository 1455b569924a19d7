"""Write each GPU folder's README under benchmarks/results/ from its JSON, so prose cannot drift from numbers.

    python benchmarks/tables.py            # rewrite benchmarks/results/*/README.md
    python benchmarks/tables.py --check    # exit 1 if a README differs from what its JSON gives

A folder holds one file per figure (``latency_large.json``, ``loadgen.json.gz``, ``floors.json``, ...);
the README gets a table for each figure it knows and a line for every file (``FILES``). A figure
is replaced by running its script again and committing the new file under the same name.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_floors import cells, markdown as floors_markdown  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GPUS = {"h200": "NVIDIA H200 (141 GB HBM3e, 700 W)", "h100": "NVIDIA H100 80GB HBM3 (700 W)",
        "cpu": "CPU (2 cores, no GPU)"}

# What each figure is and which script writes it; files not named here are listed without a line.
FILES = {
    "latency_large.json": "BERT-Large latency table, build, kernel choices and numerics (`device_engine.py`)",
    "latency_base.json": "BERT-Base latency table, build, kernel choices and numerics (`device_engine.py`)",
    "latency_large.png": "the BERT-Large table drawn (`bertrt perf --plot`)",
    "latency_base.png": "the BERT-Base table drawn (`bertrt perf --plot`)",
    "squad_workload.json": "SQuAD v1.1 dev workload, features/s of bertrt and the peers (`device_engine.py`)",
    "floors.json": "each cell's GEMMs alone and every attention backend (`floors.py`)",
    "floors.png": "bertrt's speed-up over HF beside the fp16 bound (`plot_floors.py`)",
    "matmul_ceiling.json": "the 8192^3 fp16 matmul rate over 0.05 s and over 4 s (`floors.py --ceiling`)",
    "profile_large.json": "where BERT-Large's time goes, per kernel kind (`device_profile.py`)",
    "profile_base.json": "where BERT-Base's time goes at b32 and b1 s128, beside the HF peer's kernels "
                         "(`device_profile.py --config base --hf`)",
    "base_ab.json": "BERT-Base at s128: attention and LayerNorm tilings alone and forced through the engine "
                    "(`device_base_ab.py`)",
    "layernorm_tilings.json": "the LayerNorm's tilings at BERT-Base's and BERT-Large's widths, with the default "
                              "of 2 rows on 4 warps (`device_base_ab.py --sections layernorm`)",
    "loadgen.json.gz": "MLPerf LoadGen: every scenario and backend of one run, with per-batch traces (`device_loadgen.py`)",
    "loadgen_summaries.txt": "LoadGen's own summaries of the `loadgen.json.gz` run",
    "loadgen_server_4200.json.gz": "Server at 4,200 qps: the first rate over capacity",
    "loadgen_server_3650.json": "Server at 3,650 qps, VALID (figures parsed from the run's log)",
    "loadgen_server_3800.json": "Server at 3,800 qps: the first rate over capacity, with Offline and SingleStream",
    "loadgen_accuracy.json": "LoadGen accuracy mode, held-out articles 32-47, with that run's performance rows",
    "loadgen_onnxruntime_cpu.json": "the onnxruntime backend on the CPU provider (128-sample QSL)",
    "loadgen_server_stall.png": "per-batch service times of a Server run that stalled on a Triton compile",
    "loadgen_server_stall_fused.json": "that run's batch trace (fused up-projection)",
    "loadgen_server_stall_cublas.json": "the same build with the cuBLAS up-projection: no stall",
    "ffn_up_projection.json": "the FFN up-projection + bias + GELU by backend, graph replays",
    "tilings.json": "the fused up-projection's and the attention kernel's tilings, graph replays",
    "attention_backends.json": "attention by backend: bertrt's Triton tilings, varlen flash, SDPA flash and cuDNN",
    "attention_unmasked_blocks.json": "the Triton attention kernel alone, with and without masks on whole blocks",
    "attention_unmasked_blocks_ab.json": "the engine with and without masks on whole attention blocks, A B A B",
    "attention_tiling_ab_large.json": "builds that record the attention tiling they timed, against a run-time pick",
    "attention_tiling_ab_base.json": "the same A/B for BERT-Base",
    "attention_timing_ab.json": "builds that time attention on ragged lengths against one sequence",
    "gelu_epilogue_ab.json": "cuBLASLt's GELU_BIAS epilogue in the engine, against the source before it",
    "cublaslt_algorithms.json": "each of cuBLASLt's suggested algorithms per projection, alone and chained",
    "dependent_launch_ab.json": "programmatic dependent launch for the Triton kernels after each GEMM",
    "staging_ab.json": "batch-1 request latency by host-to-device staging path",
    "alternatives.json": "attention, GEMM and HF-peer variants, among them the peer without an attention mask",
    "splitk.json": "split-K for the projections back to hidden width, by token count",
    "ops.json": "each op against its reference and PyTorch, alone",
    "gpu_tests.txt": "the GPU variants of the test suite",
    "train_default_model.json": "how the default model was selected and trained (`device_train.py`)",
    "train_distillation.json": "distillation from the soup and a logit ensemble of its members (`device_train.py`)",
    "train_model_soup.json": "the soup of six fine-tunes (the model card's alternative)",
    "train_model_soup.log": "its training log",
    "train_recipes_and_mrpc.json": "recipe search on articles 0-23 / 24-31, and the MRPC classifier",
    "train_recipes_and_mrpc.log": "its training log",
    "squad_heldout.json": "the default model on held-out articles 32-47, fp32 reference on the CPU",
    "lowprec_accuracy.json": "held-out SQuAD EM/F1 of fp8 and int8 engines per recipe, GPU and CPU simulation "
                             "(`device_lowprec.py`)",
    "lowprec_speed.json": "BERT-Large fp8, int8 and fp16 engines: latency table and SQuAD workload, HF peers in the "
                          "same run (`device_lowprec.py`)",
    "lowprec_floors.json": "BERT-Large's GEMMs alone, chained with each layer's own weights, fp8 and fp16 "
                           "(`device_lowprec.py`)",
    "lowprec_profile.json": "where fp8 and int8 engines spend BERT-Large's time, per kernel kind, b1 and b128 at 384 "
                            "(`device_lowprec.py --sections profile`)",
    "int8_gemm.json": "the int8 GEMM's tilings and epilogues against torch._int_mm and fp16 at BERT-Large's "
                      "projections (`int8_gemm.py`)",
    "loadgen_fp8.json.gz": "MLPerf LoadGen with the fp8 engine (default recipe): Offline, Server, SingleStream",
    "loadgen_fp8_summaries.txt": "LoadGen's own summaries of the `loadgen_fp8.json.gz` run",
    "loadgen_int8.json.gz": "MLPerf LoadGen with the int8 engine (mode 1): Offline, Server, SingleStream",
    "loadgen_int8_summaries.txt": "LoadGen's own summaries of the `loadgen_int8.json.gz` run",
    "serve_load.json": "`bertrt serve` under open-loop load at rising rates, beside the engine alone and the HF "
                       "baseline (`serve_load.py`)",
    "serve_load_p99.png": "that run's p99 and achieved rate against offered load",
    "serve_load_before_heap_freeze.json": "the shared model process before servers froze their heap once warm: "
                                          "four workers, one and eight questions per request",
    "serve_load_fp8.json": "`bertrt serve --workers 8` on the fp8 engine, one and eight questions per request "
                           "(rows rebuilt from the run's client files, `serve_fp8_clients.tar.gz`)",
    "serve_fp8_clients.tar.gz": "the raw per-client latencies of the fp8 serving run",
    "loadgen_one_gpu_devices.json": "LoadGen Offline through `--devices cuda:0` (the several-GPU path) beside "
                                    "`--device cuda:0`, same engine, same run",
    "serve_load_past_capacity.json": "the same server offered 2,400 questions/s and more, and one worker with "
                                     "eight questions per request: past capacity",
    "server_gc_replay.json": "a Server replay with a sleeping backend: no full garbage collection in 20 s",
    "serve_overhead.json": "`bertrt serve`'s own CPU per request over a stand-in model, sources in turn "
                           "(`serve_overhead.py`)",
    "serve_overhead_model_process.json": "`bertrt serve --workers`'s shared model process: its CPU per request "
                                         "apart from the workers', over a stand-in model, sources in turn "
                                         "(`serve_overhead.py --workers 1`)",
    "serve_overhead_tokenizer_pool.json": "the HTTP workers' CPU per request before and after a server stopped "
                                          "tokenising through the tokenizers library's thread pool, with SQuAD's "
                                          "paragraphs in order and each made new (`serve_overhead.py --workers 1 "
                                          "--contexts in-order fresh`)",
    "families.json": "every BERT family on the engine: numerics against HF fp32 and speed against the HF peers "
                     "(`device_families.py`)",
}


def read(path: Path):
    return json.load(gzip.open(path, "rt")) if path.suffix == ".gz" else json.loads(path.read_text())


def environment(report: dict) -> dict:
    return report.get("environment") or report.get("env") or {}


def conditions(report: dict) -> str:
    env = environment(report)
    sha = (env.get("git_sha") or (report.get("provenance") or {}).get("ran_at_commit") or "")[:7] or "unknown"
    parts = [env.get("device_name"), env.get("date", "")[:10] or None,
             f"torch {env['torch']}" if env.get("torch") else None,
             f"triton {env['triton']}" if env.get("triton") else None,
             f"transformers {env['transformers']}" if env.get("transformers") else None, f"source {sha}"]
    return ", ".join(p for p in parts if p)


def latency_table(reports: dict[str, dict]) -> list[str]:
    lines = ["| model | seq | batch | bertrt avg / p99 ms | HF eager ms | HF + CUDA graph ms | best HF / bertrt |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, report in reports.items():
        section = report["sections"].get(f"perf_{model}", {})
        rows = section.get("result", {}).get("rows", [])
        by_cell: dict[tuple[int, int], dict[str, dict]] = {}
        for row in rows:
            by_cell.setdefault((row["seq"], row["batch"]), {})[row["system"]] = row
        for (seq, batch), systems in sorted(by_cell.items()):
            ours = systems.get("bertrt")
            if ours is None:
                continue
            peers = {k: v["avg_ms"] for k, v in systems.items() if k != "bertrt"}
            ratio = f"{min(peers.values()) / ours['avg_ms']:.2f}x" if peers else "-"
            cell = lambda name: f"{peers[name]:.2f}" if name in peers else "-"  # noqa: E731
            lines.append(f"| {model.capitalize()} | {seq} | {batch} | {ours['avg_ms']:.2f} / {ours['p99_ms']:.2f} | "
                         f"{cell('hf')} | {cell('hf-graph')} | {ratio} |")
    return lines


def numerics_lines(reports: dict[str, dict]) -> list[str]:
    lines = []
    for model, report in reports.items():
        n = report["sections"].get(f"numerics_{model}", {}).get("result")
        if n:
            lines.append(f"- BERT-{model.capitalize()}, a ragged batch against the fp32 reference on the engine's "
                         f"weights: max |error| {n['graphs_max_abs_err']:.4f} with CUDA graphs, "
                         f"{n['eager_max_abs_err']:.4f} eager; Hugging Face fp16 {n['hf_fp16_max_abs_err']:.4f}.")
        build = report["sections"].get(f"build_{model}", {}).get("result")
        if build:
            lines.append(f"- BERT-{model.capitalize()} build: {build['build_s']:.1f} s, {build['weights_mib']:.0f} MiB "
                         f"of weights.")
    return lines


def workload_table(report: dict) -> list[str]:
    result = report["sections"]["squad_large"]["result"]
    rows = result["rows"]
    ours = next(r["features_per_s"] for r in rows if r["system"] == "bertrt")
    lines = [f"{result['features']:,} features (384 / 128 / 64), BERT-Large fp16; bertrt packed and sorted by length, "
             f"the peers padded to {result['peer_padding']} in batches of {result['peer_batch']}.", "",
             "| system | features/s | tokens computed | bertrt x |", "| --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['features_per_s']:,.0f} | {r['computed_tokens']:,} | "
                     f"{ours / r['features_per_s']:.2f}x |")
    return lines


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# What a LoadGen file other than the main run is kept for: only those rows go into the README.
LOADGEN_FOCUS = {
    "loadgen_server_4200.json.gz": lambda r: r["scenario"] == "Server",
    "loadgen_server_3800.json": lambda r: r["scenario"] == "Server",
    "loadgen_onnxruntime_cpu.json": lambda r: r["backend"] == "onnxruntime",
}


def loadgen_table(report: dict, keep=lambda r: True) -> list[str]:
    lines = ["| scenario | mode | backend | result | p50 / p90 / p99 ms | LoadGen |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report.get("results", []):
        if "scenario" not in r or not keep(r):
            continue
        settings = r.get("settings") or {}
        scenario = r["scenario"] + (f", {int(settings['target_qps']):,} qps" if r["scenario"] == "Server" else "")
        if r["mode"] == "accuracy":
            acc = r.get("accuracy") or {}
            lines.append(f"| {scenario} | accuracy | {r['backend']} | F1 {acc.get('f1', float('nan')):.2f}, "
                         f"EM {acc.get('exact_match', float('nan')):.2f} ({acc.get('questions', '?')} questions) | | |")
            continue
        lat = r.get("latency_ms") or {}
        # Offline's latencies are those of one query holding every sample: not a figure of merit.
        latency = " / ".join(_ms(lat[k]) for k in ("p50", "p90", "p99")) if lat and r["scenario"] != "Offline" else ""
        value = f"{r['result']:,.1f} samples/s" if r["unit"] == "samples/s" else f"p90 {r['result']:.3f} ms"
        qsl = f" ({r['samples_in_qsl']}-sample QSL)" if r.get("samples_in_qsl", 10833) != 10833 else ""
        lines.append(f"| {scenario}{qsl} | performance | {r['backend']} | {value} | {latency} | {r['verdict']} |")
    return lines


def loadgen_log_table(report: dict) -> list[str]:
    """Rows already formatted by the run's log (a run whose JSON did not come back)."""
    lines = ["| scenario | backend | result | p50 / p90 / p99 ms | LoadGen |", "| --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        latency = "" if r["scenario"] == "Offline" else f"{r['p50_ms']} / {r['p90_ms']} / {r['p99_ms']}"
        lines.append(f"| {r['scenario']} | {r['backend']} | {r['result']} | {latency} | {r['verdict']} |")
    return lines


def lowprec_sections(folder: Path) -> list[str]:
    """Tables of the fp8/int8 results: accuracy per recipe, speed beside fp16, the GEMM floors."""
    out: list[str] = []
    if (folder / "lowprec_accuracy.json").exists():
        report = read(folder / "lowprec_accuracy.json")
        out += ["## Low precision: accuracy", "",
                f"The embedded default model on SQuAD v1.1 dev {report.get('held_out')}, calibrated on "
                f"{report.get('calibration')}; one table per run, with how the FFN up-projection's output was "
                f"rounded (`lowprec_accuracy.json`, {conditions(report)}).", ""]
        for run in report.get("runs", []):
            out += [f"Source {run['commit'][:7]}: {run['ffn_up_projection']}.", "", "| engine | EM | F1 |",
                    "| --- | --- | --- |"]
            out += [f"| {name} | {r['exact_match']:.2f} | {r['f1']:.2f} |" if "f1" in r else f"| {name} | failed | |"
                    for name, r in run["results"].items()]
            out += [""]
    if (folder / "lowprec_speed.json").exists():
        report = read(folder / "lowprec_speed.json")
        runs = report.get("runs", {})
        names = list(runs)
        cells = sorted({(r["seq"], r["batch"]) for run in runs.values() for r in run.get("rows", [])})
        out += ["## Low precision: speed", "",
                f"{report.get('model')}, avg ms per batch, {report.get('iterations')} iterations after "
                f"{report.get('warmup')} warm-up, engines and HF peers in one process (`lowprec_speed.json`, "
                f"{conditions(report)}).", "",
                "| seq | batch | " + " | ".join(f"bertrt {n}" for n in names) + " | best HF |",
                "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
        for seq, batch in cells:
            def ms(run, system="bertrt"):
                got = [r["avg_ms"] for r in run.get("rows", []) if (r["seq"], r["batch"], r["system"]) == (seq, batch, system)]
                return got[0] if got else None
            peers = [v for run in runs.values() for v in (ms(run, "hf"), ms(run, "hf-graph")) if v is not None]
            out += [f"| {seq} | {batch} | " + " | ".join(_ms(ms(runs[n])) if ms(runs[n]) else "" for n in names)
                    + f" | {_ms(min(peers)) if peers else ''} |"]
        work = [(n, r["system"], r["features_per_s"]) for n, run in runs.items()
                for r in (run.get("workload") or {}).get("rows", [])]
        out += ["", "SQuAD v1.1 dev workload, features/s: " + ", ".join(
            f"{'bertrt ' + n if system == 'bertrt' else system} {fps:,.0f}" for n, system, fps in work) + ".", ""]
    if (folder / "lowprec_profile.json").exists():
        report = read(folder / "lowprec_profile.json")
        variants = report.get("variants", {})
        out += ["## Low precision: where the time goes", "",
                f"{report.get('model')}, one eager pass profiled per kernel kind, ms; graph latency beside it "
                "(`lowprec_profile.json`).", "",
                "| engine | source | shape | graph ms | GEMM | attention | LayerNorms | rounding pass | GEMM TFLOP/s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in report.get("runs", []):
            for name, shapes in run.get("profiles", {}).items():
                for shape in shapes if isinstance(shapes, list) else []:
                    k = shape.get("kernel_ms_per_pass", {})
                    out += [f"| {name} ({variants.get(name, '')}) | {run['commit'][:7]} | b{shape['batch']} "
                            f"s{shape['seq']} | {shape['graphs']['p50_ms']:.2f} | {k.get('gemm', 0):.2f} | "
                            f"{k.get('attention', 0):.2f} | {k.get('bias_residual_layernorm', 0):.2f} | "
                            f"{k.get('quantize', 0):.2f} | {shape.get('gemm_tflops', '')} |"]
        out += [""]
    if (folder / "int8_gemm.json").exists():
        report = read(folder / "int8_gemm.json")
        out += ["## Low precision: the int8 GEMM", "",
                f"TOP/s per projection (TFLOP/s for fp16); int8 rows with the engine's mode-1 epilogue "
                f"(`int8_gemm.json`, {conditions(report)}).", "",
                "| projection | M | fp16 | torch._int_mm | default tiling | best tiling |", "| --- | --- | --- | --- | --- | --- |"]
        for name, row in report.get("rows", {}).items() if isinstance(report.get("rows"), dict) else ():
            tilings = row.get("tilings", {})
            best = row.get("best_mode1")
            out += [f"| {name.rsplit('_M', 1)[0]} | {row['M']} | {row['fp16']['tops']:.0f} | "
                    f"{row['int_mm'].get('tops', 0):.0f} | {row.get('default')} "
                    f"{tilings.get('default', {}).get('mode1', {}).get('tops', 0):.0f} | {best} "
                    f"{tilings.get(best, {}).get('mode1', {}).get('tops', 0):.0f} |"]
        out += [""]
    if (folder / "lowprec_floors.json").exists():
        report = read(folder / "lowprec_floors.json")
        out += ["## Low precision: GEMM floors", "",
                f"{report.get('model')}, one CUDA graph (`lowprec_floors.json`, {conditions(report)}).", "",
                "| products | ms | TFLOP/s |", "| --- | --- | --- |"]
        out += [f"| {k} | {v['ms']} | {v['tflops']} |" for k, v in report.get("ms", {}).items()] + [""]
    return out


def _value(v) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)  # "nan" / "inf" come spelled out


def _not_measured(entry: dict) -> str | None:
    """Why a family of ``families.json`` has no figures (skipped, refused by the engine, failed), or None."""
    if entry.get("skipped"):
        return entry["skipped"].split(":")[0]  # "not supported by the engine", "out of time at ..."
    if "error" in entry:
        return f"failed ({entry['error'].split(':')[0]})"
    failed = [k for k in ("build", "numerics", "speed", "speed_long") if "error" in (entry.get(k) or {})]
    return f"failed in {', '.join(failed)}" if failed and "build" in failed else None


def families_section(report: dict) -> list[str]:
    """The BERT families on the engine (``device_families.py``): numerics per family, speed per cell."""
    s = report.get("settings", {})
    ratio, target = s.get("error_ratio", 2), s.get("speedup_target", 1.3)
    families = report.get("families", {})
    long = any((e.get("speed_long") or {}).get("cells") for e in families.values())
    out = ["## BERT families", "",
           "BERT-Base-sized random models of each family with their QA heads, saved as Hugging Face folders and built "
           f"into fp16 engines. Max |error| on a ragged batch against HF fp32 on the same GPU, the engine's beside HF "
           f"fp16's (a family passes at <= {ratio:g}x on both outputs); speed at full batches, {s.get('iterations')} "
           f"iterations after {s.get('warmup')} warm-up"
           + (f" ({s.get('long_iterations')} after {s.get('long_warmup')} at the long shapes)" if long else "")
           + f", peers in the same process ({conditions(report)}; `families.json`).", "",
           "| family | QA logits: bertrt / HF fp16 | last hidden states: bertrt / HF fp16 | passes |",
           "| --- | --- | --- | --- |"]
    speed = ["| family | seq | batch | bertrt avg / p50 ms | HF eager ms | HF + CUDA graph ms | best HF / bertrt |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in families.items():
        why = _not_measured(entry)
        if why:
            out.append(f"| {name} | {why} | | |")
            continue
        outputs = (entry.get("numerics") or {}).get("outputs")
        if outputs:
            errs = [f"{_value(o['engine_max_abs_err'])} / {_value(o['hf_fp16_max_abs_err'])} "
                    + (f"({o['ratio']:.2f}x)" if isinstance(o["ratio"], float) else f"({o['ratio']})")
                    for o in (outputs["qa_logits"], outputs["hidden"])]
            out.append(f"| {name} | {errs[0]} | {errs[1]} | {'yes' if entry['numerics']['pass'] else 'no'} |")
        else:
            out.append(f"| {name} | failed | | |")
        for key in ("speed", "speed_long"):
            for c in (entry.get(key) or {}).get("cells", []):
                peers = {k: v["avg_ms"] for k, v in c["peers"].items()}
                ours = f"{c['bertrt_avg_ms']:.2f} / {c['bertrt_p50_ms']:.2f}" if c["bertrt_avg_ms"] else "failed"
                gain = (f"{c['speedup']:.2f}x" + ("" if c["meets_target"] else f" (< {target:g}x)")
                        if "speedup" in c else "-")
                cell = lambda system: f"{peers[system]:.2f}" if system in peers else "-"  # noqa: E731
                speed.append(f"| {name} | {c['seq']} | {c['batch']} | {ours} | {cell('hf')} | {cell('hf-graph')} | "
                             f"{gain} |")
    return out + [""] + speed + [""]


def serving_section(report: dict) -> list[str]:
    """``bertrt serve`` under load (``serve_load.py``): each sweep's rates, the baseline, the summary."""
    summary = report.get("summary", {})
    out = ["## Serving", "",
           f"`bertrt serve` on random BERT-Large, SQuAD v1.1 dev questions from open-loop loopback clients; "
           f"questions/s offered and achieved, latency from each request's due time (`serve_load.json`, "
           f"{conditions(report)}; drawn in `serve_load_p99.png`).", "",
           "| server | offered q/s | achieved q/s | p50 ms | p99 ms | failures |", "| --- | --- | --- | --- | --- | --- |"]
    sweeps = [(s["name"], s.get("rows", [])) for s in report.get("sweeps", [])]
    baseline = report.get("baseline") or []
    sweeps.append(("HF pipeline behind FastAPI, one request at a time",
                   baseline.get("rows", []) if isinstance(baseline, dict) else baseline))
    for name, rows in sweeps:
        for row in rows:
            if "skipped" in row or "achieved_qps" not in row:
                continue
            out += [f"| {name} | {row['offered_qps']:g} | {row['achieved_qps']:.0f} | {row['p50_ms']:.1f} | "
                    f"{row['p99_ms']:.1f} | {row.get('failures', 0)} |"]
    out += [""]
    for name, s in summary.get("sweeps", {}).items():
        if s.get("engine_alone_qps"):
            out += [f"{name}: {s['qps_within_p99_target']:.0f} questions/s within p99 {summary['p99_target_ms']:g} ms, "
                    f"{100 * s['share_of_engine']:.0f}% of the engine alone ({s['engine_alone_qps']:.0f}/s), "
                    f"{s['times_baseline']:.0f}x the HF baseline's {summary['baseline_qps_within_p99_target']:g}/s."]
    for note in report.get("notes", []):
        out += ["", note]
    return out + [""]


def _overhead_run(report: dict, file: str) -> str:
    """What a serve_overhead.py report measured: model, client, requests and repeats."""
    c = report.get("conditions", {})
    return (f"{c.get('model', 'a stand-in model')}; {c.get('client', '')}; {c.get('requests')} timed requests "
            f"per row after {c.get('warm_requests')}, the median of {c.get('repeats')} servers "
            f"({conditions(report)}; `{file}`)")


def serve_overhead_section(report: dict) -> list[str]:
    out = ["## Server CPU per request", "",
           f"One `bertrt serve` process over {_overhead_run(report, 'serve_overhead.json')}. Requests/s per core "
           "is 1000 / CPU ms; the batch figures come from the server's /metrics.", "",
           "| source | forward | questions / request | CPU ms / request | CPU ms / question | requests/s per core "
           "| questions/s per core | mean batch ms |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report.get("rows", []):
        out.append(f"| {r['source']} | {r['runner']} | {r['questions_per_request']} | {r['cpu_ms_per_request']:.2f} "
                   f"| {r['cpu_ms_per_question']:.2f} | {r['requests_per_s_per_core']:,.0f} "
                   f"| {r['questions_per_s_per_core']:,.0f} | {r.get('mean_batch_ms', 0):.1f} |")
    return out + [""]


def model_process_overhead_section(report: dict, file: str) -> list[str]:
    server = report.get("conditions", {}).get("server", "")
    contexts = any("contexts" in r for r in report.get("rows", []))
    title = ("HTTP workers' CPU per request, paragraphs seen and new" if contexts
             else "Shared model process CPU per request")
    out = [f"## {title}", "",
           f"{server}; {_overhead_run(report, file)}. "
           + ("With fresh contexts every request's paragraph is new to the server, so each is tokenised. "
              if contexts else "") + "Every worker's windows pass through the model process's one interpreter, so its requests/s per core "
           "bounds the server's whatever the number of workers. Its batcher thread (which also sends each "
           "batch's outputs) is shown apart; the rest is the connections' readers.", "",
           "| source | questions / request |" + (" contexts |" if contexts else "")
           + " model process CPU ms / request | its requests/s per core | batcher thread ms "
           "| workers' CPU ms / request |",
           "| --- | --- |" + (" --- |" if contexts else "") + " --- | --- | --- | --- |"]
    for r in report.get("rows", []):
        threads = r.get("model_process_threads_cpu_ms_per_request", {})
        out.append(f"| {r['source']} | {r['questions_per_request']} |" + (f" {r['contexts']} |" if contexts else "")
                   + f" {r['model_process_cpu_ms_per_request']:.3f} "
                   f"| {r['model_process_requests_per_s_per_core']:,.0f} | {threads.get('serve-worker-0', 0):.3f} "
                   f"| {r['workers_cpu_ms_per_request']:.2f} |")
    return out + [""]


def readme(folder: Path) -> str:
    name = folder.name
    files = sorted(p.name for p in folder.iterdir() if p.name != "README.md")
    out = [f"# Results on the {GPUS.get(name, name)}", "",
           f"Generated by `python benchmarks/tables.py` from the JSON files in this folder: edit those (by running",
           "their scripts again), not this file. Each section names its file and the conditions it records.", ""]
    models = {m: read(folder / f"latency_{m}.json") for m in ("large", "base") if (folder / f"latency_{m}.json").exists()}
    if models:
        first = next(iter(models.values()))
        s = first.get("settings", {})
        out += ["## Latency", "",
                f"fp16, random weights, full batches of one length, {s.get('iterations')} iterations after "
                f"{s.get('warmup')} warm-up, peers in the same process ({conditions(first)}; "
                + ", ".join(f"`latency_{m}.json`" for m in models) + ").", ""]
        out += latency_table(models) + [""] + numerics_lines(models) + [""]
    if (folder / "squad_workload.json").exists():
        report = read(folder / "squad_workload.json")
        out += ["## SQuAD workload", "", f"`squad_workload.json` ({conditions(report)}).", ""]
        out += workload_table(report) + [""]
    if (folder / "floors.json").exists() and models:
        floors = read(folder / "floors.json")
        merged = {"sections": {k: v for r in models.values() for k, v in r["sections"].items()}}
        rows = cells(merged, floors)
        if rows:
            out += ["## What fp16 allows", "",
                    "Each cell's bound: the model's GEMMs alone (bare products, each layer's own weights, one CUDA "
                    "graph) plus every layer's attention by the fastest backend measured; no fp16 engine on cuBLAS can "
                    f"take less (`floors.json`, {conditions(floors)}; drawn in `floors.png`).", ""]
            out += floors_markdown(rows).rstrip("\n").split("\n") + [""]
    for loadgen in ("loadgen.json.gz", "loadgen_accuracy.json", "loadgen_server_4200.json.gz",
                    "loadgen_server_3800.json", "loadgen_onnxruntime_cpu.json", "loadgen_fp8.json.gz",
                    "loadgen_int8.json.gz"):
        if (folder / loadgen).exists():
            report = read(folder / loadgen)
            durations = report.get("durations_s") or {}
            title = "LoadGen" if loadgen == "loadgen.json.gz" else f"LoadGen: `{loadgen}`"
            keep = LOADGEN_FOCUS.get(loadgen, lambda r: True)
            accuracy = any(r.get("mode") == "accuracy" and keep(r) for r in report.get("results", []))
            precision = next((p for p in ("fp8", "int8") if p in loadgen), "fp16")
            model = ("BERT-Large random weights, fp32 on onnxruntime's CPU provider (16 cores: the image had no CUDA "
                     "provider)" if "onnxruntime" in loadgen else f"BERT-Large random weights {precision}")
            out += [f"## {title}", "",
                    model
                    + (" (accuracy rows: the embedded default model on held-out articles 32-47)" if accuracy else "")
                    + f", SQuAD v1.1 dev QSL, {durations.get('bertrt', 0):g} s minimum per bertrt run and "
                    f"{durations.get('peers', 0):g} s per peer run ({conditions(report)}; `{loadgen}`).", ""]
            out += loadgen_table(report, keep) + [""]
    if (folder / "loadgen_server_3650.json").exists():
        report = read(folder / "loadgen_server_3650.json")
        out += ["## LoadGen: `loadgen_server_3650.json`", "", f"{report['what']} ({conditions(report)}).", ""]
        out += loadgen_log_table(report) + [""]
    out += lowprec_sections(folder)
    if (folder / "serve_overhead.json").exists():
        out += serve_overhead_section(read(folder / "serve_overhead.json"))
    for file in ("serve_overhead_model_process.json", "serve_overhead_tokenizer_pool.json"):
        if (folder / file).exists():
            out += model_process_overhead_section(read(folder / file), file)
    if (folder / "families.json").exists():
        out += families_section(read(folder / "families.json"))
    if (folder / "serve_load.json").exists():
        out += serving_section(read(folder / "serve_load.json"))
    out += ["## Files", "", "| file | what |", "| --- | --- |"]
    out += [f"| `{f}` | {FILES.get(f, '')} |" for f in files]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 where a README is stale")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for folder in sorted(p for p in args.results.iterdir() if p.is_dir()):
        text = readme(folder)
        path = folder / "README.md"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale (run python benchmarks/tables.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
