"""Refit the accuracy predictor from a supernet checkpoint and compare it with the predictors of AttentiveNAS
(random forest) and OFA (MLP), a Gaussian process, and training-free proxies.

    python -m predictors.retrain --checkpoint CKPT --num-archs N --out DIR [--data measured.jsonl]
        [--holdout 0.2] [--seed S] [--device cpu] [--calib-batches C] [--proxies ntk,grad_norm,synflow]
        [--sizes 50,100,200,400] [--repeats R] [--tune]

Measured archs come from `--data` (default DIR/measured.jsonl); missing ones are measured on the held-out split
of the training data (rebuilt from the checkpoint's config) and appended, so an interrupted run resumes. A seeded
`--holdout` fraction of the measured ARCHS is kept out of fitting; all metrics are computed on those archs.
Writes DIR/model.json + DIR/meta.json (the XGBoost predictor), DIR/metrics.json and DIR/pred_vs_true.png.
The work is done by predictors/compare.py; this file parses, checks the flags and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from attentive.cpu_runtime import tune_cpu_runtime, use_channels_last
from attentive.data import DEFAULT_CALIB_BATCHES
from attentive.distributed import resolve_device
from attentive.fileio import BadFileError

from .compare import RetrainOptions, format_report, retrain, split_sizes
from .proxies import check_proxy_names


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 2, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictors.retrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="supernet training checkpoint (train.py)")
    p.add_argument("--num-archs", required=True, type=int, help="measured archs to use (fit + held out)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--data", type=Path, default=None,
                   help="measured archs JSONL to reuse and extend (default: OUT/measured.jsonl)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of the measured archs held out")
    p.add_argument("--seed", type=int, default=0, help="arch selection, arch split, model fits, proxy inits")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--calib-batches", type=int, default=DEFAULT_CALIB_BATCHES,
                   help="BN calibration batches per arch (search.py's default: the labels are measured as the search "
                   "measures its candidates)")
    p.add_argument("--calib-batch-size", type=int, default=None,
                   help="images per calibration batch (default: the checkpoint's training batch size, else 128, as "
                   "search.py)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--holdout-images", type=int, default=None,
                   help="measure on only the first K images of the held-out split (default: all of it)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="measure in channels_last memory format (default: on a CPU, where it is ~2x faster for these "
                   "nets, as train.py and search.py measure; off on CUDA)")
    p.add_argument("--proxies", type=_name_list, default=[],
                   help="training-free proxies to rank the measured archs with (ntk, ntk_exact, grad_norm, synflow); "
                   "ntk_exact costs one backward pass per image and class")
    p.add_argument("--proxy-batch-size", type=int, default=32, help="minibatch of training images for proxies")
    p.add_argument("--sizes", type=_int_list, default=[],
                   help="also report held-out tau when fitting on only this many measured archs, e.g. 50,100,200")
    p.add_argument("--repeats", type=int, default=1,
                   help="the --sizes table averages tau over this many random arch splits (split 0 is the main "
                   "one); one split of ~100 held-out archs leaves a standard error of ~0.02-0.03 on tau")
    p.add_argument("--tune", action="store_true",
                   help="choose XGBoost hyperparameters by 5-fold CV on the training archs (xgb.DEFAULT_GRID)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> RetrainOptions:
    """The library's options from parsed flags; a flag out of range raises ValueError naming the flag."""
    try:
        num_train, _ = split_sizes(args.num_archs, args.holdout)
    except ValueError as e:
        raise ValueError(f"--num-archs {args.num_archs} / --holdout {args.holdout}: {e}") from None
    try:
        check_proxy_names(args.proxies)
    except ValueError as e:
        raise ValueError(f"--proxies: {e}") from None
    if args.repeats > 1 and not args.sizes:
        raise ValueError(f"--repeats {args.repeats} averages the --sizes table over random splits; give --sizes too")
    too_big = [s for s in args.sizes if s > num_train]
    if too_big:
        raise ValueError(f"--sizes {too_big} exceed the {num_train} training archs of --num-archs "
                         f"{args.num_archs} with --holdout {args.holdout}")
    for name in ("calib_batches", "calib_batch_size", "batch_size", "proxy_batch_size", "holdout_images", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"--device: {e}") from None
    return RetrainOptions(
        checkpoint=args.checkpoint, num_archs=args.num_archs, out=args.out, data=args.data, holdout=args.holdout,
        seed=args.seed, device=device, calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
        batch_size=args.batch_size, holdout_images=args.holdout_images,
        channels_last=use_channels_last(device, args.channels_last),
        proxies=tuple(args.proxies), proxy_batch_size=args.proxy_batch_size, sizes=tuple(args.sizes),
        repeats=args.repeats, tune=args.tune, progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))  # prints usage and the message, exits 2
    tune_cpu_runtime()  # faster CPU steps, same numbers (attentive/cpu_runtime.py)
    try:
        result = retrain(options, log=lambda message: print(message, file=sys.stderr))
    except BadFileError as e:  # a checkpoint, measured-archs file or data config that cannot be used
        parser.error(str(e))
    print(format_report(result.metrics, result.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
