"""Scoring archs: the one definition of a score function, used by the samplers and the searches.

A score function maps a batch of archs to one score each, higher is better (predicted accuracy, minus a loss, a
training-free proxy). It receives a list of `Arch`, unless it is an `IndexScorer`: then it receives the gene-index
array (n, G) itself, which skips building an Arch per candidate (predictors and `count_flops_batch` take both).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .space import Arch, SearchSpace

ScoreFn = Callable[[Any], Sequence[float] | np.ndarray]


class IndexScorer:
    """A score function that takes gene-index arrays (n, G) as well as lists of Arch."""

    accepts_indices = True

    def __init__(self, fn: Callable[[Any], Any], name: str = "") -> None:
        if not callable(fn):
            raise TypeError(f"IndexScorer needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, archs_or_indices: Sequence[Arch] | np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(archs_or_indices), dtype=np.float64).reshape(-1)

    def __repr__(self) -> str:
        return f"IndexScorer({self.name})"


def predictor_scorer(predictor: Any) -> IndexScorer:
    """Score = `predictor.predict(index_array)` (predicted accuracy; higher is better)."""
    if not callable(getattr(predictor, "predict", None)):
        raise TypeError(f"predictor must have a predict(archs_or_index_array) method, got {type(predictor).__name__}")
    return IndexScorer(predictor.predict, name=f"{type(predictor).__name__}.predict")


def score_batch(score_fn: ScoreFn, indices: np.ndarray, space: SearchSpace) -> np.ndarray:
    """`score_fn` on the archs of gene-index array `indices` (n, G), checked: one finite score per arch."""
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    indices = np.asarray(indices)
    arg = indices if getattr(score_fn, "accepts_indices", False) else [space.arch_from_indices(r) for r in indices]
    scores = np.asarray(score_fn(arg), dtype=np.float64).reshape(-1)
    if scores.shape != (len(indices),):
        raise ValueError(f"score_fn must return one score per arch: {len(indices)} archs, got {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"score_fn returned a non-finite score ({scores[bad]}) for arch "
                         f"{space.arch_from_indices(indices[bad])}")
    return scores
