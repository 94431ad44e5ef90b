"""Search a trained supernet for the best subnet under each FLOPs or latency budget, export each, plot the trade-off.

    python search.py --checkpoint CKPT --budgets 10,20,40 --out DIR [--predictor DIR | --proxy ntk]
    python search.py --checkpoint CKPT --latency-table TABLE.json --budgets-ms 1.5,3 [--budgets 10,20] --out DIR
    python search.py --checkpoint CKPT --export-arch ARCH.json --max-mflops 20 --out DIR

Objective: an XGBoost accuracy predictor (``--predictor DIR``, else the checkpoint's) or a training-free proxy
(``--proxy``, NASI-penalized). Latency: a ``python -m predictors.latency build`` table; both budget lists pair up in
order (each export fits its MFLOPs and its ms). Library: attentive/select.py; DIR (``subnet_<B>mflops/``,
``subnet_<L>ms/``, ``subnet_<B>mflops_<L>ms/``, ``pareto.*``, ``search.json``; replaced only with ``--force``):
attentive/report.py. Usage errors and bad input files (missing, truncated, foreign, tampered) exit with status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable, Sequence

from attentive.cpu_runtime import tune_cpu_runtime
from attentive.data import DEFAULT_CALIB_BATCHES, DataSplits, datasets_from_config, default_calib_batch_size
from attentive.distributed import resolve_device
from attentive.fileio import BadFileError, check_output_dir
from attentive.flops import count_flops
from attentive.report import format_summary
from attentive.scoring import predictor_scorer
from attentive.select import (SearchObjective, SelectOptions, check_select_budgets, check_tie_z, checkpoint_provenance,
                              export_arch, latency_cost, load_latency_table, load_search_checkpoint, pair_budgets,
                              read_arch_file, search_and_select)
from attentive.space import SearchSpace
from predictors.proxies import nasi_objective
from predictors.xgb import AccuracyPredictor  # the CLI wires predictors into the library

PROXIES = ("ntk", "grad_norm", "synflow")


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


def usage(flag: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, a ValueError/RuntimeError/OSError of it (BadFileError excepted) as a UsageError naming `flag`."""
    try:
        return fn(*args)
    except BadFileError:
        raise
    except (ValueError, RuntimeError, OSError) as e:
        raise UsageError(f"{flag}: {e}") from None


def parse_budgets(text: str | None, flag: str = "--budgets", unit: str = "MFLOPs", eg: str = "10,20,40") -> list[float]:
    """The budgets of "10,20,40" in the order given (none for None); UsageError naming the first bad part."""
    parts = [] if text is None else text.split(",")
    for part in parts:
        try:
            good = math.isfinite(float(part)) and float(part) > 0
        except ValueError:
            good = False
        if not good:
            raise UsageError(f"{flag}: {part.strip()!r} is not a number of {unit} > 0; give {unit} separated by "
                             f"commas, e.g. {flag} {eg}")
    return [float(part) for part in parts]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="search.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python search.py --checkpoint runs/fmnist/last.pt --budgets 3,5,8 --out search_out")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (train.py's last.pt or epoch_N.pt)")
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --force)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--budgets", help="comma-separated FLOPs budgets in MFLOPs, e.g. 10,20,40")
    mode.add_argument("--export-arch", metavar="ARCH.json", help="export this arch, no search (needs --max-mflops)")
    p.add_argument("--budgets-ms", help="latency budgets in ms, e.g. 1.5,3; with --budgets, pairwise (same count)")
    p.add_argument("--latency-table", metavar="TABLE.json", help="from python -m predictors.latency build")
    p.add_argument("--max-mflops", type=float, help="with --export-arch: refuse the arch if it has more MFLOPs")
    objective = p.add_mutually_exclusive_group()
    objective.add_argument("--predictor", metavar="DIR", help="saved AccuracyPredictor (default: the checkpoint's)")
    objective.add_argument("--proxy", choices=PROXIES, help="training-free objective instead of a predictor")
    p.add_argument("--proxy-batch-size", type=int, default=32, help="training images per proxy evaluation")
    p.add_argument("--proxy-mu", type=float, default=2.0, help="NASI penalty slope above nu (default 2)")
    p.add_argument("--proxy-nu", type=float, help="NASI threshold (default: the 0.9 quantile on 16 random archs)")
    p.add_argument("--space", help="refuse the checkpoint unless its space is this one (name or YAML path)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per budget re-ranked by held-out top-1")
    p.add_argument("--front-measure", type=int, default=8, help="archs of the predicted front also measured (plot)")
    p.add_argument("--population", type=int, help="evolution population (default: 256; 16 with --proxy)")
    p.add_argument("--generations", type=int, help="evolution generations (default: 24; 4 with --proxy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    p.add_argument("--calib-batches", type=int, default=DEFAULT_CALIB_BATCHES,
                   help="BN recalibration batches of training images (measure the predictor's labels alike)")
    p.add_argument("--calib-batch-size", type=int, help="images per BN calibration batch (default: batch_size or 128)")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--holdout-size", type=int, help="held-out images that re-rank candidates (default: all); "
                   "exports are measured on the whole held-out and test splits")
    p.add_argument("--tie-z", type=float, default=SelectOptions.tie_z,
                   help="a larger arch whose held-out top-1 is behind the best by at most this many paired standard "
                        "errors counts as tied and is exported instead (0: the best measured top-1 always wins; "
                        "default %(default)s)")
    p.add_argument("--data-root", help="dataset root (default: the checkpoint config's data.root)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def check_args(args: argparse.Namespace) -> None:
    search, export = args.budgets is not None or args.budgets_ms is not None, args.export_arch is not None
    if not (search or export):
        raise UsageError("give --budgets and/or --budgets-ms (a search), or --export-arch (one given arch)")
    if args.budgets_ms is not None and args.latency_table is None:
        raise UsageError("--budgets-ms needs --latency-table TABLE.json (from python -m predictors.latency build)")
    if export and (args.max_mflops is None or args.budgets_ms is not None):
        raise UsageError("--export-arch needs --max-mflops B (the budget the arch must fit), and no --budgets-ms")
    if search and args.max_mflops is not None:
        raise UsageError("--max-mflops goes with --export-arch; with --budgets give the budgets only")
    minimums = {"top_k": 1, "front_measure": 0, "population": 4, "generations": 0, "calib_batches": 1,
                "calib_batch_size": 1, "eval_batch_size": 1, "proxy_batch_size": 1, "holdout_size": 1, "proxy_mu": 0}
    for name, minimum in minimums.items():
        if (v := getattr(args, name)) is not None and v < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")
    try:
        check_tie_z(args.tie_z, "--tie-z")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.max_mflops is not None and not (math.isfinite(args.max_mflops) and args.max_mflops > 0):
        raise UsageError(f"--max-mflops must be a positive number, got {args.max_mflops}")


def build_data(args: argparse.Namespace, ckpt: dict, num_classes: int) -> DataSplits:
    """The checkpoint's splits (the trainer's seeded held-out split); --data-root overrides the stored root."""
    cfg = ckpt["config"]["data"]
    return usage(f"cannot rebuild the checkpoint's data ({cfg.get('name')}, root {args.data_root or cfg.get('root')}"
                 f"); pass --data-root", datasets_from_config, cfg, num_classes, args.data_root)


def predictor_objective(args: argparse.Namespace, space: SearchSpace, ckpt: dict) -> SearchObjective:
    if args.predictor is not None:
        try:
            return SearchObjective(predictor_scorer(AccuracyPredictor.load(args.predictor, space)),
                                   f"predictor {args.predictor}")
        except (FileNotFoundError, ValueError) as e:  # a BadFileError names the file itself
            raise (e if isinstance(e, BadFileError) else BadFileError(args.predictor, str(e))) from None
    if ckpt.get("predictor"):
        predictor = AccuracyPredictor.from_state(ckpt["predictor"], space, where=f"{args.checkpoint}: predictor")
        return SearchObjective(predictor_scorer(predictor), "predictor stored in the checkpoint")
    raise UsageError(f"--checkpoint {args.checkpoint} stores no accuracy predictor: pass --predictor DIR (a saved "
                     f"AccuracyPredictor, e.g. from predictors.retrain) or --proxy {{{','.join(PROXIES)}}}")


def run(args: argparse.Namespace, objective: SearchObjective | None = None) -> dict:
    """Both modes; `objective` replaces the predictor/proxy (tests). Returns search.json's summary or metrics.json."""
    started = time.perf_counter()
    check_args(args)
    flops, ms = parse_budgets(args.budgets), parse_budgets(args.budgets_ms, "--budgets-ms", "ms", "1.5,3")
    flag = "/".join(f for f, given in (("--budgets", flops), ("--budgets-ms", ms)) if given)
    budgets = usage(flag, pair_budgets, flops, ms)
    device = usage("--device", resolve_device, args.device)
    usage("--out", check_output_dir, args.out, args.force)
    supernet, ckpt = usage("--space", load_search_checkpoint, args.checkpoint, device, args.space)
    space, num_classes = supernet.space, supernet.num_classes
    table = None if args.latency_table is None else load_latency_table(args.latency_table, space, num_classes)
    options = SelectOptions(
        budgets=tuple(budgets), top_k=args.top_k, front_measure=args.front_measure, population=args.population,
        generations=args.generations, seed=args.seed, calib_batches=args.calib_batches,
        calib_batch_size=args.calib_batch_size or default_calib_batch_size(ckpt["config"]["data"]),
        eval_batch_size=args.eval_batch_size, holdout_size=args.holdout_size, tie_z=args.tie_z, onnx=not args.no_onnx,
        progress=not args.no_progress)
    provenance = checkpoint_provenance(args.checkpoint, ckpt, options)
    if args.export_arch is not None:
        arch = read_arch_file(args.export_arch, space)
        mflops = count_flops(space, arch, num_classes)
        if mflops > args.max_mflops:
            raise UsageError(f"--export-arch {args.export_arch} has {mflops:.4g} MFLOPs, over --max-mflops "
                             f"{args.max_mflops:g}; pick a smaller arch or raise the budget")
        metrics = export_arch(supernet, arch, build_data(args, ckpt, num_classes), options, args.out, device,
                              max_mflops=args.max_mflops, force=args.force, provenance=provenance, latency=table)
        print(f"exported {arch} ({mflops:.4g} MFLOPs, held-out top-1 {metrics['holdout_top1']:.2f}%, "
              f"test top-1 {metrics['test_top1']:.2f}%) to {args.out}", file=sys.stderr)
        return metrics
    usage(flag, check_select_budgets, space, budgets, num_classes, None if table is None else latency_cost(table))
    if objective is None and args.proxy is None:  # refuse a missing or foreign predictor before loading any data
        objective = predictor_objective(args, space, ckpt)
    splits = build_data(args, ckpt, num_classes)
    if objective is None:
        objective = nasi_objective(space, args.proxy, splits.train, args.proxy_batch_size, args.proxy_mu,
                                   args.proxy_nu, seed=args.seed, device=device, num_classes=num_classes)
    summary = search_and_select(supernet, objective, splits, options, args.out, device, force=args.force,
                                provenance=provenance, started=started, latency=table)
    print(format_summary(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on its own usage errors
    tune_cpu_runtime()  # faster CPU steps, same numbers (attentive/cpu_runtime.py)
    try:
        run(args)
    except (UsageError, BadFileError) as e:
        parser.print_usage(sys.stderr)
        print(f"search.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
