"""What a probe's held-out predictions score: accuracy, balanced accuracy and AUC for yes/no and
categorical targets, R² for quantities, and the same weighted by how often a bootstrap draws each
episode."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from egolens.analysis.reading.probe_targets import Kind

KINDS: tuple[Kind, ...] = ("binary", "categorical", "continuous")
METRICS: dict[Kind, tuple[str, ...]] = {
    "binary": ("accuracy", "balanced_accuracy", "auc"),
    "categorical": ("accuracy", "balanced_accuracy"),
    "continuous": ("r2",),
}
"""The held-out scores of each kind of target."""


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of rows predicted right; NaN with no rows."""
    return float(np.mean(y == predicted)) if len(y) else math.nan


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present in y of the fraction of that class predicted right."""
    classes = np.unique(y)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in classes])) if len(classes) else math.nan


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of score for y ∈ {0, 1} (Mann-Whitney, ties counted half);
    NaN unless both classes are present."""
    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination 1 − SS_res / SS_tot; NaN when y is constant or empty."""
    total = float(np.sum((y - np.mean(y)) ** 2)) if len(y) else 0.0
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else math.nan


def scores(kind: Kind, y: np.ndarray, predicted: np.ndarray, probability: np.ndarray | None) -> dict[str, float]:
    """The held-out metrics of `METRICS[kind]` on rows y, predicted (and probability, binary)."""
    if kind == "continuous":
        return {"r2": r2(y, predicted)}
    out = {"accuracy": accuracy(y, predicted), "balanced_accuracy": balanced_accuracy(y, predicted)}
    if kind == "binary":
        out["auc"] = auc(y, probability)
    return out


def weighted_scores(kind: Kind, y: np.ndarray, predicted: np.ndarray, probability: np.ndarray | None,
                    weights: np.ndarray) -> dict[str, np.ndarray]:
    """`scores` of rows y, predicted, probability [R] under each row of weights [D, R] at once: a
    weight k counts the row k times (an episode drawn k times by the bootstrap). {metric: [D]},
    NaN where undefined."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    total = w.sum(axis=1)
    nan = np.full(len(w), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # nanmean of draws without any row
        if kind == "continuous":
            mean = (w @ y) / total
            spread = (w * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
            return {"r2": np.where(spread > 0, 1.0 - (w @ (y - predicted) ** 2) / spread, nan)}
        correct = (y == predicted).astype(np.float64)
        recall = [(w[:, y == c] @ correct[y == c]) / w[:, y == c].sum(axis=1) for c in np.unique(y)]
        out = {"accuracy": (w @ correct) / total,
               "balanced_accuracy": np.nanmean(np.stack(recall), axis=0) if recall else nan}
    if kind == "binary":
        out["auc"] = _weighted_auc(y, probability, w) if len(y) else nan
    return out


def _weighted_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of score for y ∈ {0, 1} under row weights w [D, R]: the weighted share of (positive,
    negative) pairs ranked right, ties counted half. [D], NaN where a class has no weight."""
    order = np.argsort(score, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(score[order])) + 1]            # groups of tied scores
    positive = y[order] == 1
    pos = np.add.reduceat(w[:, order] * positive, starts, axis=1)
    neg = np.add.reduceat(w[:, order] * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)
