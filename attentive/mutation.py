"""Variation of archs on gene-index arrays (rows of `space.sample_indices`): the one mutation and crossover,
used by the searches (attentive.search) and by in-bucket sampling (attentive.sampling)."""
from __future__ import annotations

import numpy as np


def mutate_indices(rows: np.ndarray, sizes: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Each gene of `rows` (any shape ending in G) switches to another of its `sizes` options with probability
    `prob`; genes with one option never change. Draws two `rng.random(rows.shape)` arrays, in this order."""
    change = (rng.random(rows.shape) < prob) & (sizes > 1)
    shift = 1 + (rng.random(rows.shape) * np.maximum(sizes - 1, 1)).astype(np.int64)  # never the same option
    return np.where(change, (rows + shift) % sizes, rows)


def crossover_indices(a: np.ndarray, b: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Each gene from `a` with probability `prob`, else from `b` (one `rng.random(a.shape)` draw)."""
    return np.where(rng.random(a.shape) < prob, a, b)
