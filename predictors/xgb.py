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

from attentive.fileio import (BadFileError, check_format, json_safe, read_json_file, write_bytes_atomic,
                              write_json_atomic)
from attentive.metrics import regression_metrics
from attentive.predictor import DEFAULT_TEACHER
from attentive.space import SearchSpace

from .features import (FEATURE_SETS, FEATURE_VERSION, ArchBatch, feature_names, features, resolve_feature_set,
                       to_indices)
from .teacher import DEFAULT_NUM_PSEUDO, check_teacher, gp_pseudo_labels

FORMAT = "attentive.accuracy_predictor"
FORMAT_VERSION = 1
MODEL_FILE, META_FILE = "model.json", "meta.json"

# Chosen by measurement (`tune_params`, then held-out tau over random splits): predictors/README.md, "Choosing
# the XGBoost defaults".
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 400,
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "reg_lambda": 1.0,
}
# "auto": gene features alone from 100 fitting rows on, the totals too below that (predictors/features.py;
# the measurements are in predictors/README.md).
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
        "none" (`attentive.predictor.DEFAULT_TEACHER`) fits the measured archs alone."""
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
        return self.meta["feature_set"]

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
        """Read a predictor written by `save`. Raises `attentive.fileio.BadFileError` naming the file when a file
        is missing, truncated or not JSON, of another format, for another space or feature version, or when the
        model does not belong to the metadata or XGBoost cannot read it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise BadFileError(directory, f"no such predictor directory (a predictor directory holds {MODEL_FILE} "
                                          f"and {META_FILE}, written by AccuracyPredictor.save)")
        model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
        for path in (meta_path, model_path):
            if not path.is_file():
                raise BadFileError(path, f"predictor file not found (a predictor directory holds {MODEL_FILE} and "
                                         f"{META_FILE})")
        meta = read_json_file(meta_path, what="predictor metadata file")
        _check_meta(meta, space, where=meta_path)
        model = model_path.read_bytes()
        _read_json(model_path, model)
        if meta.get("model_sha256") != hashlib.sha256(model).hexdigest():
            raise BadFileError(model_path, f"does not match {meta_path} (interrupted save or mixed files); save the "
                                           f"predictor again")
        return cls(_booster_from_bytes(model, where=model_path), space, meta)

    def to_state(self) -> dict[str, str]:
        """Strings only (the XGBoost JSON model and the metadata JSON): safe in a weights_only checkpoint."""
        return {"format": FORMAT, "meta_json": json.dumps(self.meta, sort_keys=True),
                "model_json": self._model_bytes().decode()}

    @classmethod
    def from_state(cls, state: dict[str, str], space: SearchSpace,
                   where: str | Path = "predictor state") -> "AccuracyPredictor":
        """The predictor of `to_state()`. `where` names its origin in errors (e.g. "CKPT: predictor"); refusals
        are `BadFileError`s, as for `load`."""
        keys = {"meta_json", "model_json"}
        if not isinstance(state, dict) or state.get("format") != FORMAT or not keys <= set(state):
            raise BadFileError(where, f"not an AccuracyPredictor state: expected a dict with format '{FORMAT}', "
                                      f"'meta_json' and 'model_json'")
        if not all(isinstance(state[k], str) for k in keys):
            raise BadFileError(where, "'meta_json' and 'model_json' must be JSON strings")
        meta = _read_json(where, state["meta_json"])
        _check_meta(meta, space, where=where)
        model = state["model_json"].encode()
        _read_json(where, model)
        return cls(_booster_from_bytes(model, where=where), space, meta)


def _read_json(where: str | Path, data: bytes | str) -> Any:
    """JSON held in memory (a model file's bytes, a state's strings); files go through fileio.read_json_file."""
    try:
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
        raise BadFileError(where, f"not JSON (truncated, or not written by AccuracyPredictor): {e}") from None


def _booster_from_bytes(model: bytes, where: str | Path) -> xgb.Booster:
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(model))
    except xgb.core.XGBoostError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BadFileError(where, f"XGBoost cannot read the model: {first_line[:200]}") from None
    return booster


def _check_meta(meta: Any, space: SearchSpace, where: str | Path) -> None:
    check_format(meta, where, FORMAT, FORMAT_VERSION, "an attentive accuracy predictor")
    if meta.get("space_hash") != space.hash:
        raise BadFileError(where, f"predictor was fit for space '{meta.get('space_name')}' (hash "
                                  f"{meta.get('space_hash')}), not for space '{space.name}' (hash {space.hash})")
    if meta.get("feature_version") != FEATURE_VERSION:
        raise BadFileError(where, f"predictor uses feature version {meta.get('feature_version')}, this code "
                                  f"computes feature version {FEATURE_VERSION}; refit it "
                                  f"(python -m predictors.retrain)")
    if meta.get("feature_set") not in FEATURE_SETS:
        raise BadFileError(where, f"feature set {meta.get('feature_set')!r} is not one this code computes "
                                  f"({list(FEATURE_SETS)})")
    if not isinstance(meta.get("num_archs"), int):
        raise BadFileError(where, f"num_archs must be an integer, got {meta.get('num_archs')!r}")


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
