"""bench.json -> a console table, bench.md and plots, readable by a person first."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from echodeploy.agreement import summary  # noqa: E402

SEED_PATH = "torch"


def _vs_seed(result: dict, point: dict) -> float | None:
    """A point's throughput over the seed-equivalent torch path's best, same model and run."""
    seed = [p["throughput"] for p in result["points"] if p["model"] == point["model"] and p["backend"] == SEED_PATH]
    return point["throughput"] / max(seed) if seed else None


def points_table(result: dict) -> list[str]:
    lines = ["| model | backend | precision | batch | conc | items/s | p50 ms | p90 ms | p95 ms | p99 ms | avg ms "
             "| roofline | vs seed path | stable |", "|" + "---|" * 14]
    for p in result["points"]:
        speedup = _vs_seed(result, p)
        lines.append(
            f"| {p['model']} | {p['backend']} | {p.get('precision', '')} | {p['batch']} | {p['concurrency']} "
            f"| {p['throughput']:.2f} "
            + " ".join(f"| {p[f'p{q}_ms']:.0f}" for q in (50, 90, 95, 99))
            + f" | {p['avg_ms']:.0f} | {p['roofline']:.1%} {p['roofline_peak']} | "
            + (f"{speedup:.2f}x" if speedup else "") + f" | {'yes' if p['stable'] else '**no**'} |")
    return lines


def server_table(result: dict) -> list[str]:
    rows = [p for p in result["points"] if p.get("server")]
    if not rows:
        return []
    lines = ["| model (step) | batch | conc | queue ms | compute input ms | compute infer ms | compute output ms |",
             "|" + "---|" * 7]
    for p in rows:
        for model, times in p["server"].items():
            lines.append(f"| {model} | {p['batch']} | {p['concurrency']} | "
                         + " | ".join(f"{times[f'{f}_ms']:.1f}" for f in
                                      ("queue", "compute_input", "compute_infer", "compute_output")) + " |")
    return lines


def e2e_table(result: dict) -> list[str]:
    if not result["end_to_end"]:
        return []
    seed = {r["family"]: r["items_per_s"] for r in result["end_to_end"] if r["backend"] == SEED_PATH}
    lines = ["| family | backend | files (ok) | batch | seconds | files/s | vs seed path | roofline |",
             "|" + "---|" * 8]
    for r in result["end_to_end"]:
        ratio = f"{r['items_per_s'] / seed[r['family']]:.2f}x" if r["family"] in seed else ""
        roofline = f"{r['roofline']:.1%} {r['roofline_peak']}" if r["roofline"] is not None else ""
        lines.append(f"| {r['family']} | {r['backend']} | {r['items']} ({r['ok']}) | {r['batch']} | "
                     f"{r['seconds']:.1f} | {r['items_per_s']:.2f} | {ratio} | {roofline} |")
    return lines


def _agreement_text(row: dict) -> str:
    if "passed" in row:
        return summary(row)
    parts = [f"{column}: mean |change| {v['mean_abs_change']:.4g}, max {v['max_abs_change']:.4g}"
             for column, v in row.items() if isinstance(v, dict) and "mean_abs_change" in v]
    parts += [f"AUC change ({column}) {change:+.4f}" for column, change in row.get("auc_change", {}).items()]
    return f"{row['rows']} rows; " + "; ".join(parts)


def agreement_table(result: dict) -> list[str]:
    if not result["agreement"]:
        return []
    lines = ["| model | variant vs fp32 | compared | agreement |", "|---|---|---|---|"]
    for row in result["agreement"]:
        text = _agreement_text(row).replace("|", "\\|")  # a table cell
        if row.get("passed") is False:
            text = f"**{text}**"
        lines.append(f"| {row['model']} | {row['backend']} | {row['level']} | {text} |")
    return lines


def _peak_spread(result: dict) -> str:
    measured = result.get("peaks_measured")
    if not measured:
        return ""
    return " (fp32 measured {:.0f} before, {:.0f} after)".format(
        measured["before"]["fp32_matmul_gflops"], measured["after"]["fp32_matmul_gflops"])


def markdown(result: dict) -> str:
    m, peaks = result["machine"], result["peaks"]
    parts = [
        f"# echodeploy bench, {result['date']}", "",
        f"Machine: {m['cpu']}, {m['threads']} threads; torch {m['torch']}, onnxruntime {m['onnxruntime']}"
        + (f", openvino {m['openvino']}" if m.get("openvino") else "") + ". "
        f"Peaks measured in this run (the higher of before and after the points): fp32 matmul "
        f"{peaks['fp32_matmul_gflops']:.0f} GFLOP/s, bf16 matmul {peaks['bf16_matmul_gflops']:.0f} GFLOP/s"
        + _peak_spread(result) + ". Roofline = model FLOPs per item x "
        "items/s / the matmul peak of the backend's arithmetic (torch, ONNX Runtime or OpenVINO, the fastest; "
        "bf16 for torch-bf16, fp32 otherwise, int8 included: its fraction can pass 100%).",
    ]
    if result["untrained"]:
        parts.append("Weights: seeded random (BatchNorm statistics re-estimated on echo-like inputs); "
                     "speed does not depend on them, agreement does: re-run with --weights-dir.")
    for title, table in (("Model only (tensors in memory)", points_table(result)),
                         ("Triton server-side times per request", server_table(result)),
                         ("End to end (files -> results, decoding included)", e2e_table(result)),
                         ("Agreement with fp32 (bold: outside the threshold)", agreement_table(result))):
        if table:
            parts += ["", f"## {title}", "", *table]
    return "\n".join(parts) + "\n"


def console(result: dict) -> str:
    """The model-only table, aligned for a terminal."""
    lines = [f"{'model':14s} {'backend':17s} {'prec':5s} {'batch':>5s} {'conc':>4s} {'items/s':>8s} {'p50 ms':>8s} "
             f"{'p99 ms':>8s} {'roofline':>13s} {'vs seed':>7s}"]
    for p in result["points"]:
        speedup = _vs_seed(result, p)
        lines.append(f"{p['model']:14s} {p['backend']:17s} {p.get('precision', ''):5s} {p['batch']:5d} "
                     f"{p['concurrency']:4d} "
                     f"{p['throughput']:8.2f} {p['p50_ms']:8.0f} {p['p99_ms']:8.0f} {p['roofline']:6.1%} "
                     f"{p['roofline_peak']} "
                     + (f"{speedup:6.2f}x" if speedup else ""))
    for row in result["agreement"]:
        flag = "" if row.get("passed", True) else "  <-- FAILS"
        lines.append(f"{row['model']} {row['backend']} vs fp32 ({row['level']}): {_agreement_text(row)}{flag}")
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[Path]:
    models = sorted({p["model"] for p in result["points"]})
    if not models:
        return []
    written = []
    for metric, label, name in (("throughput", "items/s", "throughput.png"), ("p99_ms", "p99 latency (ms)", "p99.png")):
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            series = {}
            for p in result["points"]:
                if p["model"] == model:
                    series.setdefault(f"{p['backend']} b{p['batch']}", []).append((p["concurrency"], p[metric]))
            for key, values in sorted(series.items()):
                values.sort()
                ax.plot(*zip(*values), marker="o", label=key)
            ax.set(title=model, xlabel="concurrency", ylabel=label)
            ax.set_xticks(sorted({p["concurrency"] for p in result["points"]}))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        best = {}
        for p in result["points"]:
            if p["model"] == model and p["throughput"] > best.get(p["backend"], {}).get("throughput", 0):
                best[p["backend"]] = p
        names = sorted(best)
        ax.boxplot([best[n]["latencies_ms"] for n in names], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1),
                      [f"{n}\nb{best[n]['batch']} x{best[n]['concurrency']}" for n in names], fontsize=7)
        ax.set(title=f"{model}: latency at each backend's best point", ylabel="ms")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    return [*written, out / "latency.png"]


def write_report(result: dict, out: Path) -> None:
    (out / "bench.md").write_text(markdown(result))
    plots(result, out)
