"""Summarizes scripts/bench_anchors.sh's runs: the median over repeats of throughput and p50/p99
latency per system, concurrency and load generator; the ratios of ours to each anchor; the
ceiling of ONNX Runtime in-process. Writes results.json and table.md into --results and the plot
of throughput against p99 (one line per system, points at concurrency 1, 8, 64) to --plot.

A system named SYSTEM-int8 is SYSTEM serving the int8 form of the model; anchors are compared
with ours on the same form. The goals of the quantized-serving work are judged at the end (int8
served against fp32 in-process; fp32 served against the in-process best and, at concurrency 1,
against the plain server, in the separate runs and head to head with both servers up at once),
beside the offline gate's accuracy figures (--card).

Usage: summarize.py --results target/anchors --systems "us gateway triton mlserver plain us-int8"
       --plot bench/anchors/throughput-p99.png [--card models/minilm-l6/2/card.json]
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


def base(system):
    """The server of a system name (`triton-int8` -> `triton`)."""
    return system.removesuffix("-int8")


def name(system):
    return NAMES[base(system)] + (", int8 model" if system.endswith("-int8") else "")


def ours_for(system):
    """Our inference service on the same model form as `system`."""
    return "us-int8" if system.endswith("-int8") else "us"


def adjacent_ceilings(results, system):
    """The fp32 in-process ceiling measured right after each of `system`'s c=64 runs, by repeat."""
    found = {}
    for path in sorted(glob.glob(f"{results}/inprocess-adjacent-{system}-r*.json")):
        repeat = path.rsplit("-r", 1)[1].removesuffix(".json")
        with open(path) as f:
            found[repeat] = json.load(f)["best"]["sentences_per_sec"]
    return found


def run_of(results, generator, system, c, repeat):
    if generator == "perf_analyzer":
        path = f"{results}/pa-{system}-c{c}-r{repeat}.csv"
        return perf_analyzer(path) if os.path.exists(path) else None
    path = f"{results}/loadgen-{system}-c{c}-r{repeat}.json"
    return loadgen(path) if os.path.exists(path) else None


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


def head_to_head_lines(results):
    """The concurrency-1 comparison of ours with the plain server, both up at once: loadgen
    alternating request by request (throughput as 1 / mean latency of each side), and
    perf_analyzer runs alternating, by round. Empty when the harness did not run it."""
    rows = []
    for path in sorted(glob.glob(f"{results}/h2h-loadgen-r*.json")):
        with open(path) as f:
            r = json.load(f)
        if r["errors"] or r["versus"]["errors"]:
            continue
        plain, ours = r["latency"], r["versus"]["latency"]
        rows.append(("loadgen, requests alternating", path.rsplit("-r", 1)[1].removesuffix(".json"),
                     1000.0 / ours["mean_ms"], ours["p50_ms"], ours["p99_ms"],
                     1000.0 / plain["mean_ms"], plain["p50_ms"], plain["p99_ms"]))
    for path in sorted(glob.glob(f"{results}/h2h-pa-us-r*.csv")):
        repeat = path.rsplit("-r", 1)[1].removesuffix(".csv")
        other = f"{results}/h2h-pa-plain-r{repeat}.csv"
        if os.path.exists(other):
            rows.append(("perf_analyzer, runs alternating", repeat, *perf_analyzer(path), *perf_analyzer(other)))
    if not rows:
        return []
    lines = ["| generator | round | ours infer/s | p50 ms | p99 ms | plain infer/s | p50 ms | p99 ms | ours/plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for generator, repeat, ot, o50, o99, pt, p50, p99 in rows:
        lines.append(f"| {generator} | {repeat} | {ot:.1f} | {o50:.2f} | {o99:.2f} | {pt:.1f} | {p50:.2f} | "
                     f"{p99:.2f} | {ot / pt:.2f}× |")
    for generator in sorted({row[0] for row in rows}):
        mine = [row for row in rows if row[0] == generator]
        ratio = median([row[2] / row[5] for row in mine])
        o50, p50 = median([row[3] for row in mine]), median([row[6] for row in mine])
        o99, p99 = median([row[4] for row in mine]), median([row[7] for row in mine])
        met = ratio >= 1.0 and o50 <= p50 and o99 <= p99
        lines.append(
            f"\n{generator}, medians: throughput **{ratio:.2f}×** (goal ≥ 1.0×), p50 {o50:.2f} vs {p50:.2f} ms, "
            f"p99 {o99:.2f} vs {p99:.2f} ms (goal: no worse): **{'met' if met else 'missed'}**."
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", required=True)
    parser.add_argument("--systems", required=True)
    parser.add_argument("--plot", required=True)
    parser.add_argument("--card", help="card.json of the int8 version: the offline gate's figures")
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
    inprocess_int8 = None
    if os.path.exists(f"{args.results}/inprocess-int8.json"):
        with open(f"{args.results}/inprocess-int8.json") as f:
            inprocess_int8 = json.load(f)["best"]
    # The ceiling measured right after each of our concurrency-64 runs, by repeat.
    adjacent = adjacent_ceilings(args.results, "us")
    adjacent_int8 = adjacent_ceilings(args.results, "us-int8")

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
                ours = by_system.get(ours_for(system), {}).get(str(c))
                ratio = p99_ratio = ""
                if base(system) in ANCHORS and ours:
                    ratio = f"{ours['throughput'] / r['throughput']:.2f}×"
                    p99_ratio = f"{r['p99_ms'] / ours['p99_ms']:.2f}×"
                lines.append(
                    f"| {name(system)} | {c} | {r['throughput']:.1f} | {r['p50_ms']:.2f} | "
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
                run = run_of(args.results, generator, "us", 64, repeat)
                if run is not None:
                    ratios.append((run[0] / best, run[0], best))
            if ratios:
                lines.append(
                    "Against the ceiling measured right after each run (same minutes): "
                    + ", ".join(f"{o:.1f} / {b:.1f} = {100 * r:.1f}%" for r, o, b in ratios)
                    + f"; median **{100 * median([r for r, _, _ in ratios]):.1f}%** (goal ≥ 90%)."
                )
        int8_64 = by_system.get("us-int8", {}).get("64")
        if int8_64:
            ratios = []
            for repeat, best in sorted(adjacent_int8.items()):
                run = run_of(args.results, generator, "us-int8", 64, repeat)
                if run is not None:
                    ratios.append((run[0] / best, run[0], best))
            lines.append(
                f"\nOurs on the int8 model at concurrency 64: {int8_64['throughput']:.1f} infer/s"
                + (f" (int8 in-process best {inprocess_int8['sentences_per_sec']:.1f} at batch "
                   f"{inprocess_int8['batch']})" if inprocess_int8 else "")
                + ". Against the fp32 in-process ceiling measured right after each run: "
                + ", ".join(f"{o:.1f} / {b:.1f} = {r:.2f}×" for r, o, b in ratios)
                + (f"; median **{median([r for r, _, _ in ratios]):.2f}×** (goal ≥ 1.8×)." if ratios else ".")
            )
        ours1, plain1 = by_system.get("us", {}).get("1"), by_system.get("plain", {}).get("1")
        if ours1 and plain1:
            lines.append(
                f"\nConcurrency 1, fp32, ours against the plain Python server: throughput "
                f"**{ours1['throughput'] / plain1['throughput']:.2f}×** (goal ≥ 1.0×), p50 "
                f"{ours1['p50_ms']:.2f} vs {plain1['p50_ms']:.2f} ms, p99 {ours1['p99_ms']:.2f} vs "
                f"{plain1['p99_ms']:.2f} ms (goal: no worse)."
            )
    head_to_head = head_to_head_lines(args.results)
    if head_to_head:
        lines.append("\n### Concurrency 1 head to head: ours and the plain server up at once, driven in turn\n")
        lines.extend(head_to_head)
    if args.card and os.path.exists(args.card):
        with open(args.card) as f:
            figures = json.load(f)["gate"]["figures"]
        cos, ndcg = figures["cosine"], figures["ndcg_at_10"]
        lines.append(
            f"\nAccuracy of the int8 model (offline gate, held-out set): embedding cosine to fp32 min "
            f"{cos['min']:.4f}, mean {cos['mean']:.4f}; NDCG@10 of Rank {ndcg['parent']:.4f} (fp32) → "
            f"{ndcg['candidate']:.4f} (int8)."
        )
    text = "\n".join(lines).lstrip("\n") + "\n"
    with open(f"{args.results}/table.md", "w") as f:
        f.write(text)
    with open(f"{args.results}/results.json", "w") as f:
        json.dump({"table": table, "inprocess_best": inprocess["best"], "inprocess_adjacent": adjacent,
                   "inprocess_int8_best": inprocess_int8, "inprocess_adjacent_int8": adjacent_int8},
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
            ax.plot(xs, ys, marker="o", label=name(system), color=COLORS[base(system)],
                    linestyle="--" if system.endswith("-int8") else "-")
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
