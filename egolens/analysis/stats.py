"""Bootstrap confidence intervals and rank correlations."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` [n] and its percentile-bootstrap interval at `level`.

    Resamples n values with replacement `resamples` times with a generator seeded by `seed`.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), float(low), float(high)


def paired_bootstrap_ci(treated: np.ndarray, control: np.ndarray, resamples: int, seed: int,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences treated − control ([n] each, pair i = the same unit, e.g.
    the same env seed) and its percentile-bootstrap interval at `level`.

    The pairs are resampled together (`bootstrap_ci` of the per-pair differences), so what the
    two conditions share (the episode's start) cancels out of the interval.
    """
    treated = np.asarray(treated, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    if treated.shape != control.shape or treated.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {treated.shape} and {control.shape}")
    return bootstrap_ci(treated - control, resamples, seed, level)
