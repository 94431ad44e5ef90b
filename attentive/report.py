"""Reports of a search (attentive.select): the candidate table as CSV and JSON, the Pareto plot, the summary
(search.json) and its text form. Every file is written atomically (attentive.fileio).

A candidate row is a dict, the same in pareto.json and pareto.csv: ``id`` (order of discovery), ``arch``
(AttentiveNAS dict), ``mflops``, ``mparams``, ``predicted`` (the search objective's score, None when never
scored), ``holdout_top1`` (None unless measured), ``test_top1`` (exported archs only), ``roles`` (why it was
measured: ``min``, ``max``, ``top<k>@<budget>``, ``front``), ``on_front`` (measured front), ``on_predicted_front``
and ``exported_for_mflops`` (the budgets it was exported for).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import write_bytes_atomic, write_json_atomic, write_text_atomic

CSV_COLUMNS = ("id", "mflops", "mparams", "predicted", "holdout_top1", "test_top1", "on_front",
               "on_predicted_front", "roles", "exported_for_mflops", "arch")
PARETO_JSON, PARETO_CSV, PARETO_PNG, SUMMARY_JSON = "pareto.json", "pareto.csv", "pareto.png", "search.json"


def budget_dir_name(budget: float) -> str:
    """The export directory of a budget inside the search output, e.g. ``subnet_5mflops``."""
    return f"subnet_{budget:g}mflops"


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """`rows` as CSV text with header `CSV_COLUMNS` (None -> empty cell, lists joined by ';')."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r["id"], f"{r['mflops']:.6f}", f"{r['mparams']:.6f}",
            "" if r["predicted"] is None else f"{r['predicted']:.6f}",
            "" if r["holdout_top1"] is None else f"{r['holdout_top1']:.4f}",
            "" if r["test_top1"] is None else f"{r['test_top1']:.4f}",
            int(r["on_front"]), int(r["on_predicted_front"]), ";".join(r["roles"]),
            ";".join(f"{b:g}" for b in r["exported_for_mflops"]), json.dumps(r["arch"], sort_keys=True),
        ])
    return buf.getvalue()


def plot_pareto(path: str | Path, rows: Sequence[Mapping[str, Any]], budgets: Sequence[float], title: str,
                predicted_is_accuracy: bool) -> None:
    """Held-out top-1 against MFLOPs: measured archs, measured front, exports (stars), the min and max nets, the
    budgets, and the predicted front when the objective predicts accuracy (same axis). PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    measured = [r for r in rows if r["holdout_top1"] is not None]
    if predicted_is_accuracy:
        pf = sorted((r for r in rows if r["on_predicted_front"]), key=lambda r: r["mflops"])
        if pf:
            ax.step([r["mflops"] for r in pf], [r["predicted"] for r in pf], where="post", color="tab:gray",
                    ls="--", lw=1, label="predicted front (predictor)")
    ax.scatter([r["mflops"] for r in measured], [r["holdout_top1"] for r in measured], s=18, color="tab:blue",
               alpha=0.6, label="evaluated archs (held-out top-1)")
    front = sorted((r for r in measured if r["on_front"]), key=lambda r: r["mflops"])
    ax.step([r["mflops"] for r in front], [r["holdout_top1"] for r in front], where="post", color="tab:blue",
            lw=1.5, label="measured front")
    exported = [r for r in measured if r["exported_for_mflops"]]
    ax.scatter([r["mflops"] for r in exported], [r["holdout_top1"] for r in exported], marker="*", s=220,
               color="tab:red", zorder=5, label="exported subnets")
    for r in exported:
        label = f"≤{', '.join(f'{b:g}' for b in r['exported_for_mflops'])} MFLOPs"
        ax.annotate(label, (r["mflops"], r["holdout_top1"]), textcoords="offset points", xytext=(6, -12),
                    fontsize=8, color="tab:red")
    for role, label in (("min", "min net"), ("max", "max net")):
        for r in measured:
            if role in r["roles"]:
                ax.scatter([r["mflops"]], [r["holdout_top1"]], marker="s", s=50, color="black", zorder=6)
                ax.annotate(label, (r["mflops"], r["holdout_top1"]), textcoords="offset points", xytext=(6, 4),
                            fontsize=9)
    max_mflops = max(r["mflops"] for r in rows)
    for b in budgets:
        if b <= max_mflops:  # a budget above the largest subnet is marked by its exported star only
            ax.axvline(b, color="tab:red", lw=0.6, alpha=0.4)
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("top-1 (%), held-out split of the training set")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_pareto(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], budgets: Sequence[float], *,
                 space_name: str, space_hash: str, objective: str, predicted_is_accuracy: bool) -> None:
    """pareto.json (metadata and every row), pareto.csv and pareto.png in `out_dir`."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / PARETO_JSON, {
        "space_name": space_name, "space_hash": space_hash, "objective": objective,
        "predicted_is_accuracy": predicted_is_accuracy, "columns": list(CSV_COLUMNS), "rows": list(rows)})
    write_text_atomic(out_dir / PARETO_CSV, rows_to_csv(rows))
    plot_pareto(out_dir / PARETO_PNG, rows, budgets, f"{space_name}: held-out top-1 vs MFLOPs ({objective})",
                predicted_is_accuracy)


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """search.json: the summary of `attentive.select.search_and_select`."""
    write_json_atomic(Path(out_dir) / SUMMARY_JSON, summary)


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line per budget (MFLOPs, fvcore MFLOPs, M params, predicted, held-out and test top-1, directory), then
    the hypervolumes of the predicted and measured fronts and the total time."""
    lines = [f"{'budget':>8} {'MFLOPs':>8} {'fvcore':>8} {'Mparams':>8} {'pred':>7} {'held-out':>9} {'test':>7}  dir"]
    for b, s in summary["budgets"].items():
        pred = "" if s["predicted"] is None else f"{s['predicted']:.4g}"
        lines.append(f"{b:>8} {s['mflops']:8.3f} {s['fvcore_mflops']:8.3f} {s['mparams']:8.3f} {pred:>7} "
                     f"{s['holdout_top1']:9.2f} {s['test_top1']:7.2f}  {s['dir']}")
    lines.append(f"predicted front hypervolume {summary['predicted_front']['hypervolume']:.4g}; measured front "
                 f"hypervolume {summary['measured_front']['hypervolume']:.4g}; total {summary['seconds']:.1f}s")
    return "\n".join(lines)
