"""Refit the accuracy predictor from a supernet checkpoint and compare it with other predictors: the library behind
`python -m predictors.retrain` (which only parses flags and prints).

`retrain(options)` measures the archs the measured file lacks (`attentive.measure`, resumable), splits the measured
archs into fitting and held-out ones by a seeded permutation, fits each model of `MODEL_NAMES` on the fitting archs,
scores all on the held-out ones (`attentive.metrics`), optionally ranks all measured archs with training-free
proxies and repeats the fits on subsets (`sizes`), then writes OUT/model.json + meta.json (the XGBoost predictor,
with its GP teacher), OUT/metrics.json and OUT/pred_vs_true.png. `format_report(metrics)` is the printed summary.
"""
from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset, Subset

from attentive.checkpoint import load_supernet
from attentive.data import (DEFAULT_CALIB_BATCHES, DataSplits, build_loader, calibration_batches, datasets_from_config,
                            default_calib_batch_size)
from attentive.environment import describe_environment
from attentive.fileio import BadFileError, json_safe, write_bytes_atomic, write_json_atomic
from attentive.flops import count_flops_batch
from attentive.measure import arch_key, measure_archs, read_rows, rows_to_arrays, stratified_archs
from attentive.metrics import rank_metrics, regression_metrics
from attentive.space import Arch, SearchSpace

from .features import features, resolve_feature_set
from .proxies import random_minibatch, score_archs
from .teacher import fit_gaussian_process
from .xgb import DEFAULT_FEATURE_SET, AccuracyPredictor, tune_params

CALIBRATION_SEED = 0  # fixed, not the seed option: measurements stay comparable (and resumable) across seeds
# "xgboost" is the predictor written to OUT, fit with the Gaussian-process teacher (predictors/teacher.py) by name:
# the library default teacher is "none" (attentive.predictor.DEFAULT_TEACHER). "xgboost_no_teacher" is the same
# model fit on the measured archs alone; "gaussian_process" is the teacher by itself. The baselines get the feature
# set that plain XGBoost resolves to for the number of fitting archs.
MODEL_NAMES = ("xgboost", "xgboost_no_teacher", "random_forest", "mlp", "gaussian_process")
XGBOOST_TEACHERS = {"xgboost": "gp", "xgboost_no_teacher": "none"}

Log = Callable[[str], None]


def _silent(message: str) -> None:
    pass


@dataclass(frozen=True)
class RetrainOptions:
    """What `retrain` does; the fields are the flags of `python -m predictors.retrain`."""

    checkpoint: Path  # supernet training checkpoint (train.py)
    num_archs: int  # measured archs used: fitting + held out
    out: Path  # output directory
    data: Path | None = None  # measured archs JSONL to reuse and extend (None: OUT/measured.jsonl)
    holdout: float = 0.2  # fraction of the measured archs held out
    seed: int = 0  # arch selection, arch split, model fits, proxy inits
    device: torch.device = torch.device("cpu")  # attentive.distributed.resolve_device's result
    calib_batches: int = DEFAULT_CALIB_BATCHES  # BN calibration batches per arch, as search.py measures
    calib_batch_size: int | None = None  # None: the checkpoint's training batch size (else 128), as search.py
    batch_size: int = 256  # evaluation batch size
    holdout_images: int | None = None  # measure on only the first K held-out images (None: all)
    channels_last: bool = False
    proxies: tuple[str, ...] = ()  # training-free proxies ranking all measured archs
    proxy_batch_size: int = 32
    sizes: tuple[int, ...] = ()  # also fit on only this many of the fitting archs
    repeats: int = 1  # random arch splits the sizes table averages over (split 0 is the main one)
    tune: bool = False  # XGBoost parameters by 5-fold CV on the fitting archs
    progress: bool = True

    @property
    def data_path(self) -> Path:
        return self.data if self.data is not None else self.out / "measured.jsonl"


@dataclass
class RetrainResult:
    metrics: dict[str, Any]  # what metrics.json holds (before NaN -> null)
    predictor: AccuracyPredictor  # the "xgboost" model, saved to `out`
    out: Path


def split_sizes(num_archs: int, holdout: float) -> tuple[int, int]:
    """(fitting archs, held-out archs) for `num_archs` measured archs and a held-out fraction; at least 2 of each."""
    if num_archs < 1:
        raise ValueError(f"the number of archs must be a positive integer, got {num_archs}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {holdout}")
    num_held = int(round(num_archs * holdout))
    num_train = num_archs - num_held
    if num_held < 2 or num_train < 2:
        need = int(np.ceil(2 / min(holdout, 1 - holdout)))
        raise ValueError(f"{num_archs} archs with a held-out fraction of {holdout} gives {num_train} training and "
                         f"{num_held} held-out archs; at least 2 of each are needed ({need} archs or more)")
    return num_train, num_held


# ---- measured rows ------------------------------------------------------------------------------------------
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


def _options_tag(options: RetrainOptions, holdout_size: int | None) -> str:
    """The measurement tag of rows measured with `options` on a held-out split of `holdout_size` images (None
    when `options.holdout_images` is None: the whole split, whatever its size)."""
    if options.calib_batch_size is None:
        raise ValueError("calib_batch_size is None: retrain() sets it from the checkpoint's data config first")
    images = options.holdout_images
    return measurement_tag(options.checkpoint, options.calib_batches, options.calib_batch_size,
                           None if images is None or holdout_size is None or images >= holdout_size else images)


def _bad_rows(path: Path, error: ValueError) -> BadFileError:
    """attentive.measure's refusals (they start with the file and line) as a BadFileError naming the file once."""
    message, prefix = str(error), f"{path}, "
    if message.startswith(prefix):
        return BadFileError(path, message[len(prefix):])
    return BadFileError(path, f"not a measured-archs JSONL file ({type(error).__name__}: {message})")


def read_measured(path: Path, space: SearchSpace) -> list[dict]:
    """The rows already measured in `path` (none when it does not exist). Another space's, a torn or a foreign
    file is refused with a BadFileError before any expensive work."""
    if not path.exists():
        return []
    try:
        return read_rows(path, space)
    except ValueError as e:
        raise _bad_rows(path, e) from None


def collect_rows(options: RetrainOptions, supernet: Any, space: SearchSpace, existing: list[dict],
                 splits: Callable[[], DataSplits], log: Log = _silent) -> list[dict]:
    """The first `num_archs` measured rows of `options.data_path` (already read: `existing`), measuring the missing
    ones and appending them. `splits` builds the checkpoint's data (only called when something is measured)."""
    data_path = options.data_path
    if len(existing) >= options.num_archs:
        # Reused rows must have been measured as this run would measure them (checkpoint, calibration, images):
        # labels of another setting are refused, as they are when resuming into the file, never mixed in.
        tag = _options_tag(options, None if options.holdout_images is None else len(splits().holdout))
        for line, row in enumerate(existing[: options.num_archs], 1):
            if row.get("tag") != tag:
                raise BadFileError(data_path, f"line {line}: measured under tag {row.get('tag')!r} (another "
                                              f"checkpoint or setting), not {tag!r}; use another output file")
        log(f"reusing {options.num_archs} of {len(existing)} measured archs in {data_path}")
        return existing[: options.num_archs]
    have = {arch_key(Arch.from_dict(r["arch"])) for r in existing}
    # The same list as a fresh run with this seed: an interrupted run resumes exactly where it stopped.
    candidates = stratified_archs(space, options.num_archs, np.random.default_rng(options.seed))
    todo = [a for a in candidates if arch_key(a) not in have][: options.num_archs - len(existing)]
    data = splits()
    calib = calibration_batches(data, options.calib_batch_size, options.calib_batches, seed=CALIBRATION_SEED)
    holdout = data.holdout
    if options.holdout_images is not None and options.holdout_images < len(holdout):
        holdout = Subset(holdout, range(options.holdout_images))  # a seeded random subset: so are its first K
    loader = build_loader(holdout, options.batch_size, train=False)
    tag = _options_tag(options, len(data.holdout))
    log(f"measuring {len(todo)} archs on {len(holdout)} held-out training images -> {data_path}")
    try:
        new_rows = measure_archs(supernet, todo, calib, loader, device=options.device, out_path=data_path,
                                 progress=options.progress, channels_last=options.channels_last, tag=tag)
    except ValueError as e:  # the file was measured under another tag (checkpoint or setting)
        raise _bad_rows(data_path, e) from None
    return (existing + new_rows)[: options.num_archs]


# ---- models ---------------------------------------------------------------------------------------------------
def baseline_models(seed: int) -> dict[str, Callable[[int], Any]]:
    """The scikit-learn baselines' factories by name; each takes the number of input features."""
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


def fit_predict(name: str, space: SearchSpace, archs_train: list[Arch], y_train: np.ndarray,
                archs_eval: list[Arch], seed: int, xgb_params: dict | None,
                baselines: dict[str, Callable[[int], Any]]) -> tuple[np.ndarray, float, Any]:
    """Fit model `name` of `MODEL_NAMES`: (predictions on archs_eval, fit seconds, fitted model)."""
    start = time.perf_counter()
    if name in XGBOOST_TEACHERS:
        model = AccuracyPredictor.fit(space, archs_train, y_train, seed=seed, params=xgb_params,
                                      teacher=XGBOOST_TEACHERS[name])
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


def rank_proxies(space: SearchSpace, archs: list[Arch], top1: np.ndarray, proxies: Sequence[str],
                 train_set: Dataset | None, batch_size: int, seed: int, device: torch.device,
                 num_classes: int) -> dict[str, dict]:
    """Each proxy's rank metrics against the measured top-1 of all `archs`, and its seconds; one seeded minibatch
    of `train_set` (the training images) for all of them."""
    results: dict[str, dict] = {}
    if not proxies:
        return results
    images, labels = random_minibatch(train_set, batch_size, seed=seed)
    for proxy in proxies:
        start = time.perf_counter()
        scores = score_archs(space, archs, proxy, images, labels, seed=seed, device=device, num_classes=num_classes)
        results[proxy] = {**rank_metrics(scores, top1), "seconds": time.perf_counter() - start}
    return results


def taus_by_size(space: SearchSpace, archs: list[Arch], top1: np.ndarray, order: np.ndarray, num_held: int,
                 sizes: Sequence[int], repeats: int, seed: int, xgb_params: dict | None,
                 baselines: dict[str, Callable[[int], Any]]) -> dict[str, dict[str, list[float]]]:
    """Held-out Kendall tau of every model fit on only `size` archs, per size, model and split (split 0 is the
    main split `order`; the others redraw which archs are held out)."""
    taus: dict[str, dict[str, list[float]]] = {str(size): {n: [] for n in MODEL_NAMES} for size in sizes}
    for repeat in range(repeats if sizes else 0):
        perm = order if repeat == 0 else np.random.default_rng(seed + repeat).permutation(len(archs))
        held, train = perm[:num_held], perm[num_held:]
        for size in sizes:
            sub = train[:size]  # a prefix of a random permutation: a random subset, nested across sizes
            for name in MODEL_NAMES:
                pred, _, _ = fit_predict(name, space, [archs[i] for i in sub], top1[sub], [archs[i] for i in held],
                                         seed, xgb_params, baselines)
                taus[str(size)][name].append(rank_metrics(pred, top1[held])["kendall_tau"])
    return taus


# ---- the whole comparison ---------------------------------------------------------------------------------------
def retrain(options: RetrainOptions, log: Log = _silent) -> RetrainResult:
    """Measure, fit, compare and write (module docstring). Raises `BadFileError` naming the file for a checkpoint,
    measured-archs file or checkpoint data config that cannot be used; ValueError for options out of range."""
    num_train, num_held = split_sizes(options.num_archs, options.holdout)
    supernet, ckpt = load_supernet(options.checkpoint, map_location=options.device)
    if options.calib_batch_size is None:
        data_cfg = ckpt.get("config", {}).get("data") if isinstance(ckpt.get("config"), dict) else None
        options = replace(options, calib_batch_size=default_calib_batch_size(data_cfg or {}))
    space = supernet.space
    supernet.eval()
    if options.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    data_path = options.data_path
    existing = read_measured(data_path, space)  # refuse another space's file before any expensive work

    built: list[DataSplits] = []

    def splits() -> DataSplits:  # built once, and only when needed (measuring, proxies)
        if not built:
            try:
                data_cfg = (ckpt.get("config") or {}).get("data")
                built.append(datasets_from_config(data_cfg, num_classes=supernet.num_classes))
            except (TypeError, ValueError) as e:
                raise BadFileError(options.checkpoint, f"cannot rebuild the held-out split of its training data "
                                                       f"from its config: {e}") from None
        return built[0]

    rows = collect_rows(options, supernet, space, existing, splits, log)
    archs, top1 = rows_to_arrays(rows)
    order = np.random.default_rng(options.seed).permutation(len(archs))
    held_idx, train_idx = order[:num_held], order[num_held:]
    archs_train, archs_held = [archs[i] for i in train_idx], [archs[i] for i in held_idx]
    y_train, y_held = top1[train_idx], top1[held_idx]

    xgb_params, tuning = None, None
    if options.tune:
        xgb_params, grid_rows = tune_params(space, archs_train, y_train, seed=options.seed, teacher="gp")
        tuning = {"chosen": xgb_params, "grid": grid_rows}
        log(f"tuned XGBoost parameters (5-fold CV on {num_train} archs): {xgb_params}")

    baselines = baseline_models(options.seed)
    results: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    models: dict[str, Any] = {}
    for name in MODEL_NAMES:
        pred, seconds, models[name] = fit_predict(name, space, archs_train, y_train, archs_held, options.seed,
                                                  xgb_params, baselines)
        results[name] = {**regression_metrics(pred, y_held), "fit_seconds": seconds}
        predictions[name] = pred
    results["mflops (baseline)"] = {**rank_metrics(count_flops_batch(space, archs_held), y_held)}

    proxy_results = rank_proxies(space, archs, top1, options.proxies, splits().train if options.proxies else None,
                                 options.proxy_batch_size, options.seed, options.device, supernet.num_classes)
    per_split = taus_by_size(space, archs, top1, order, num_held, options.sizes, options.repeats, options.seed,
                             xgb_params, baselines)
    size_results = {size: {n: float(np.mean(t)) for n, t in taus.items()} for size, taus in per_split.items()}
    size_std = {size: {n: float(np.std(t)) for n, t in taus.items()} for size, taus in per_split.items()}

    predictor: AccuracyPredictor = models["xgboost"]
    predictor.meta["metrics"]["holdout"] = {k: v for k, v in results["xgboost"].items() if k != "fit_seconds"}
    predictor.meta["data"] = {"file": str(data_path), "num_train": num_train, "num_holdout": num_held,
                              "checkpoint": str(options.checkpoint)}
    options.out.mkdir(parents=True, exist_ok=True)
    predictor.save(options.out)
    metrics = {
        "space_name": space.name, "space_hash": space.hash, "checkpoint": str(options.checkpoint),
        "data": str(data_path), "num_archs": len(archs), "num_train": num_train, "num_holdout": num_held,
        "seed": options.seed, "models": results, "proxies": proxy_results, "sizes": size_results,
        "sizes_std": size_std, "size_repeats": options.repeats, "sizes_per_split": per_split,
        "xgboost_params": predictor.meta["params"], "tuning": tuning,
        "top1_range": [float(top1.min()), float(top1.max())],
        "environment": describe_environment(torch.device(options.device).type),
    }
    write_json_atomic(options.out / "metrics.json", json_safe(metrics))
    plot_pred_vs_true(options.out / "pred_vs_true.png", y_held, predictions, results)
    return RetrainResult(metrics=metrics, predictor=predictor, out=options.out)


# ---- reporting ------------------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def format_table(results: dict[str, dict], title: str) -> str:
    """The held-out metrics of each model, one line each."""
    cols = ("kendall_tau", "spearman_rho", "rmse", "top10_overlap", "fit_seconds")
    head = f"{'model':<22}{'tau':>8}{'rho':>8}{'RMSE':>8}{'top10%':>8}{'fit s':>9}"
    lines = [title, head, "-" * len(head)]
    for name, m in results.items():
        v = [m.get(c) for c in cols]
        lines.append(f"{name:<22}{_fmt(v[0]):>8}{_fmt(v[1]):>8}{_fmt(v[2], '.2f'):>8}{_fmt(v[3], '.2f'):>8}"
                     f"{_fmt(v[4], '.2f'):>9}")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any], out: Path) -> str:
    """What `python -m predictors.retrain` prints: the held-out table, the proxies, the sizes table, the files."""
    low, high = metrics["top1_range"]
    parts = [format_table(metrics["models"], f"held-out metrics ({metrics['num_holdout']} archs held out, fit on "
                                             f"{metrics['num_train']}; top-1 range {low:.2f}-{high:.2f}%)")]
    if metrics["proxies"]:
        lines = ["\ntraining-free proxies vs measured top-1 (all %d archs)" % metrics["num_archs"]]
        for proxy, m in metrics["proxies"].items():
            lines.append(f"  {proxy:<12} tau {_fmt(m['kendall_tau'])}  rho {_fmt(m['spearman_rho'])}  "
                         f"top10% {_fmt(m['top10_overlap'], '.2f')}  ({m['seconds']:.1f} s)")
        parts.append("\n".join(lines))
    if metrics["sizes"]:
        repeats, names = metrics["size_repeats"], MODEL_NAMES
        over = "" if repeats == 1 else f", mean +- std over {repeats} random arch splits"
        widths = [max(14 if repeats > 1 else 10, len(n) + 2) for n in names]
        lines = [f"\nheld-out Kendall tau vs number of training archs{over}",
                 f"  {'archs':>6}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
        for size, taus in metrics["sizes"].items():
            cells = [_fmt(taus[n]) + ("" if repeats == 1 else f"+-{metrics['sizes_std'][size][n]:.3f}") for n in names]
            lines.append(f"  {size:>6}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
        parts.append("\n".join(lines))
    parts.append(f"\nwrote {out / 'model.json'}, meta.json, metrics.json, pred_vs_true.png")
    return "\n".join(parts)


def plot_pred_vs_true(path: Path, true: np.ndarray, predictions: dict[str, np.ndarray],
                      results: dict[str, dict]) -> None:
    """Predicted vs measured top-1 of the held-out archs, one colour per model (PNG, written atomically)."""
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
