"""The study's statistics: bootstrap and Student-t intervals, and rank correlations.

NaN policy: a statistic that is undefined (too few values, a constant side) is NaN here; JSON
outputs turn NaN into null (`egolens.artifacts.json_text`). A bootstrap interval over a single unit
(one episode, one cluster) is undefined too: it would have zero width and make any comparison with
it "significant", so its bounds are NaN (the mean stays), and a finding that reads it cannot be
checked rather than holding by default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` [n] and its percentile-bootstrap interval at `level`.

    Resamples n values with replacement `resamples` times with a generator seeded by `seed`. One
    value: the bounds are NaN (nothing to resample; see the module's NaN policy).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    if values.size < 2:
        return float(values.mean()), math.nan, math.nan
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


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray, resamples: int, seed: int,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` [n] (units, e.g. recorded steps) and its percentile interval when the units
    come in correlated clusters [n] (e.g. the episode of each step): each resample draws whole
    clusters with replacement, as many as there are, and takes the mean over the drawn clusters'
    units. With one unit per cluster it is `bootstrap_ci` (the same draws); a single cluster gives
    NaN bounds (nothing to resample). Paired differences: pass treated − control."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    clusters = np.asarray(clusters).reshape(-1)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    if clusters.shape != values.shape:
        raise ValueError(f"one cluster per value needed, got {clusters.shape} for {values.shape}")
    _, cluster_of = np.unique(clusters, return_inverse=True)
    k = int(cluster_of.max()) + 1
    if k < 2:
        return float(values.mean()), math.nan, math.nan
    sums = np.bincount(cluster_of, weights=values, minlength=k)
    counts = np.bincount(cluster_of, minlength=k).astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, k, size=(resamples, k))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), float(low), float(high)


def nested_bootstrap_ci(groups: Sequence[np.ndarray], resamples: int, seed: int,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Mean over groups of each group's mean, and its two-level percentile-bootstrap interval.

    groups: one array of unit values per group (e.g. per seed, its episodes' outcomes as 0/1).
    Each resample draws the groups with replacement, then within every drawn group its units with
    replacement, so the interval carries both the seed-to-seed and the episode-to-episode spread.
    A mean of values in [0, 1] gets an interval inside [0, 1]. Empty groups are left out. One group
    of one unit: NaN bounds (nothing to resample).
    """
    arrays = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("bootstrap of an empty sample")
    if len(arrays) == 1 and arrays[0].size == 1:
        return float(arrays[0][0]), math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        drawn = rng.integers(0, len(arrays), size=len(arrays))
        means[r] = np.mean([arrays[g][rng.integers(0, arrays[g].size, size=arrays[g].size)].mean() for g in drawn])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(np.mean([a.mean() for a in arrays])), float(low), float(high)


# ---------------------------------------------------------------------- rank correlations

def spearman(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length vectors (average ranks for ties).

    NaN with fewer than 2 values or when either side is constant.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"lengths differ: {a.shape} vs {b.shape}")
    if a.size < 2:
        return math.nan
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of each column of values [n, k] (ties share their mean rank)."""
    return pd.DataFrame(values).rank(method="average").to_numpy(dtype=np.float64)


def spearman_columns(acts: np.ndarray, fact: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of acts [n, U] with fact [n]; NaN where constant."""
    ra = _ranks(acts)
    rf = _ranks(fact[:, None])[:, 0]
    ra = ra - ra.mean(axis=0)
    rf = rf - rf.mean()
    denominator = np.sqrt((ra * ra).sum(axis=0) * (rf * rf).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rf[:, None]).sum(axis=0) / denominator, np.nan)


# ------------------------------------------------------------------------------ over seeds

@functools.lru_cache(maxsize=64)
def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with `df` degrees of freedom.

    Inverts the CDF, integrated with Simpson's rule from 0, by bisection (accurate to ~1e-6;
    no scipy in the environment).
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got {p}, {df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:
        x = np.linspace(0.0, t, 20001)
        y = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        h = t / 20000
        return 0.5 + h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, its Student-t interval at `level` over the values (one per seed), and the sample sd.

    NaN values are left out; with fewer than two values the interval is (NaN, NaN) and sd NaN.
    With 3 seeds the interval is mean ± 4.30·sd/√3: wide, and honest about 3 samples.
    """
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = student_t_quantile(0.5 + level / 2, x.size - 1) * sd / math.sqrt(x.size)
    return mean, mean - half, mean + half, sd


# ------------------------------------------------------------------------------ crossed designs

def crossed_bootstrap_ci(values: np.ndarray, resamples: int, seed: int,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Grand mean of values [seeds, episodes] and its percentile interval when every seed plays
    the same episodes (seeds and episodes crossed, not nested).

    Each resample draws the episodes once, for all seeds (the same env seeds for every agent), and
    the seeds with replacement; the resample's statistic is the mean of the drawn cells. Episode
    draws come from the generator `bootstrap_ci` uses with this seed, seed draws from another, so
    with one seed, or several identical ones, the interval is exactly the single seed's. One
    episode: NaN bounds (the episodes, the unit every seed shares, cannot be resampled).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"crossed bootstrap needs values [seeds, episodes], got shape {values.shape}")
    n_seeds, n_episodes = values.shape
    if n_episodes < 2:
        return float(values.mean()), math.nan, math.nan
    episodes = np.random.default_rng(seed).integers(0, n_episodes, size=(resamples, n_episodes))
    seeds = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(resamples, n_seeds))
    # cell means over drawn episodes per seed: [resamples, seeds], then over the drawn seeds
    per_seed = np.stack([values[:, draw].mean(axis=1) for draw in episodes])
    means = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), float(low), float(high)


def paired_crossed_ci(treated: np.ndarray, control: np.ndarray, resamples: int, seed: int,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference treated − control, both [seeds, episodes] on the same episodes (a
    control with one row, e.g. a reference policy, is shared by every seed), with the crossed
    interval of the differences: what the two share (the episode) cancels out."""
    treated = np.asarray(treated, dtype=np.float64)
    control = np.broadcast_to(np.asarray(control, dtype=np.float64), treated.shape)
    return crossed_bootstrap_ci(treated - control, resamples, seed, level)


# ------------------------------------------------------------------------------ "no effect"

NORMAL_975 = 1.959964
NORMAL_80 = 0.841621


def equivalence_test(differences: np.ndarray, margin: float, resamples: int, seed: int,
                     alpha: float = 0.05) -> dict[str, float | bool]:
    """Two one-sided tests (TOST) that the mean of paired `differences` [n] (or [seeds, episodes],
    crossed) lies inside (−margin, margin): both one-sided tests at `alpha` reject exactly when the
    1 − 2·alpha bootstrap interval lies inside the margin. Returns the mean, that interval,
    `equivalent`, and the effect a two-sided test at `alpha` with 80% power would detect."""
    if margin <= 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    values = np.asarray(differences, dtype=np.float64)
    level = 1.0 - 2.0 * alpha
    if values.ndim == 2:
        mean, low, high = crossed_bootstrap_ci(values, resamples, seed, level)
    else:
        mean, low, high = bootstrap_ci(values, resamples, seed, level)
    return {"mean": mean, "ci_low": low, "ci_high": high, "margin": margin,
            "equivalent": bool(-margin < low and high < margin),
            "detectable_effect": detectable_effect(values.reshape(-1))}


def detectable_effect(values: np.ndarray, power_z: float = NORMAL_80, alpha_z: float = NORMAL_975) -> float:
    """The smallest mean difference a two-sided 5% test on these paired differences [n] detects
    with 80% power (normal approximation): (z_0.975 + z_0.8)·sd/√n. NaN with fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2:
        return math.nan
    return float((alpha_z + power_z) * values.std(ddof=1) / math.sqrt(values.size))
