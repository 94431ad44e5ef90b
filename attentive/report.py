"""Reports of a search (attentive.select): the candidate table as CSV and JSON, the Pareto plot, the summary
(search.json) and its text form. Every file is written atomically (attentive.fileio).

A candidate row is a dict, the same in pareto.json and pareto.csv: ``id`` (order of discovery), ``arch``
(AttentiveNAS dict), ``mflops``, ``mparams``, ``predicted`` (the search objective's score, None when never
scored), ``holdout_top1`` (None unless measured), ``test_top1`` (exported archs only), ``roles`` (why it was
measured: ``min``, ``max``, ``top<k>@<budget>``, ``front``), ``on_front`` (measured front), ``on_predicted_front``
and ``exported_for_mflops`` (the MFLOPs budgets it was exported for). A search with a latency table adds
``latency_ms`` (the table's prediction) and ``exported_for_ms`` (the latency budgets it was exported for), and then
the fronts and the plot are against latency instead of MFLOPs.
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
LATENCY_CSV_COLUMNS = ("id", "mflops", "mparams", "latency_ms", "predicted", "holdout_top1", "test_top1", "on_front",
                       "on_predicted_front", "roles", "exported_for_mflops", "exported_for_ms", "arch")
PARETO_JSON, PARETO_CSV, PARETO_PNG, SUMMARY_JSON = "pareto.json", "pareto.csv", "pareto.png", "search.json"
AXIS_LABELS = {"mflops": "MFLOPs (multiply-adds)", "latency_ms": "latency (ms, predicted by the latency table)"}


def budget_dir_name(mflops: float | None, latency_ms: float | None = None) -> str:
    """The export directory of a budget inside the search output: ``subnet_5mflops`` (MFLOPs), ``subnet_1.5ms``
    (latency) or ``subnet_5mflops_1.5ms`` (both)."""
    parts = ([f"{mflops:g}mflops"] if mflops is not None else []) + ([f"{latency_ms:g}ms"] if latency_ms is not None
                                                                    else [])
    if not parts:
        raise ValueError("a budget needs MFLOPs and/or milliseconds")
    return "subnet_" + "_".join(parts)


def csv_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """`LATENCY_CSV_COLUMNS` when the rows carry latencies (a search with a latency table), else `CSV_COLUMNS`."""
    return LATENCY_CSV_COLUMNS if rows and "latency_ms" in rows[0] else CSV_COLUMNS


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """`rows` as CSV text with header `csv_columns(rows)` (None -> empty cell, lists joined by ';')."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = csv_columns(rows)
    writer.writerow(columns)

    def cell(r: Mapping[str, Any], column: str) -> Any:
        v = r[column]
        if column in ("mflops", "mparams", "latency_ms", "predicted"):
            return "" if v is None else f"{v:.6f}"
        if column in ("holdout_top1", "test_top1"):
            return "" if v is None else f"{v:.4f}"
        if column in ("on_front", "on_predicted_front"):
            return int(v)
        if column == "roles":
            return ";".join(v)
        if column.startswith("exported_for"):
            return ";".join(f"{b:g}" for b in v)
        return json.dumps(v, sort_keys=True) if column == "arch" else v

    for r in rows:
        writer.writerow([cell(r, c) for c in columns])
    return buf.getvalue()


def _export_label(r: Mapping[str, Any]) -> str:
    """"≤5, 8 MFLOPs", "≤1.5 ms" or "≤5 MFLOPs & 1.5 ms": the budgets a row was exported for."""
    flops, ms = r["exported_for_mflops"], r.get("exported_for_ms") or []
    parts = ([f"{', '.join(f'{b:g}' for b in flops)} MFLOPs"] if flops else []) \
        + ([f"{', '.join(f'{b:g}' for b in ms)} ms"] if ms else [])
    return "≤" + " & ".join(parts)


def plot_pareto(path: str | Path, rows: Sequence[Mapping[str, Any]], budgets: Sequence[float], title: str,
                predicted_is_accuracy: bool, x: str = "mflops") -> None:
    """Held-out top-1 against `x` (a row key: "mflops", or "latency_ms" for a search with a latency table):
    measured archs, measured front, exports (stars), the min and max nets, the budgets (in `x` units), and the
    predicted front when the objective predicts accuracy (same axis). PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    measured = [r for r in rows if r["holdout_top1"] is not None]
    if predicted_is_accuracy:
        pf = sorted((r for r in rows if r["on_predicted_front"]), key=lambda r: r[x])
        if pf:
            ax.step([r[x] for r in pf], [r["predicted"] for r in pf], where="post", color="tab:gray",
                    ls="--", lw=1, label="predicted front (predictor)")
    ax.scatter([r[x] for r in measured], [r["holdout_top1"] for r in measured], s=18, color="tab:blue",
               alpha=0.6, label="evaluated archs (held-out top-1)")
    front = sorted((r for r in measured if r["on_front"]), key=lambda r: r[x])
    ax.step([r[x] for r in front], [r["holdout_top1"] for r in front], where="post", color="tab:blue",
            lw=1.5, label="measured front")
    exported = [r for r in measured if r["exported_for_mflops"] or r.get("exported_for_ms")]
    ax.scatter([r[x] for r in exported], [r["holdout_top1"] for r in exported], marker="*", s=220,
               color="tab:red", zorder=5, label="exported subnets")
    for r in exported:
        ax.annotate(_export_label(r), (r[x], r["holdout_top1"]), textcoords="offset points", xytext=(6, -12),
                    fontsize=8, color="tab:red")
    for role, label in (("min", "min net"), ("max", "max net")):
        for r in measured:
            if role in r["roles"]:
                ax.scatter([r[x]], [r["holdout_top1"]], marker="s", s=50, color="black", zorder=6)
                ax.annotate(label, (r[x], r["holdout_top1"]), textcoords="offset points", xytext=(6, 4),
                            fontsize=9)
    largest = max(r[x] for r in rows)
    for b in budgets:
        if b <= largest:  # a budget above the largest subnet is marked by its exported star only
            ax.axvline(b, color="tab:red", lw=0.6, alpha=0.4)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
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
                 space_name: str, space_hash: str, objective: str, predicted_is_accuracy: bool,
                 latency_table: Mapping[str, Any] | None = None) -> None:
    """pareto.json (metadata and every row), pareto.csv and pareto.png in `out_dir`. With `latency_table` (its
    identity: path, runtime, device, batch, ...; the rows then carry "latency_ms") pareto.json records it and the
    plot's x-axis is latency, `budgets` then in ms."""
    out_dir = Path(out_dir)
    x = "mflops" if latency_table is None else "latency_ms"
    write_json_atomic(out_dir / PARETO_JSON, {
        "space_name": space_name, "space_hash": space_hash, "objective": objective,
        "predicted_is_accuracy": predicted_is_accuracy, "columns": list(csv_columns(rows)),
        **({} if latency_table is None else {"x_axis": x, "latency_table": dict(latency_table)}), "rows": list(rows)})
    write_text_atomic(out_dir / PARETO_CSV, rows_to_csv(rows))
    axis_name = "MFLOPs" if latency_table is None else f"latency ({latency_table.get('runtime')}, " \
                                                        f"{latency_table.get('device')}, batch {latency_table.get('batch')})"
    plot_pareto(out_dir / PARETO_PNG, rows, budgets, f"{space_name}: held-out top-1 vs {axis_name} ({objective})",
                predicted_is_accuracy, x)


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """search.json: the summary of `attentive.select.search_and_select`."""
    write_json_atomic(Path(out_dir) / SUMMARY_JSON, summary)


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line per budget (MFLOPs, fvcore MFLOPs, M params, predicted, held-out and test top-1, and with a latency
    table the predicted and measured ms, directory), then the hypervolumes of the predicted and measured fronts and
    the total time."""
    latency = any("predicted_latency_ms" in s for s in summary["budgets"].values())
    width = max([8, *(len(b) for b in summary["budgets"])])
    ms_head = f" {'ms pred':>8} {'ms meas':>8}" if latency else ""
    lines = [f"{'budget':>{width}} {'MFLOPs':>8} {'fvcore':>8} {'Mparams':>8} {'pred':>7} {'held-out':>9} {'test':>7}"
             f"{ms_head}  dir"]
    for b, s in summary["budgets"].items():
        pred = "" if s["predicted"] is None else f"{s['predicted']:.4g}"
        ms = ""
        if latency:
            measured = s.get("measured_latency_ms")
            ms = f" {s['predicted_latency_ms']:8.3f} {'' if measured is None else f'{measured:.3f}':>8}"
        lines.append(f"{b:>{width}} {s['mflops']:8.3f} {s['fvcore_mflops']:8.3f} {s['mparams']:8.3f} {pred:>7} "
                     f"{s['holdout_top1']:9.2f} {s['test_top1']:7.2f}{ms}  {s['dir']}")
    lines.append(f"predicted front hypervolume {summary['predicted_front']['hypervolume']:.4g}; measured front "
                 f"hypervolume {summary['measured_front']['hypervolume']:.4g}; total {summary['seconds']:.1f}s")
    return "\n".join(lines)
