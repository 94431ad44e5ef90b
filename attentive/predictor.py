"""What the library needs from an accuracy predictor, without importing one.

`attentive` never imports `predictors` (the data flow reads space -> supernet -> sampler -> trainer -> predictor
-> search). The trainer fits and restores predictors through a `PredictorBackend` handed to it; `train.py` wires
in `predictors.xgb`'s. Anything with these methods works (tests pass a stand-in).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .space import Arch, SearchSpace

# Pseudo-label teachers of the XGBoost predictor (predictors/teacher.py): "gp" adds archs labelled by a Gaussian
# process fit on the measured ones, "none" fits the measured archs alone. The one default, for the training
# config and the library alike; `python -m predictors.retrain` compares both explicitly.
TEACHERS = ("gp", "none")
DEFAULT_TEACHER = "none"


@runtime_checkable
class AccuracyModel(Protocol):
    """A fitted predictor of held-out top-1 (%) from the arch."""

    def predict(self, archs: Sequence[Arch] | np.ndarray) -> np.ndarray: ...

    def to_state(self) -> dict[str, str]: ...  # str/numbers only: it goes into training checkpoints

    def save(self, directory: str | Path) -> None: ...


@runtime_checkable
class PredictorBackend(Protocol):
    """Fits, restores and loads `AccuracyModel`s; `predictors.xgb.AccuracyPredictor` (the class) is one."""

    def fit(self, space: SearchSpace, archs: Sequence[Arch], top1: Any, seed: int = 0,
            teacher: str = DEFAULT_TEACHER) -> AccuracyModel: ...

    def from_state(self, state: dict[str, str], space: SearchSpace) -> AccuracyModel: ...

    def load(self, directory: str | Path, space: SearchSpace) -> AccuracyModel: ...
