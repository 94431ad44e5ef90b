"""Build a latency table for the device you are on, and check it against end-to-end measurements.

    python -m predictors.latency build --space SPACE --runtime {onnxruntime,torch} --device {cpu,cuda} --batch N
        --out table.json [--threads T] [--warmup W] [--repeats R] [--calibration-archs C] [--no-progress]
    python -m predictors.latency validate --table table.json --num-archs 50 [--space SPACE] [--out DIR] [--seed S]

`build` times every distinct stem, block and head configuration of the space in the runtime (resumable: rerun the
same command after an interruption). `validate` measures seeded random archs end to end (the exported static net,
same runtime, device, batch and threads as the table) and prints MAPE, Kendall tau and the largest error, with a
predicted-vs-measured plot. The work is done by attentive/latency.py; this file parses and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from attentive.distributed import resolve_device
from attentive.fileio import BadFileError, read_json_file
from attentive.latency import (CALIBRATION_ARCHS, DEFAULT_REPEATS, DEFAULT_WARMUP, LATENCY_DEVICES, RUNTIMES,
                               LatencyTable, build_table, check_runtime_device, validate_table)
from attentive.space import load_space, space_from_dict


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictors.latency", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{build,validate}")
    b = sub.add_parser("build", help="measure a latency table", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--space", required=True, help="space name (tiny, attentivenas) or YAML path")
    b.add_argument("--runtime", required=True, choices=RUNTIMES)
    b.add_argument("--device", required=True, choices=LATENCY_DEVICES)
    b.add_argument("--batch", required=True, type=int, help="images per forward pass")
    b.add_argument("--out", required=True, type=Path, help="table JSON (an unfinished one is resumed)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads of the runtime (default: the cores "
                   "this process may use)")
    b.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs per entry")
    b.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per entry (median taken)")
    b.add_argument("--calibration-archs", type=int, default=CALIBRATION_ARCHS,
                   help="random archs measured end to end to fit the calibration (scale of the entries' sum, cost per "
                   "part) and each part's in-context correction; 0: plain sum, as OFA")
    b.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the space's)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    v = sub.add_parser("validate", help="compare a table with end-to-end measurements",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--table", required=True, type=Path, help="latency table JSON (build)")
    v.add_argument("--num-archs", type=int, default=50, help="random archs to measure")
    v.add_argument("--space", default=None, help="space name or YAML (default: the space stored in the table)")
    v.add_argument("--out", type=Path, default=None, help="output directory (default: beside the table, "
                   "TABLE_validation/)")
    v.add_argument("--seed", type=int, default=0, help="arch sampling")
    return p


def _check_build_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag when a value is out of range or the device cannot run the runtime here."""
    for name, low in (("batch", 1), ("repeats", 1), ("warmup", 0), ("calibration_archs", 0), ("threads", 1),
                      ("num_classes", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    try:
        resolve_device(args.device)
        check_runtime_device(args.runtime, args.device)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"--device {args.device} --runtime {args.runtime}: {e}") from None


def _table_space(path: Path, name: str | None) -> Any:
    """The space to check the table against: the one named, else the one stored in the table."""
    if name is not None:
        return load_space(name)
    data = read_json_file(path, "latency table")
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict):
        raise BadFileError(path, "not a latency table (no stored space); pass --space or rebuild it")
    try:
        return space_from_dict(data["space"], where=f"{path}: space")
    except ValueError as e:
        raise BadFileError(path, f"stored space is invalid: {e}") from None


def _ridge_text(table: LatencyTable) -> str:
    scores = table.data.get("correction_cv_mape_pct") or {}
    if not scores:
        return ""
    ridge = table.data["correction_ridge"]
    return f" (ridge {ridge:g}, cross-validated MAPE {scores[str(ridge)]:.2f}%)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            _check_build_args(args)
            space = load_space(args.space)
        else:
            if args.num_archs < 2:
                raise ValueError(f"--num-archs must be >= 2 (Kendall tau needs pairs), got {args.num_archs}")
            space = _table_space(args.table, args.space)
    except BadFileError as e:
        parser.error(str(e))
    except (ValueError, FileNotFoundError) as e:  # a bad flag, an unknown space name
        parser.error(str(e))
    try:
        if args.command == "build":
            table = build_table(space, args.runtime, args.device, args.batch, args.out, threads=args.threads,
                                warmup=args.warmup, repeats=args.repeats, progress=not args.no_progress,
                                num_classes=args.num_classes, calibration_archs=args.calibration_archs)
            print(f"latency table: {args.out} ({len(table.entries)} entries, {table.runtime} {table.runtime_version} "
                  f"on {table.device}, batch {table.batch}, {table.threads} threads; fitted calibration: scale "
                  f"{table.scale:.3f}, {table.per_part_ms * 1e3:+.2f} us per part, in-context corrections for "
                  f"{len(table.corrections)} parts{_ridge_text(table)}; {table.meta['cpu']})")
            return 0
        table = LatencyTable.load(args.table, space)
        out = args.out if args.out is not None else args.table.with_name(args.table.stem + "_validation")
        summary = validate_table(table, space, args.num_archs, args.seed, out)
    except BadFileError as e:  # a table that cannot be used (torn, foreign, another runtime version)
        parser.error(str(e))
    tau = summary["kendall_tau"]
    print(f"{summary['num_archs']} archs, {table.runtime} on {table.device}, batch {table.batch}, "
          f"{table.threads} threads")
    print(f"MAPE {summary['mape_pct']:.2f}%  Kendall tau {'undefined' if tau is None else f'{tau:.3f}'}  "
          f"largest error {summary['largest_error_pct']:+.2f}% ({summary['largest_error_ms'] * 1e3:+.1f} us)")
    print(f"plot: {summary['plot']}")
    print(f"rows: {summary['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
