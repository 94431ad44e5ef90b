"""Ranking and regression metrics of predicted vs measured accuracy (held-out archs): the one home of Kendall tau
and friends, used by the trainer's in-training predictor report, `predictors` and the bench scripts."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr


def top_fraction_overlap(predicted: np.ndarray, true: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the true top-`fraction` archs that are also in the predicted top-`fraction` (at least one arch)."""
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    k = max(1, math.ceil(fraction * len(true)))
    top_true = set(np.argsort(-true, kind="stable")[:k].tolist())
    top_pred = set(np.argsort(-predicted, kind="stable")[:k].tolist())
    return len(top_true & top_pred) / k


def _finite_or_nan(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Kendall tau-b (scipy) over the pairs where both sides are finite, with its p-value and the pair count;
    tau and p are None where undefined (fewer than 2 pairs, a constant side), so the result stays valid JSON."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 2 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:  # scipy warns and returns NaN; say so quietly
        return {"tau": None, "p_value": None, "n": n}
    res = kendalltau(x[ok], y[ok])
    tau, p = float(res.statistic), float(res.pvalue)
    return {"tau": tau if math.isfinite(tau) else None, "p_value": p if math.isfinite(p) else None, "n": n}


def _none_to_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def rank_metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Kendall tau, Spearman rho and top-10% overlap (NaN when undefined, e.g. constant input)."""
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if predicted.shape != true.shape or predicted.ndim != 1:
        raise ValueError(f"predicted and true must be 1-D arrays of equal length, got {predicted.shape} and "
                         f"{true.shape}")
    if len(true) < 2:
        raise ValueError(f"rank metrics need at least 2 archs, got {len(true)}")
    constant = np.ptp(predicted) == 0 or np.ptp(true) == 0  # scipy warns and returns NaN; say so quietly
    return {
        "kendall_tau": _none_to_nan(kendall_tau(predicted, true)["tau"]),
        "spearman_rho": float("nan") if constant else _finite_or_nan(spearmanr(predicted, true).statistic),
        "top10_overlap": top_fraction_overlap(predicted, true, 0.1),
    }


def regression_metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """`rank_metrics` plus RMSE (accuracy points)."""
    out = rank_metrics(predicted, true)
    out["rmse"] = float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - np.asarray(true, np.float64)) ** 2)))
    return out


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float]:
    """(top-1 of a minus top-1 of b, the standard error of that difference), both in points, from two nets'
    per-image correctness on the same images (attentive.evaluate.correct_per_image). Paired: only the images the
    two nets disagree on add noise, so two similar subnets are told apart on far fewer images than their separate
    binomial errors suggest."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired_difference needs two 1-D correctness vectors over the same >= 2 images, got "
                         f"shapes {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    return 100.0 * float(diff.mean()), 100.0 * float(diff.std(ddof=1)) / math.sqrt(diff.size)
