"""Accuracy predictors for the search: arch features, an XGBoost regressor of top-1 (with an optional
Gaussian-process teacher), the retrain-and-compare library (`predictors.compare`) behind
`python -m predictors.retrain`, and training-free proxies. Measuring archs on a supernet lives in
`attentive.measure`; `attentive` never imports this package (it sees predictors through `attentive.predictor`)."""
from .features import FEATURE_VERSION, feature_names, features
from .xgb import AccuracyPredictor

__all__ = ["FEATURE_VERSION", "AccuracyPredictor", "feature_names", "features"]
