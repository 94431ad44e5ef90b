"""Accuracy predictors for the search: arch features, an XGBoost regressor of top-1, measured (arch, top-1)
collection from a supernet, the retraining CLI (`python -m predictors.retrain`) and training-free proxies."""
from .features import FEATURE_VERSION, feature_names, features
from .xgb import AccuracyPredictor

__all__ = ["FEATURE_VERSION", "AccuracyPredictor", "feature_names", "features"]
