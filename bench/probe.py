"""Per-dimension probe of a trained supernet: which single dimension costs accuracy when moved alone?

Starting from the max net, each dimension is moved alone to its min value; starting from the min net, each is
moved alone to its max value (attentive/probe.py builds and labels the archs): the resolution; all kernel sizes;
all expand ratios; each width (stem, every stage, head); each stage's depth. Two combined rows follow (resolution
and kernel sizes together, from each base). Every row is labelled with the stage-start shortcut changes it
causes ("mb2 start: conv->identity"), read from the decoded specs of the base and the moved arch.

For each arch: MFLOPs, held-out top-1 after BN recalibration on the SAME calibration batches for every arch, the
drop vs its base net (base - arch, points), and for moves from the max net whether it still beats the min net.
Held-out split only (the checkpoint's seeded split of the training set); the test split is never read.

    python bench/probe.py --checkpoint runs/fmnist/last.pt --threads 1          # writes runs/fmnist/probe/
    python bench/probe.py --checkpoint runs/fmnist/last.pt --holdout-images 1000 --calib-batches 4 --out /tmp/p

Outputs in --out (default: probe/ beside the checkpoint): probe.json (settings and one row per arch), probe.csv.
Usage errors (bad numbers, a missing, unreadable, truncated or foreign checkpoint) exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _experiment_utils import fmt, seeded_subset, warn_synthetic, write_csv_atomic, write_json_atomic  # noqa: E402

CSV_FIELDS = ["label", "base", "dimension", "position", "old", "new", "mflops", "holdout_top1", "drop_vs_base",
              "above_min", "shortcut_changes", "arch"]


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit status 2."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (train.py last.pt or epoch_N.pt)")
    p.add_argument("--holdout-images", type=int, default=3000,
                   help="held-out images per arch (seeded subset of the held-out split; default 3000)")
    p.add_argument("--calib-batches", type=int, default=8, help="BN recalibration batches (default 8)")
    p.add_argument("--calib-batch-size", type=int, default=128, help="images per calibration batch (default 128)")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration images and the held-out subset")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's own; 1 on a busy shared machine)")
    p.add_argument("--no-combined", action="store_true", help="skip the two combined rows")
    p.add_argument("--out", default=None, help="output directory (default: probe/ beside the checkpoint)")
    p.add_argument("--data-root", default=None, help="dataset root (default: the checkpoint config's data.root)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name in ("holdout_images", "calib_batches", "calib_batch_size", "eval_batch_size", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UsageError(f"--checkpoint: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"--checkpoint: cannot read {path} (permission denied)")


# ---------------------------------------------------------------------------------------------------------------
def load(path: Path, device: Any) -> tuple[Any, dict]:
    """(supernet in eval mode, checkpoint dict); `BadFileError` naming the file when it is not a readable
    supernet checkpoint of train.py (missing, truncated, foreign, tampered, no data config)."""
    from attentive.checkpoint import load_supernet
    from attentive.fileio import BadFileError

    supernet, ckpt = load_supernet(path, map_location=device)
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt["config"].get("data"), dict):
        raise BadFileError(path, "has no config['data'] (not written by train.py?): the held-out split cannot be "
                                 "rebuilt")
    return supernet.eval(), ckpt


def resolve_device(name: str) -> Any:
    from attentive.distributed import resolve_device as resolve

    try:
        return resolve(name)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--device: {e}") from None


def build_splits(data_cfg: dict, num_classes: int, root: str | None) -> Any:
    """The checkpoint's train/holdout/test splits: the trainer's own seeded held-out split."""
    from attentive.data import datasets_from_config

    try:
        return datasets_from_config(data_cfg, num_classes=num_classes, root=root)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as e:
        raise UsageError(f"cannot rebuild the checkpoint's data ({data_cfg.get('name')}, root "
                         f"{root or data_cfg.get('root')}): {e}; pass --data-root") from None


def calibration(splits: Any, batch_size: int, num_batches: int, seed: int) -> list:
    """The calibration batches every arch is recalibrated on (un-augmented training images, never held-out)."""
    from attentive.data import calibration_batches

    return calibration_batches(splits, min(batch_size, len(splits.train_plain)), num_batches, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
def measure(supernet: Any, plan: list, calib: list, loader: Any, device: Any, num_classes: int,
            progress: bool) -> list[dict[str, Any]]:
    """One row per planned arch: MFLOPs, held-out top-1, drop vs its base, shortcut changes, above the min net."""
    import torch
    from tqdm import tqdm

    from attentive.cpu_runtime import use_channels_last
    from attentive.evaluate import evaluate_arch
    from attentive.flops import count_flops
    from attentive.probe import base_arch, shortcut_changes

    space = supernet.space
    channels_last = use_channels_last(device)
    if channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    top1: dict[str, float] = {}
    rows = []
    for move in tqdm(plan, desc="probe", unit="arch", disable=not progress, dynamic_ncols=True):
        acc = evaluate_arch(supernet, move.arch, calib, loader, device, channels_last)
        if move.dimension == "base":
            top1[move.base] = acc
        base = base_arch(space, move.base)
        rows.append({"label": move.label, "base": move.base, "dimension": move.dimension,
                     "position": move.position, "old": move.old, "new": move.new,
                     "mflops": count_flops(space, move.arch, num_classes), "holdout_top1": acc,
                     "shortcut_changes": shortcut_changes(space, base, move.arch), "arch": move.arch.to_dict()})
    for r in rows:  # bases are measured before their moves, but "above min" needs the min net: fill in after
        r["drop_vs_base"] = top1[r["base"]] - r["holdout_top1"]
        r["above_min"] = r["holdout_top1"] > top1["min"] if r["base"] == "max" and r["dimension"] != "base" else None
    return rows


def summary_line(rows: list[dict[str, Any]]) -> str:
    moves = [r for r in rows if r["base"] == "max" and r["dimension"] not in ("base", "combined")]
    min_top1 = next(r["holdout_top1"] for r in rows if r["base"] == "min" and r["dimension"] == "base")
    above = sum(bool(r["above_min"]) for r in moves)
    return (f"{above} of {len(moves)} single-dimension moves from the max net score above the min net "
            f"(min: {min_top1:.2f}%)")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arch | MFLOPs | held-out top-1 | drop vs base | above min | shortcut changes |",
             "|---|---:|---:|---:|:---:|---|"]
    for r in rows:
        drop = "-" if r["dimension"] == "base" else f"{r['drop_vs_base']:+.2f}"
        above = "" if r["above_min"] is None else ("yes" if r["above_min"] else "no")
        lines.append(f"| {r['label']} | {r['mflops']:.2f} | {fmt(r['holdout_top1'])} | {drop} | {above} | "
                     f"{', '.join(r['shortcut_changes']) or '-'} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the plan and write probe.json / probe.csv; `args` already passed check_args."""
    from attentive.data import build_loader
    from attentive.probe import probe_plan

    checkpoint = Path(args.checkpoint)
    device = resolve_device(args.device)
    supernet, ckpt = load(checkpoint, device)
    space, num_classes = supernet.space, supernet.num_classes
    data_cfg = ckpt["config"]["data"]
    splits = build_splits(data_cfg, num_classes, args.data_root)
    if splits.num_classes != num_classes:
        raise UsageError(f"--checkpoint {checkpoint} has {num_classes} classes, its data {splits.num_classes}")
    warning = warn_synthetic(splits.name)
    holdout = seeded_subset(splits.holdout, args.holdout_images, seed=args.seed)
    loader = build_loader(holdout, args.eval_batch_size, train=False)
    calib = calibration(splits, args.calib_batch_size, args.calib_batches, args.seed)

    plan = probe_plan(space, combined=not args.no_combined)
    print(f"probe of {checkpoint} (epoch {ckpt.get('epoch')}, space {space.name}): {len(plan)} archs, "
          f"{len(holdout)} held-out images, {len(calib)} calibration batches", file=sys.stderr)
    rows = measure(supernet, plan, calib, loader, device, num_classes, progress=not args.no_progress)
    summary = summary_line(rows)

    out = Path(args.out) if args.out is not None else checkpoint.parent / "probe"
    report = {
        "experiment": "probe", "warning": warning, "checkpoint": str(checkpoint),
        "checkpoint_epoch": ckpt.get("epoch"), "checkpoint_step": ckpt.get("step"),
        "space": space.name, "space_hash": space.hash, "data": splits.name, "split": "holdout",
        "holdout_images": len(holdout), "calib_batches": len(calib), "calib_batch_size": int(calib[0].shape[0]),
        "seed": args.seed, "device": device.type, "summary": summary,
        "note": "drop_vs_base = base top-1 - arch top-1 (points); above_min only for moves from the max net",
        "rows": rows,
    }
    write_json_atomic(out / "probe.json", report)
    write_csv_atomic(out / "probe.csv", rows, CSV_FIELDS)

    print(markdown_table(rows))
    print(f"\n{summary}")
    if warning:
        print("\n" + warning)
    print(f"\nwrote {out / 'probe.json'}, {out / 'probe.csv'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own errors (a non-number, a missing --checkpoint): status 2
        return e.code if isinstance(e.code, int) else 2
    from attentive.fileio import BadFileError

    try:
        check_args(args)
        import torch

        from attentive.cpu_runtime import tune_cpu_runtime

        tune_cpu_runtime()  # faster CPU forward passes, same numbers
        threads_before = torch.get_num_threads()
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        try:
            run(args)
        finally:
            torch.set_num_threads(threads_before)
    except (UsageError, BadFileError) as e:  # bad input, or an input file that is not what it claims to be
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
