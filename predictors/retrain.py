"""Refit the accuracy predictor from a supernet checkpoint and compare it with the predictors of AttentiveNAS
(random forest) and OFA (MLP), a Gaussian process, and training-free proxies.

    python -m predictors.retrain --checkpoint CKPT --num-archs N --out DIR [--data measured.jsonl]
        [--holdout 0.2] [--seed S] [--device cpu] [--calib-batches C] [--proxies ntk,grad_norm,synflow]
        [--sizes 50,100,200,400] [--repeats R] [--tune]

Measured archs come from `--data` (default DIR/measured.jsonl); missing ones are measured on the held-out split
of the training data (rebuilt from the checkpoint's config) and appended, so an interrupted run resumes. A seeded
`--holdout` fraction of the measured ARCHS is kept out of fitting; all metrics are computed on those archs.
Writes DIR/model.json + DIR/meta.json (the XGBoost predictor), DIR/metrics.json and DIR/pred_vs_true.png.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Subset

from attentive.cpu_runtime import tune_cpu_runtime
from attentive.checkpoint import load_supernet
from attentive.flops import count_flops_batch
from attentive.space import Arch, SearchSpace

from attentive.measure import arch_key, measure_archs, read_rows, rows_to_arrays, stratified_archs
from .features import features, resolve_feature_set
from attentive.fileio import json_safe, write_bytes_atomic, write_json_atomic
from attentive.metrics import rank_metrics, regression_metrics
from .proxies import check_proxy_names, random_minibatch, score_archs
from .teacher import fit_gaussian_process
from .xgb import DEFAULT_FEATURE_SET, AccuracyPredictor, tune_params

CALIBRATION_SEED = 0  # fixed, not --seed: measurements stay comparable (and resumable) across --seed values
# "xgboost" is the predictor written to OUT (with its Gaussian-process teacher, predictors/teacher.py);
# "xgboost_no_teacher" is the same model fit on the measured archs alone; "gaussian_process" is the teacher by
# itself. The baselines get the feature set that plain XGBoost resolves to for the number of fitting archs.
MODEL_NAMES = ("xgboost", "xgboost_no_teacher", "random_forest", "mlp", "gaussian_process")


class UsageError(ValueError):
    """Bad command-line input: reported with the usage line and exit code 2."""


# ---- argument parsing ----------------------------------------------------------------------------------
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictors.retrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="supernet training checkpoint (train.py)")
    p.add_argument("--num-archs", required=True, type=int, help="measured archs to use (fit + held out)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--data", type=Path, default=None,
                   help="measured archs JSONL to reuse and extend (default: OUT/measured.jsonl)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of the measured archs held out")
    p.add_argument("--seed", type=int, default=0, help="arch selection, arch split, model fits, proxy inits")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    p.add_argument("--calib-batches", type=int, default=10, help="BN calibration batches per arch")
    p.add_argument("--calib-batch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--holdout-images", type=int, default=None,
                   help="measure on only the first K images of the held-out split (default: all of it)")
    p.add_argument("--channels-last", action="store_true", help="measure in channels_last memory format "
                   "(often ~2x faster on CPU for these nets)")
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


def _split_sizes(num_archs: int, holdout: float) -> tuple[int, int]:
    if num_archs < 1:
        raise UsageError(f"--num-archs must be a positive integer, got {num_archs}")
    if not 0.0 < holdout < 1.0:
        raise UsageError(f"--holdout must be a fraction in (0, 1), got {holdout}")
    num_held = int(round(num_archs * holdout))
    num_train = num_archs - num_held
    if num_held < 2 or num_train < 2:
        need = int(np.ceil(2 / min(holdout, 1 - holdout)))
        raise UsageError(f"--num-archs {num_archs} with --holdout {holdout} gives {num_train} training and "
                         f"{num_held} held-out archs; at least 2 of each are needed (--num-archs >= {need})")
    return num_train, num_held


def _check_args(args: argparse.Namespace) -> tuple[int, int]:
    num_train, num_held = _split_sizes(args.num_archs, args.holdout)
    try:
        check_proxy_names(args.proxies)
    except ValueError as e:
        raise UsageError(f"--proxies: {e}") from None
    if args.repeats > 1 and not args.sizes:
        raise UsageError(f"--repeats {args.repeats} averages the --sizes table over random splits; give --sizes too")
    too_big = [s for s in args.sizes if s > num_train]
    if too_big:
        raise UsageError(f"--sizes {too_big} exceed the {num_train} training archs of --num-archs "
                         f"{args.num_archs} with --holdout {args.holdout}")
    for name in ("calib_batches", "calib_batch_size", "batch_size", "proxy_batch_size", "holdout_images", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device; use cpu or cuda[:index]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: allowed are cpu and cuda[:index]")
    if not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint: file not found: {args.checkpoint}")
    return num_train, num_held


# ---- data ------------------------------------------------------------------------------------------------
def _file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def measurement_tag(checkpoint: Path, calib_batches: int, calib_batch_size: int,
                    holdout_images: int | None = None) -> str:
    """What measured rows are comparable under: the checkpoint's content, the BN calibration setting and the
    number of held-out images (all when None)."""
    # calib_images=plain: BN is recalibrated on un-augmented images; rows from before (augmented images, tag
    # without it) measured something else and must not be resumed into.
    tag = f"ckpt={_file_fingerprint(checkpoint)};calib={calib_batches}x{calib_batch_size};calib_images=plain"
    return tag if holdout_images is None else f"{tag};holdout_images={holdout_images}"


def _build_splits(ckpt: dict, where: Path, num_classes: int):
    """The checkpoint's splits, rebuilt exactly as its trainer built them (attentive.data.datasets_from_config)."""
    from attentive.data import datasets_from_config

    cfg = (ckpt.get("config") or {}).get("data")
    if not isinstance(cfg, dict) or not {"name", "root"} <= set(cfg):
        raise UsageError(f"{where}: checkpoint config has no data section with 'name' and 'root'; cannot rebuild "
                         f"the held-out split of its training data")
    return datasets_from_config(cfg, num_classes=num_classes)


def _collect_rows(args: argparse.Namespace, supernet, space: SearchSpace, data_path: Path, existing: list[dict],
                  splits_fn: Callable[[], Any]) -> list[dict]:
    """The first N measured rows of `data_path` (already read: `existing`), measuring and appending missing ones."""
    from attentive.data import build_loader, calibration_batches

    if len(existing) >= args.num_archs:
        print(f"reusing {args.num_archs} of {len(existing)} measured archs in {data_path}", file=sys.stderr)
        return existing[: args.num_archs]
    have = {arch_key(Arch.from_dict(r["arch"])) for r in existing}
    # The same list as a fresh run with this seed: an interrupted run resumes exactly where it stopped.
    candidates = stratified_archs(space, args.num_archs, np.random.default_rng(args.seed))
    todo = [a for a in candidates if arch_key(a) not in have][: args.num_archs - len(existing)]
    splits = splits_fn()
    calib = calibration_batches(splits, args.calib_batch_size, args.calib_batches, seed=CALIBRATION_SEED)
    holdout = splits.holdout
    if args.holdout_images is not None and args.holdout_images < len(holdout):
        holdout = Subset(holdout, range(args.holdout_images))  # a seeded random subset: so are its first K
    loader = build_loader(holdout, args.batch_size, train=False)
    tag = measurement_tag(args.checkpoint, args.calib_batches, args.calib_batch_size,
                          None if holdout is splits.holdout else len(holdout))
    print(f"measuring {len(todo)} archs on {len(holdout)} held-out training images -> {data_path}",
          file=sys.stderr)
    try:
        new_rows = measure_archs(supernet, todo, calib, loader, device=args.device, out_path=data_path,
                                 progress=not args.no_progress, channels_last=args.channels_last, tag=tag)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return (existing + new_rows)[: args.num_archs]


# ---- models ------------------------------------------------------------------------------------------------
def _baseline_models(seed: int) -> dict[str, Callable[[int], Any]]:
    """Model factories by name; each takes the number of input features."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        # AttentiveNAS fits a random forest on arch encodings.
        "random_forest": lambda _: RandomForestRegressor(n_estimators=300, random_state=seed, n_jobs=1),
        # OFA: 3 hidden layers of 400 ReLU units. Inputs and target standardized so Adam converges on few archs.
        "mlp": lambda _: TransformedTargetRegressor(
            regressor=make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(400, 400, 400),
                                                                    alpha=1e-3, max_iter=2000, random_state=seed)),
            transformer=StandardScaler()),
    }


def _fit_predict(name: str, space: SearchSpace, archs_train: list[Arch], y_train: np.ndarray,
                 archs_eval: list[Arch], seed: int, xgb_params: dict | None,
                 baselines: dict[str, Callable[[int], Any]]) -> tuple[np.ndarray, float, Any]:
    """(predictions on archs_eval, fit seconds, fitted model)."""
    start = time.perf_counter()
    if name in ("xgboost", "xgboost_no_teacher"):
        model = AccuracyPredictor.fit(space, archs_train, y_train, seed=seed, params=xgb_params,
                                      teacher="none" if name == "xgboost_no_teacher" else "gp")
        seconds = time.perf_counter() - start
        return model.predict(archs_eval), seconds, model
    if name == "gaussian_process":  # the teacher alone, on its gene features
        model = fit_gaussian_process(features(space, archs_train, "genes"), y_train, seed)
        seconds = time.perf_counter() - start
        with threadpool_limits(1):
            return model.predict(features(space, archs_eval, "genes")), seconds, model
    from sklearn.exceptions import ConvergenceWarning

    # One BLAS thread: on these small matrices extra threads only spin; measured 0.3 s vs 6.2 s of CPU for an
    # MLP fit on 18 archs on a busy 2-core machine.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        feature_set = resolve_feature_set(DEFAULT_FEATURE_SET, len(archs_train))
        x_train = features(space, archs_train, feature_set)
        model = baselines[name](x_train.shape[1]).fit(x_train, y_train)
        seconds = time.perf_counter() - start
        return model.predict(features(space, archs_eval, feature_set)), seconds, model


# ---- reporting ---------------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def format_table(results: dict[str, dict], title: str) -> str:
    cols = ("kendall_tau", "spearman_rho", "rmse", "top10_overlap", "fit_seconds")
    head = f"{'model':<22}{'tau':>8}{'rho':>8}{'RMSE':>8}{'top10%':>8}{'fit s':>9}"
    lines = [title, head, "-" * len(head)]
    for name, m in results.items():
        v = [m.get(c) for c in cols]
        lines.append(f"{name:<22}{_fmt(v[0]):>8}{_fmt(v[1]):>8}{_fmt(v[2], '.2f'):>8}{_fmt(v[3], '.2f'):>8}"
                     f"{_fmt(v[4], '.2f'):>9}")
    return "\n".join(lines)


def plot_pred_vs_true(path: Path, true: np.ndarray, predictions: dict[str, np.ndarray],
                      results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, pred in predictions.items():
        ax.scatter(true, pred, s=14, alpha=0.7, label=f"{name} (tau {_fmt(results[name]['kendall_tau'], '.2f')})")
    lo = min(true.min(), *(p.min() for p in predictions.values()))
    hi = max(true.max(), *(p.max() for p in predictions.values()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("measured top-1 (%), held-out archs")
    ax.set_ylabel("predicted top-1 (%)")
    ax.set_title(f"Predicted vs measured accuracy ({len(true)} held-out archs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


# ---- main ------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    num_train, num_held = _check_args(args)
    try:
        supernet, ckpt = load_supernet(args.checkpoint, map_location=args.device)
    except (ValueError, RuntimeError, KeyError) as e:
        raise UsageError(f"--checkpoint {args.checkpoint}: cannot load a supernet from it ({e})") from None
    space = supernet.space
    supernet.eval()
    if args.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    data_path = args.data if args.data is not None else args.out / "measured.jsonl"
    existing: list[dict] = []
    if data_path.exists():  # refuse another space's file before any expensive work
        try:
            existing = read_rows(data_path, space)
        except ValueError as e:
            raise UsageError(f"--data {data_path}: {e}") from None

    splits_cache: dict[str, Any] = {}

    def splits():
        if "splits" not in splits_cache:
            splits_cache["splits"] = _build_splits(ckpt, args.checkpoint, supernet.num_classes)
        return splits_cache["splits"]

    rows = _collect_rows(args, supernet, space, data_path, existing, splits)
    archs, top1 = rows_to_arrays(rows)
    order = np.random.default_rng(args.seed).permutation(len(archs))
    held_idx, train_idx = order[:num_held], order[num_held:]
    archs_train, archs_held = [archs[i] for i in train_idx], [archs[i] for i in held_idx]
    y_train, y_held = top1[train_idx], top1[held_idx]

    xgb_params, tuning = None, None
    if args.tune:
        xgb_params, grid_rows = tune_params(space, archs_train, y_train, seed=args.seed, teacher="gp")
        tuning = {"chosen": xgb_params, "grid": grid_rows}
        print(f"tuned XGBoost parameters (5-fold CV on {num_train} archs): {xgb_params}", file=sys.stderr)

    baselines = _baseline_models(args.seed)
    names = list(MODEL_NAMES)
    results: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    predictor = None
    for name in names:
        pred, seconds, model = _fit_predict(name, space, archs_train, y_train, archs_held, args.seed,
                                            xgb_params, baselines)
        results[name] = {**regression_metrics(pred, y_held), "fit_seconds": seconds}
        predictions[name] = pred
        if name == "xgboost":
            predictor = model
    results["mflops (baseline)"] = {**rank_metrics(count_flops_batch(space, archs_held), y_held)}

    proxy_results: dict[str, dict] = {}
    if args.proxies:
        images, labels = random_minibatch(splits().train, args.proxy_batch_size, seed=args.seed)
        for proxy in args.proxies:
            start = time.perf_counter()
            scores = score_archs(space, archs, proxy, images, labels, seed=args.seed, device=args.device,
                                 num_classes=supernet.num_classes)
            proxy_results[proxy] = {**rank_metrics(scores, top1), "seconds": time.perf_counter() - start}

    taus_by_size: dict[str, dict[str, list[float]]] = {str(size): {n: [] for n in names} for size in args.sizes}
    for repeat in range(args.repeats if args.sizes else 0):
        # Split 0 is the main split above; the others redraw which archs are held out.
        perm = order if repeat == 0 else np.random.default_rng(args.seed + repeat).permutation(len(archs))
        held, train = perm[:num_held], perm[num_held:]
        for size in args.sizes:
            sub = train[:size]  # a prefix of a random permutation: a random subset, nested across sizes
            for name in names:
                pred, _, _ = _fit_predict(name, space, [archs[i] for i in sub], top1[sub], [archs[i] for i in held],
                                          args.seed, xgb_params, baselines)
                taus_by_size[str(size)][name].append(rank_metrics(pred, top1[held])["kendall_tau"])
    size_results = {size: {n: float(np.mean(t)) for n, t in taus.items()} for size, taus in taus_by_size.items()}
    size_std = {size: {n: float(np.std(t)) for n, t in taus.items()} for size, taus in taus_by_size.items()}

    predictor.meta["metrics"]["holdout"] = {k: v for k, v in results["xgboost"].items() if k != "fit_seconds"}
    predictor.meta["data"] = {"file": str(data_path), "num_train": num_train, "num_holdout": num_held,
                              "checkpoint": str(args.checkpoint)}
    args.out.mkdir(parents=True, exist_ok=True)
    predictor.save(args.out)
    metrics = {
        "space_name": space.name, "space_hash": space.hash, "checkpoint": str(args.checkpoint),
        "data": str(data_path), "num_archs": len(archs), "num_train": num_train, "num_holdout": num_held,
        "seed": args.seed, "models": results, "proxies": proxy_results, "sizes": size_results,
        "sizes_std": size_std, "size_repeats": args.repeats, "sizes_per_split": taus_by_size,
        "xgboost_params": predictor.meta["params"], "tuning": tuning,
        "top1_range": [float(top1.min()), float(top1.max())],
    }
    write_json_atomic(args.out / "metrics.json", json_safe(metrics))
    plot_pred_vs_true(args.out / "pred_vs_true.png", y_held, predictions, results)

    print(format_table(results, f"held-out metrics ({num_held} archs held out, fit on {num_train}; "
                                f"top-1 range {top1.min():.2f}-{top1.max():.2f}%)"))
    if proxy_results:
        print("\ntraining-free proxies vs measured top-1 (all %d archs)" % len(archs))
        for proxy, m in proxy_results.items():
            print(f"  {proxy:<12} tau {_fmt(m['kendall_tau'])}  rho {_fmt(m['spearman_rho'])}  "
                  f"top10% {_fmt(m['top10_overlap'], '.2f')}  ({m['seconds']:.1f} s)")
    if size_results:
        over = "" if args.repeats == 1 else f", mean +- std over {args.repeats} random arch splits"
        print(f"\nheld-out Kendall tau vs number of training archs{over}")
        widths = [max(14 if args.repeats > 1 else 10, len(n) + 2) for n in names]
        print(f"  {'archs':>6}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)))
        for size, taus in size_results.items():
            cells = [_fmt(taus[n]) + ("" if args.repeats == 1 else f"+-{size_std[size][n]:.3f}") for n in names]
            print(f"  {size:>6}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    print(f"\nwrote {args.out / 'model.json'}, meta.json, metrics.json, pred_vs_true.png")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_cpu_runtime()  # faster CPU steps, same numbers (attentive/cpu_runtime.py)
    try:
        run(args)
    except UsageError as e:
        parser.error(str(e))  # prints usage and the message, exits 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
