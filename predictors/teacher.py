"""A Gaussian-process teacher: pseudo-labels for random archs, so the XGBoost predictor learns a smooth surface.

With a few hundred measured archs, boosted trees cannot interpolate between the gene combinations they saw;
a GP (one RBF length scale per feature, plus a noise term) does, and ranks held-out archs far better (mean
held-out Kendall tau 0.850 vs 0.798 at 200 archs; predictors/README.md). The GP is slow to predict and awkward to
store, so it only teaches: it labels `num_pseudo` archs drawn uniformly from the space, and XGBoost fits the
measured archs plus those. The saved predictor stays an XGBoost JSON model with XGBoost's prediction speed.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Kernel, WhiteKernel
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from attentive.predictor import TEACHERS
from attentive.space import SearchSpace

from .features import features

DEFAULT_NUM_PSEUDO = 2000
# The kernel's hyperparameters are chosen by marginal likelihood on at most this many of the measured archs
# (a seeded subset), then the GP conditions on all of them: the optimizer costs O(n^3) per step, and on the
# 500-arch set a 150-arch subset gave the same tau (0.839 vs 0.837) at half the fit time.
HYPERPARAMETER_MAX_ARCHS = 200


def check_teacher(teacher: str) -> None:
    """Refuse a teacher name outside `attentive.predictor.TEACHERS` (the one list, shared with the config)."""
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; allowed: {list(TEACHERS)}")


def gaussian_process(num_features: int, seed: int, kernel: Kernel | None = None) -> Pipeline:
    """Standardized inputs -> GP with an ARD RBF kernel plus white noise, hyperparameters by marginal likelihood
    (as in BO-based NAS predictors, e.g. BANANAS' GP baseline and NASBOT); a given `kernel` is used as it is."""
    if kernel is None:
        kernel = (ConstantKernel(1.0) * RBF(length_scale=[3.0] * num_features, length_scale_bounds=(0.1, 1e3))
                  + WhiteKernel(0.1))
        optimizer = "fmin_l_bfgs_b"
    else:
        optimizer = None
    return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed,
                                                                    optimizer=optimizer))


def fit_gaussian_process(x: np.ndarray, y: np.ndarray, seed: int,
                         hyper_max: int = HYPERPARAMETER_MAX_ARCHS) -> Pipeline:
    """GP on (x, y); kernel hyperparameters fitted on a seeded subset of at most `hyper_max` rows."""
    # One BLAS thread: these matrices are small and the fit runs beside the trainer (extra threads only spin).
    with threadpool_limits(1), warnings.catch_warnings():
        # A length scale at its bound means an irrelevant feature, not a failure.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if len(x) <= hyper_max:
            return gaussian_process(x.shape[1], seed).fit(x, y)
        subset = np.random.default_rng(seed).choice(len(x), hyper_max, replace=False)
        tuned = gaussian_process(x.shape[1], seed).fit(x[subset], y[subset])
        return gaussian_process(x.shape[1], seed, kernel=tuned[-1].kernel_).fit(x, y)


def gp_pseudo_labels(space: SearchSpace, idx: np.ndarray, y: np.ndarray, num_pseudo: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(`num_pseudo` uniformly random archs as gene indices, the GP's predicted top-1 for them, a metadata dict).
    The GP is fit on the measured archs' gene features."""
    if num_pseudo < 1:
        raise ValueError(f"num_pseudo must be >= 1, got {num_pseudo}")
    gp = fit_gaussian_process(features(space, idx, "genes"), y, seed)
    pseudo = space.sample_indices(np.random.default_rng(seed), num_pseudo)
    with threadpool_limits(1):
        labels = gp.predict(features(space, pseudo, "genes"))
    meta = {"kind": "gp", "num_pseudo": int(num_pseudo), "kernel": str(gp[-1].kernel_)}
    return pseudo, labels, meta
