"""How far fp16 can go: bertrt's speed-up over the best Hugging Face peer per cell of the latency
table, next to the most any engine could reach with cuBLAS's fp16 GEMMs (a 1.5x line drawn).

    python benchmarks/plot_floors.py OUT.png FLOORS_JSON LATENCY_JSON [LATENCY_JSON ...] [--table OUT.md]

    python benchmarks/plot_floors.py benchmarks/results/h200/floors.png benchmarks/results/h200/floors.json \
        benchmarks/results/h200/latency_large.json benchmarks/results/h200/latency_base.json

LATENCY_JSON is ``device_engine.py``'s result for one or more models (the table, peers measured
in the same run); FLOORS_JSON is ``floors.py``'s (same machine). A cell's bound is the best HF
peer's time over the shortest time an engine could take there: the model's GEMMs alone without
epilogues ("no_epilogue") plus every layer's attention by the fastest backend measured, before
any LayerNorm, bias, GELU, embedding or launch gap. Where the bound is under 1.5, so is any engine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LAYERS = {"large": 24, "base": 12}
TARGET = 1.5


def cells(engine_report: dict, floors_report: dict) -> list[dict]:
    """One row per (model, seq, batch): bertrt and best-HF ms, the lower bound and both ratios."""
    floors = floors_report["sections"]["floors"]["result"]
    rows = []
    for model, layers in LAYERS.items():
        section = engine_report["sections"].get(f"perf_{model}", {})
        if not section.get("ok", True) or "result" not in section:
            continue
        times: dict[tuple[int, int], dict[str, float]] = {}
        for row in section["result"]["rows"]:
            times.setdefault((row["seq"], row["batch"]), {})[row["system"]] = row["avg_ms"]
        for (seq, batch), by_system in sorted(times.items()):
            peers = {k: v for k, v in by_system.items() if k != "bertrt"}
            floor = floors.get(f"{model}_T{seq * batch}")
            if "bertrt" not in by_system or not peers or floor is None:
                continue
            best_peer = min(peers, key=peers.get)
            attention = floor["attention_ms_per_layer"]["fastest_ms"] * layers
            bound = floor["no_epilogue"]["ms_per_pass"] + attention
            hf = peers[best_peer]
            rows.append({"model": model, "seq": seq, "batch": batch, "bertrt_ms": by_system["bertrt"],
                         "best_peer": best_peer, "best_peer_ms": hf, "gemm_ms": floor["no_epilogue"]["ms_per_pass"],
                         "attention_ms": attention, "bound_ms": bound, "ratio": hf / by_system["bertrt"],
                         "ratio_bound": hf / bound})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | seq | batch | bertrt ms | best HF ms | bertrt / HF | GEMMs alone ms | + fastest attention ms | most any fp16 engine can reach |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        reach = f"{r['ratio_bound']:.2f}x" + ("" if r["ratio_bound"] >= TARGET else " (< 1.5x)")
        lines.append(f"| {r['model'].capitalize()} | {r['seq']} | {r['batch']} | {r['bertrt_ms']:.3f} | "
                     f"{r['best_peer_ms']:.3f} ({r['best_peer']}) | {r['ratio']:.2f}x | {r['gemm_ms']:.3f} | "
                     f"{r['bound_ms']:.3f} | {reach} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in LAYERS if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [r["ratio"] for r in mine], width=0.4, label="bertrt (measured)")
        ax.bar([i + 0.2 for i in x], [r["ratio_bound"] for r in mine], width=0.4, color="lightgray",
               edgecolor="gray", label="bound: GEMMs alone + fastest attention")
        ax.axhline(TARGET, color="red", linestyle="--", linewidth=1, label="1.5x over the best HF peer")
        ax.set_xticks(list(x), [f"b{r['batch']}\ns{r['seq']}" for r in mine])
        ax.set_ylabel("speed-up over the best Hugging Face peer")
        ax.set_title(f"BERT-{model.capitalize()} fp16")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("floors_json", help="floors.py's JSON")
    parser.add_argument("latency_json", nargs="+", help="device_engine.py's JSON: latency_large.json, latency_base.json")
    parser.add_argument("--table", help="also write the rows as a Markdown table here")
    args = parser.parse_args(argv)
    sections = {k: v for path in args.latency_json for k, v in json.loads(Path(path).read_text())["sections"].items()}
    rows = cells({"sections": sections}, json.loads(Path(args.floors_json).read_text()))
    if not rows:
        raise SystemExit("no cell has both a perf row and a floor")
    print(f"wrote {plot(rows, args.out)}")
    if args.table:
        Path(args.table).write_text(markdown(rows))
        print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
