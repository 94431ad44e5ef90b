"""Arch -> feature vector, vectorized over many archs.

Features (in this order): resolution; width of the stem, of every stage and of the head; depth, kernel size
and expand ratio of every stage -- the "genes" -- then analytic MFLOPs and parameters (millions). Raw values,
not one-hot: tree models split on them directly and the MLP standardizes them.

Two feature sets: "all" (the whole vector) and "genes" (without the two cost totals); "auto" picks by the number
of rows a model is fit on, measured archs plus any pseudo-labelled ones (`resolve_feature_set`).
predictors/README.md gives the measurements behind it.

`FEATURE_VERSION` changes whenever the layout or meaning of the vector changes; a saved predictor records it
(with the space hash) and refuses to load under another one.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from attentive.flops import encode, flops_table
from attentive.space import Arch, SearchSpace

FEATURE_VERSION = 1

ArchBatch = Sequence[Arch | dict] | np.ndarray
FEATURE_SETS = ("all", "genes")
_DERIVED = ["mflops", "mparams"]


# "auto" fits on "genes" from this many rows on, on "all" below: with a few dozen archs the MFLOPs total is the
# best single summary, with more the trees do better without it (predictors/README.md).
GENES_MIN_ARCHS = 100


def _check_feature_set(feature_set: str) -> None:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; allowed: {list(FEATURE_SETS)}")


def resolve_feature_set(feature_set: str, num_archs: int) -> str:
    """"auto" -> "all" below `GENES_MIN_ARCHS` fitting rows, else "genes"; "all" / "genes" pass through."""
    if feature_set == "auto":
        return "all" if num_archs < GENES_MIN_ARCHS else "genes"
    _check_feature_set(feature_set)
    return feature_set


@lru_cache(maxsize=32)
def _gene_value_tables(space_hash: str, space: SearchSpace) -> tuple[np.ndarray, ...]:
    """Per gene, the option values as a float array: feature column g is `tables[g][indices[:, g]]`."""
    return tuple(np.asarray(options, dtype=np.float64) for opts in space.choices().values() for options in opts)


def feature_names(space: SearchSpace, feature_set: str = "all") -> list[str]:
    """Column names of `features(space, ..., feature_set)`, e.g. for feature importances and plots."""
    _check_feature_set(feature_set)
    stages = [s.name for s in space.stages]
    return (
        ["resolution", "width_stem", *[f"width_{s}" for s in stages], "width_head"]
        + [f"depth_{s}" for s in stages]
        + [f"kernel_{s}" for s in stages]
        + [f"expand_{s}" for s in stages]
        + (_DERIVED if feature_set == "all" else [])
    )


def to_indices(space: SearchSpace, archs: ArchBatch) -> np.ndarray:
    """Gene-index array (n, G) from a list of Arch/dicts or an index array (checked against the space)."""
    if not isinstance(archs, np.ndarray):
        return encode(space, list(archs))
    sizes = np.asarray(space.gene_sizes())
    if archs.ndim != 2 or archs.shape[1] != len(sizes):
        raise ValueError(f"index array must have shape (n, {len(sizes)}) for space '{space.name}' "
                         f"(one column per gene), got {archs.shape}")
    if not np.issubdtype(archs.dtype, np.integer):
        raise ValueError(f"index array must hold integers (choice indices), got dtype {archs.dtype}")
    bad = (archs < 0) | (archs >= sizes)
    if bad.any():
        row, gene = map(int, np.argwhere(bad)[0])
        raise ValueError(f"index array row {row}, gene {gene}: index {int(archs[row, gene])} out of range "
                         f"[0, {int(sizes[gene])}) for space '{space.name}'")
    return archs.astype(np.int64, copy=False)


def features(space: SearchSpace, archs: ArchBatch, feature_set: str = "all") -> np.ndarray:
    """Feature matrix (n, F) float32 for `archs`: a list of Arch/dicts, or a gene-index array from
    `space.sample_indices` / `attentive.encode` (the fast path: no Python loop over archs)."""
    _check_feature_set(feature_set)
    idx = to_indices(space, archs)
    tables = _gene_value_tables(space.hash, space)
    num_derived = len(_DERIVED) if feature_set == "all" else 0
    out = np.empty((len(idx), len(tables) + num_derived), dtype=np.float32)
    for g, values in enumerate(tables):
        out[:, g] = values[idx[:, g]]
    if not num_derived:
        return out
    flops, params = flops_table(space)(idx)
    out[:, -2] = flops / 1e6
    out[:, -1] = params / 1e6
    return out
