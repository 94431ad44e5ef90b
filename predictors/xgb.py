"""XGBoost regressor of top-1 accuracy from arch features, saved in XGBoost's own JSON format (never pickle).

A predictor is bound to its space (content hash) and to `FEATURE_VERSION`; `load` / `from_state` refuse any
other, saying which one differs.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xgboost as xgb

from attentive.space import SearchSpace

from .features import (FEATURE_SETS, FEATURE_VERSION, ArchBatch, feature_names, features, resolve_feature_set,
                       to_indices)
from attentive.fileio import json_safe, write_bytes_atomic, write_json_atomic
from attentive.metrics import regression_metrics
from .teacher import DEFAULT_NUM_PSEUDO, DEFAULT_TEACHER, check_teacher, gp_pseudo_labels

FORMAT = "attentive.accuracy_predictor"
FORMAT_VERSION = 1
MODEL_FILE, META_FILE = "model.json", "meta.json"

# First chosen by measurement, without the teacher (depth 3; the teacher moved it to 4, below): `tune_params`
# (5-fold CV over DEFAULT_GRID, 144 candidates, mean held-out Kendall tau) on 300 FLOPs-stratified archs measured
# on a tiny-space supernet trained by train.py on Fashion-MNIST (configs/train/fashion_mnist.yaml, 3 epochs; top-1
# on 2,000 held-out training images, 78.4-90.2%).
#   these (400 rounds, depth 3, eta 0.1, subsample/colsample 0.8): CV tau 0.758 (fold std 0.042)
#   grid argmax, the same with 800 rounds:                        CV tau 0.761, within noise (standard error 0.018)
#   XGBoost's library defaults (100 rounds, depth 6, eta 0.3):    CV tau 0.687;  worst grid point 0.696
# 400 rounds rather than the argmax's 800: equal within noise, and half the trees predict ~1.4x faster (187k vs
# 132k archs/s, one thread). Fit on only 40 archs (the trainer's in-training fit; 20 random draws, tau on the other
# 260): these 0.604 +- 0.007 (same as 800 rounds), library defaults 0.558 +- 0.009. On a supernet only 200 steps
# into training (noisy ranking) the grid's best was depth 6 at CV tau 0.459; these scored 0.415 there.
# Rechecked on the trimmed tiny space's 4-epoch supernet (500 archs on 6,000 held-out images, 100 held out):
# these 0.808 held-out tau fitting 400 archs, 0.789 fitting 200; the grid's CV pick there (800 rounds, depth 4,
# eta 0.03, colsample 0.5, min_child_weight 3) 0.827 at 400 but 0.760 at 200. Defaults kept (predictors/README.md).
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 400,
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "reg_lambda": 1.0,
}
# Depth 4 since the Gaussian-process teacher (predictors/teacher.py): the trees then fit ~2,000 smooth pseudo-labels
# besides the measured archs, and one level deeper follows them better. Mean held-out tau over 20 random splits of
# the 4-epoch supernet's 500 archs (100 held out), depth 3 / depth 4:
#   with the teacher:   fit on 50: 0.699 / 0.697   100: 0.789 / 0.798   200: 0.825 / 0.838
#   measured archs only:           0.618 / 0.607        0.706 / 0.686        0.798 / 0.787
# Feature set "auto" (predictors/features.py): the genes only, without the MFLOPs/params totals, when fitting on
# 100 rows or more (always, with the teacher's pseudo-labels); the whole vector below that. In a sandwich-trained
# supernet accuracy is far from monotone in cost (the max and min subnets are trained every step, the middle ones
# rarely; MFLOPs alone ranks at tau 0.40-0.45), and with a few hundred archs the trees' greedy first splits on the
# totals fragment the data; with a few dozen, the total is the best summary there is. Mean held-out Kendall tau
# over 20 random splits (100 archs held out each), no teacher, genes vs all, on three measurement sets of three
# supernets (3-epoch, 300 archs; 4-epoch, 500; another 4-epoch, 500; all on 6,000 held-out images):
#   fit on  40: 0.470 / 0.533,  0.541 / 0.590,  -
#   fit on  50: 0.505 / 0.549,  0.583 / 0.630,  0.590 / 0.626
#   fit on 100: 0.644 / 0.627,  0.714 / 0.701,  0.714 / 0.704
#   fit on 200: 0.737 / 0.705,  0.802 / 0.770,  0.798 / 0.767
# Rechecked for gene features (tune_params on 200 archs of the 3-epoch set, scored on the first 4-epoch set): the
# grid's pick there (800 rounds, depth 6, eta 0.03) 0.802 at 200 archs, the same as depth 3. Bagging 5 boosters or
# 4 parallel trees per round added 0.004-0.009 (about one standard error).
DEFAULT_FEATURE_SET = "auto"
# The grid `tune_params` searches by default (and the one the defaults above were chosen from).
DEFAULT_GRID: dict[str, list] = {
    "n_estimators": [200, 400, 800],
    "max_depth": [2, 3, 4, 6],
    "learning_rate": [0.03, 0.1],
    "subsample": [0.8],
    "colsample_bytree": [0.5, 0.8, 1.0],
    "min_child_weight": [1.0, 3.0],
}
_ALLOWED_PARAMS = {"n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree",
                   "min_child_weight", "reg_lambda", "reg_alpha", "gamma"}


def _booster_params(params: dict[str, Any], seed: int) -> tuple[dict[str, Any], int]:
    unknown = sorted(set(params) - _ALLOWED_PARAMS)
    if unknown:
        raise ValueError(f"unknown predictor parameter(s) {unknown}; allowed: {sorted(_ALLOWED_PARAMS)}")
    p = dict(params)
    rounds = int(p.pop("n_estimators"))
    if rounds < 1:
        raise ValueError(f"n_estimators must be >= 1, got {rounds}")
    p["eta"] = p.pop("learning_rate")
    # One thread: fits are small (hundreds to thousands of archs) and run beside the trainer; with more threads
    # OpenMP contention made a 1,000-arch fit 4x slower on a busy 2-core machine (0.75 s vs 3.4 s).
    p.update(objective="reg:squarederror", tree_method="hist", seed=int(seed), nthread=1)
    return p, rounds


def _train_booster(x: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> xgb.Booster:
    booster_params, rounds = _booster_params(params, seed)
    return xgb.train(booster_params, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def _training_rows(space: SearchSpace, idx: np.ndarray, y: np.ndarray, teacher: str, num_pseudo: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The rows XGBoost is fit on (gene indices, top-1): the measured archs, plus the teacher's pseudo-labelled
    ones; and the teacher's metadata."""
    check_teacher(teacher)
    if teacher == "none":
        return idx, y, {"kind": "none"}
    pseudo, labels, meta = gp_pseudo_labels(space, idx, y, num_pseudo, seed)
    return np.concatenate([idx, pseudo]), np.concatenate([y, labels]), meta


def _check_targets(top1: Any, n: int) -> np.ndarray:
    y = np.asarray(top1, dtype=np.float64)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"top1 must be a 1-D sequence with one accuracy per arch ({n}), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"top1 has non-finite values at positions {np.flatnonzero(~np.isfinite(y))[:5].tolist()}")
    return y


class AccuracyPredictor:
    """`AccuracyPredictor.fit(space, archs, top1)` then `.predict(archs)` (top-1 %, vectorized)."""

    def __init__(self, booster: xgb.Booster, space: SearchSpace, meta: dict[str, Any]) -> None:
        self.booster = booster
        self.space = space
        self.meta = meta

    # ---- fitting and predicting ----------------------------------------------------------------------
    @classmethod
    def fit(cls, space: SearchSpace, archs: ArchBatch, top1: Sequence[float] | np.ndarray, seed: int = 0,
            params: dict[str, Any] | None = None, feature_set: str = DEFAULT_FEATURE_SET,
            teacher: str = DEFAULT_TEACHER, num_pseudo: int = DEFAULT_NUM_PSEUDO) -> "AccuracyPredictor":
        """Fit on measured (arch, top-1 %) pairs. `params` override `DEFAULT_PARAMS` key by key; `feature_set` is
        "all", "genes" or "auto" (by the number of rows fit on; the one used is recorded); `teacher` "gp" adds
        `num_pseudo` random archs labelled by a Gaussian process fit on the measured ones (predictors/teacher.py),
        "none" fits the measured archs alone."""
        idx = to_indices(space, archs)
        y = _check_targets(top1, len(idx))
        if len(idx) < 2:
            raise ValueError(f"need at least 2 measured archs to fit a predictor, got {len(idx)}")
        params = {**DEFAULT_PARAMS, **(params or {})}
        start = time.perf_counter()
        fit_idx, fit_y, teacher_meta = _training_rows(space, idx, y, teacher, num_pseudo, seed)
        feature_set = resolve_feature_set(feature_set, len(fit_idx))
        booster = _train_booster(features(space, fit_idx, feature_set), fit_y, params, seed)
        fit_seconds = time.perf_counter() - start
        train_metrics = regression_metrics(booster.inplace_predict(features(space, idx, feature_set)), y)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "space_name": space.name,
            "space_hash": space.hash,
            "feature_version": FEATURE_VERSION,
            "feature_set": feature_set,
            "feature_names": feature_names(space, feature_set),
            "target": "top-1 accuracy (%) on the held-out split of the training set",
            "num_archs": len(idx),
            "teacher": teacher_meta,
            "seed": int(seed),
            "params": params,
            "xgboost_version": xgb.__version__,
            "metrics": json_safe({"train": train_metrics, "fit_seconds": fit_seconds}),  # undefined tau: null
        }
        return cls(booster, space, meta)

    def predict(self, archs: ArchBatch) -> np.ndarray:
        """Predicted top-1 (%) per arch, float64. A gene-index array (space.sample_indices) is the fast path."""
        x = features(self.space, archs, self.feature_set)
        if len(x) == 0:
            return np.zeros(0)
        return self.booster.inplace_predict(x).astype(np.float64)

    __call__ = predict  # usable directly as a search score function

    @property
    def feature_set(self) -> str:
        return self.meta.get("feature_set", "all")  # predictors saved before feature sets existed used "all"

    @property
    def num_archs(self) -> int:
        return int(self.meta["num_archs"])

    # ---- persistence ----------------------------------------------------------------------------------
    def _model_bytes(self) -> bytes:
        return bytes(self.booster.save_raw(raw_format="json"))

    def save(self, directory: str | Path) -> None:
        """Write `model.json` (XGBoost JSON) and `meta.json`, each atomically. The metadata records the model
        file's hash, so a pair torn by a crash between the two writes is refused on load."""
        directory = Path(directory)
        model = self._model_bytes()
        write_bytes_atomic(directory / MODEL_FILE, model)
        write_json_atomic(directory / META_FILE, {**self.meta, "model_sha256": hashlib.sha256(model).hexdigest()})

    @classmethod
    def load(cls, directory: str | Path, space: SearchSpace) -> "AccuracyPredictor":
        directory = Path(directory)
        model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
        for p in (model_path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(f"predictor file not found: {p} (a predictor directory holds "
                                        f"{MODEL_FILE} and {META_FILE})")
        meta = json.loads(meta_path.read_text())
        model = model_path.read_bytes()
        _check_meta(meta, space, where=str(directory))
        if meta.get("model_sha256") != hashlib.sha256(model).hexdigest():
            raise ValueError(f"{model_path} does not match {meta_path} (interrupted save or mixed files); "
                             f"save the predictor again")
        return cls(_booster_from_bytes(model), space, meta)

    def to_state(self) -> dict[str, str]:
        """Strings only (the XGBoost JSON model and the metadata JSON): safe in a weights_only checkpoint."""
        return {"format": FORMAT, "meta_json": json.dumps(self.meta, sort_keys=True),
                "model_json": self._model_bytes().decode()}

    @classmethod
    def from_state(cls, state: dict[str, str], space: SearchSpace) -> "AccuracyPredictor":
        keys = {"meta_json", "model_json"}
        if not isinstance(state, dict) or state.get("format") != FORMAT or not keys <= set(state):
            raise ValueError(f"not an AccuracyPredictor state: expected a dict with format '{FORMAT}', "
                             f"'meta_json' and 'model_json'")
        meta = json.loads(state["meta_json"])
        _check_meta(meta, space, where="predictor state")
        return cls(_booster_from_bytes(state["model_json"].encode()), space, meta)


def _booster_from_bytes(model: bytes) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    return booster


def _check_meta(meta: Any, space: SearchSpace, where: str) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where}: not an attentive accuracy predictor (metadata format must be '{FORMAT}')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where}: predictor format version {meta.get('format_version')}; this code reads "
                         f"version {FORMAT_VERSION}")
    if meta.get("space_hash") != space.hash:
        raise ValueError(f"{where}: predictor was fit for space '{meta.get('space_name')}' (hash "
                         f"{meta.get('space_hash')}), not for space '{space.name}' (hash {space.hash})")
    if meta.get("feature_set", "all") not in FEATURE_SETS:
        raise ValueError(f"{where}: unknown feature set {meta.get('feature_set')!r}; this code computes "
                         f"{list(FEATURE_SETS)}")
    if meta.get("feature_version") != FEATURE_VERSION:
        raise ValueError(f"{where}: predictor uses feature version {meta.get('feature_version')}, this code "
                         f"computes feature version {FEATURE_VERSION}; refit it (python -m predictors.retrain)")


# ---- hyperparameter selection --------------------------------------------------------------------------
def tune_params(space: SearchSpace, archs: ArchBatch, top1: Sequence[float] | np.ndarray,
                grid: dict[str, list] | None = None, folds: int = 5, seed: int = 0,
                feature_set: str = DEFAULT_FEATURE_SET, teacher: str = DEFAULT_TEACHER,
                num_pseudo: int = DEFAULT_NUM_PSEUDO) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """K-fold CV over the product of `grid` (default `DEFAULT_GRID`) of the whole fit (teacher included); picks the
    highest mean held-out Kendall tau (ties: lower RMSE). Returns (best params, one row per candidate with its
    mean metrics)."""
    idx = to_indices(space, archs)
    y = _check_targets(top1, len(idx))
    if folds < 2 or len(idx) < 2 * folds:
        raise ValueError(f"{folds}-fold CV needs folds >= 2 and at least {2 * folds} archs, got {len(idx)}")
    grid = DEFAULT_GRID if grid is None else grid
    order = np.random.default_rng(seed).permutation(len(idx))
    fold_data = []  # per fold: (training features, targets, held-out features, held-out targets); grid-independent
    for test in np.array_split(order, folds):
        train = np.setdiff1d(order, test)
        fit_idx, fit_y, _ = _training_rows(space, idx[train], y[train], teacher, num_pseudo, seed)
        fold_set = resolve_feature_set(feature_set, len(fit_idx))
        fold_data.append((features(space, fit_idx, fold_set), fit_y, features(space, idx[test], fold_set), y[test]))
    rows = []
    keys = sorted(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        params = {**DEFAULT_PARAMS, **dict(zip(keys, values))}
        taus, rmses = [], []
        for x_fit, y_fit, x_test, y_test in fold_data:
            booster = _train_booster(x_fit, y_fit, params, seed)
            m = regression_metrics(booster.inplace_predict(x_test), y_test)
            taus.append(m["kendall_tau"])
            rmses.append(m["rmse"])
        rows.append({"params": params, "kendall_tau": float(np.nanmean(taus)), "rmse": float(np.mean(rmses))})
    best = max(rows, key=lambda r: (r["kendall_tau"], -r["rmse"]))
    return best["params"], rows
