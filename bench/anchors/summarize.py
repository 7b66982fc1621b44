"""Summarizes scripts/bench_anchors.sh's runs: the median over repeats of throughput and p50/p99
latency per system, concurrency and load generator; the ratios of ours to each anchor; the
ceiling of ONNX Runtime in-process. Writes results.json and table.md into --results and the plot
of throughput against p99 (one line per system, points at concurrency 1, 8, 64) to --plot.

Usage: summarize.py --results target/anchors --systems "us gateway triton mlserver plain"
       --plot bench/anchors/throughput-p99.png
"""

import argparse
import csv
import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {
    "us": "ours: inference service",
    "gateway": "ours: through the gateway",
    "triton": "Triton 2.51 (PyTriton 0.7.0)",
    "mlserver": "MLServer 1.7.1",
    "plain": "plain Python gRPC server",
}
COLORS = {"us": "tab:blue", "gateway": "tab:orange", "triton": "tab:green", "mlserver": "tab:red",
          "plain": "tab:purple"}
ANCHORS = ["triton", "mlserver", "plain"]
CONCURRENCY = [1, 8, 64]


def median(values):
    return statistics.median(values) if values else None


def perf_analyzer(path):
    """(infer/s, p50 ms, p99 ms) from a perf_analyzer CSV."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f))
    return (
        float(row["Inferences/Second"]),
        float(row["p50 latency"]) / 1000.0,
        float(row["p99 latency"]) / 1000.0,
    )


def loadgen(path):
    with open(path) as f:
        r = json.load(f)
    if r["errors"]:
        return None
    return (r["requests_per_sec"], r["latency"]["p50_ms"], r["latency"]["p99_ms"])


def collect(results, system, c, generator):
    if generator == "perf_analyzer":
        files, read = sorted(glob.glob(f"{results}/pa-{system}-c{c}-r*.csv")), perf_analyzer
    else:
        files, read = sorted(glob.glob(f"{results}/loadgen-{system}-c{c}-r*.json")), loadgen
    runs = [x for x in (read(p) for p in files) if x is not None]
    if not runs:
        return None
    return {
        "repeats": len(runs),
        "throughput": median([r[0] for r in runs]),
        "p50_ms": median([r[1] for r in runs]),
        "p99_ms": median([r[2] for r in runs]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", required=True)
    parser.add_argument("--systems", required=True)
    parser.add_argument("--plot", required=True)
    args = parser.parse_args()
    systems = args.systems.split()

    table = {}
    for generator in ("perf_analyzer", "loadgen"):
        for system in systems:
            for c in CONCURRENCY:
                found = collect(args.results, system, c, generator)
                if found:
                    table.setdefault(generator, {}).setdefault(system, {})[str(c)] = found
    with open(f"{args.results}/inprocess.json") as f:
        inprocess = json.load(f)
    ceiling = inprocess["best"]["sentences_per_sec"]
    # The ceiling measured right after each of our concurrency-64 runs, by repeat.
    adjacent = {}
    for path in sorted(glob.glob(f"{args.results}/inprocess-adjacent-r*.json")):
        repeat = path.rsplit("-r", 1)[1].removesuffix(".json")
        with open(path) as f:
            adjacent[repeat] = json.load(f)["best"]["sentences_per_sec"]

    lines = []
    for generator, by_system in table.items():
        lines.append(f"\n### {generator} (median of the repeats)\n")
        lines.append("| system | c | infer/s | p50 ms | p99 ms | ours/anchor throughput | anchor/ours p99 |")
        lines.append("|---|---|---|---|---|---|---|")
        for system in systems:
            for c in CONCURRENCY:
                r = by_system.get(system, {}).get(str(c))
                if not r:
                    continue
                ours = by_system.get("us", {}).get(str(c))
                ratio = p99_ratio = ""
                if system in ANCHORS and ours:
                    ratio = f"{ours['throughput'] / r['throughput']:.2f}×"
                    p99_ratio = f"{r['p99_ms'] / ours['p99_ms']:.2f}×"
                lines.append(
                    f"| {NAMES[system]} | {c} | {r['throughput']:.1f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {ratio} | {p99_ratio} |"
                )
        ours64 = by_system.get("us", {}).get("64")
        if ours64:
            lines.append(
                f"\nOurs at concurrency 64: {ours64['throughput']:.1f} infer/s = "
                f"{100 * ours64['throughput'] / ceiling:.1f}% of ONNX Runtime in-process's best "
                f"({ceiling:.1f} sentences/s at batch {inprocess['best']['batch']})."
            )
            ratios = []
            for repeat, best in sorted(adjacent.items()):
                if generator == "perf_analyzer":
                    run = perf_analyzer(f"{args.results}/pa-us-c64-r{repeat}.csv")
                else:
                    run = loadgen(f"{args.results}/loadgen-us-c64-r{repeat}.json")
                if run is not None:
                    ratios.append((run[0] / best, run[0], best))
            if ratios:
                lines.append(
                    "Against the ceiling measured right after each run (same minutes): "
                    + ", ".join(f"{o:.1f} / {b:.1f} = {100 * r:.1f}%" for r, o, b in ratios)
                    + f"; median **{100 * median([r for r, _, _ in ratios]):.1f}%**."
                )
    text = "\n".join(lines).lstrip("\n") + "\n"
    with open(f"{args.results}/table.md", "w") as f:
        f.write(text)
    with open(f"{args.results}/results.json", "w") as f:
        json.dump({"table": table, "inprocess_best": inprocess["best"], "inprocess_adjacent": adjacent},
                  f, indent=2)
    print(text)

    fig, axes = plt.subplots(1, len(table), figsize=(7 * len(table), 5), squeeze=False)
    for ax, (generator, by_system) in zip(axes[0], table.items()):
        for system in systems:
            points = [by_system.get(system, {}).get(str(c)) for c in CONCURRENCY]
            xs = [p["p99_ms"] for p in points if p]
            ys = [p["throughput"] for p in points if p]
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", label=NAMES[system], color=COLORS[system])
            for c, p in zip(CONCURRENCY, points):
                if p:
                    ax.annotate(f"c={c}", (p["p99_ms"], p["throughput"]), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))
        ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1,
                   label="ONNX Runtime in-process, best batch")
        ax.set_xscale("log")
        ax.set_xlabel("p99 latency (ms, log scale)")
        ax.set_ylabel("throughput (infer/s)")
        ax.set_title(f"minilm-l6 on 2 CPU cores, driven by {generator}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
