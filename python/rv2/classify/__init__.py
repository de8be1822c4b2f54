"""Disease classifiers: the four training strategies, thresholds and inference.

    from rv2.classify import ClassifierConfig, train_classifier, predict, best_f1_thresholds
"""
from __future__ import annotations

from rv2.classify.config import ClassifierConfig
from rv2.classify.thresholds import best_f1_thresholds

__all__ = ["ClassifierConfig", "train_classifier", "predict", "best_f1_thresholds", "load_model_dir"]


def __getattr__(name):  # torch-heavy parts load on first use
    if name == "train_classifier":
        from rv2.classify.train import train_classifier
        return train_classifier
    if name in ("predict", "load_model_dir"):
        from rv2.classify import inference as _p
        return getattr(_p, name)
    raise AttributeError(name)
