"""Linear probes with controls: is a fact linearly readable from a site's activations, more than
from the raw observation, the untrained network, or a control task?

A probe is scikit-learn's logistic regression (binary and categorical targets) or ridge
regression (continuous ones) on standardised features, its regularisation chosen by grouped
cross-validation (`GroupKFold` by episode) on the training episodes only. The split into
training and held-out rows is **by episode**: consecutive steps of an episode are nearly equal,
so a split by step scores memorised episodes, not a readable fact.

Scores on the held-out episodes: accuracy, balanced accuracy and AUC (binary), accuracy and
balanced accuracy (categorical), R² (continuous), each with a percentile-bootstrap interval
over held-out **episodes** (an episode's rows are drawn together). Every input is scored on
the same episode draws, so differences between inputs (selectivity, site − raw observation,
trained − untrained) get paired intervals.

The control task (Hewitt & Liang 2019): each identity (a vehicle id for per-vehicle rows) gets
a label drawn at random from the target's marginal distribution, fixed for that identity. A
probe that scores well on it memorises identities; selectivity = probe score − control score.

Shapes: rows R (steps, or (step, vehicle) pairs), units U.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from egolens.analysis.reading.probe_scores import KINDS, METRICS, scores, weighted_scores
from egolens.analysis.reading.probe_targets import Kind, Level, vehicle_rows
from egolens.probes_config import probe_site_level

LOGISTIC_C = tuple(float(c) for c in np.logspace(-3, 2, 6))
"""Inverse regularisation strengths tried for logistic probes (on standardised features)."""
RIDGE_ALPHA = tuple(float(a) for a in np.logspace(-2, 4, 7))
"""Ridge penalties tried for continuous probes (on standardised features)."""
MAX_ITER = 1000
"""lbfgs iterations per logistic fit (separable data with a large C stops here)."""
RAW = "obs"
"""The raw observation as a probe input: a vehicle's row [F] for per-vehicle targets, the whole
observation [E·F] for per-step targets."""



class ProbeFitError(ValueError):
    """The data cannot fit a probe (one class only, too few episodes, no held-out rows with a
    target): `probe_table` reports such a probe as NaN with the reason instead of failing."""


# ------------------------------------------------------------------------------ features

def site_level(site: str) -> Level | None:
    """Whether a site has one row per other vehicle ("vehicle") or one per step ("step"); None
    for the raw observation (either). An unknown site raises, naming it."""
    if site == RAW:
        return None
    try:
        return probe_site_level(site)
    except ValueError as error:
        raise KeyError(f"{error}; or {RAW!r}, the raw observation") from None


def site_features(arrays: Mapping[str, np.ndarray], site: str, level: Level) -> np.ndarray:
    """The probe's input at `site` for targets of `level`: [R, U] float64.

    arrays: a rollout's arrays ("obs" [N, E, F] and activations by hook name). Per-vehicle rows
    follow `vehicle_rows(obs)`: others_embedding.hook_post.i [N, E-1, U] gives the vehicle's row;
    hook_k / hook_v [N, H, E, d] give the vehicle's key / value, heads concatenated [H·d]; "obs"
    its observation row [F]. Per-step rows: one per step; [N, 1, U] and [N, H, 1, d] are
    flattened, "obs" is the whole observation [E·F].
    """
    site_is = site_level(site)
    if site_is is not None and site_is != level:
        raise ValueError(f"site {site!r} has one row per {site_is}, the target one per {level}")
    if site not in arrays:
        raise KeyError(f"site {site!r} has no recorded activation; recorded: {', '.join(sorted(arrays))}")
    acts = np.asarray(arrays[site], dtype=np.float64)
    if level == "step":
        return acts.reshape(len(acts), -1)
    step_index, row = vehicle_rows(arrays[RAW])
    if site == RAW:
        return acts[step_index, row]
    if site.startswith("others_embedding"):
        return acts[step_index, row - 1]
    return acts[step_index, :, row, :].reshape(len(step_index), -1)


# ------------------------------------------------------------------------------ splits

def held_out_episodes(episodes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded choice of round(fraction · n) of the distinct episode ids (sorted) to hold out.

    The choice depends only on the ids, the fraction and the seed, so the trained and untrained
    networks' rollouts of the same env seeds hold out the same episodes.
    """
    ids = np.unique(np.asarray(episodes))
    count = int(round(fraction * len(ids)))
    if not 0 < count < len(ids):
        raise ValueError(f"holding out {fraction} of {len(ids)} episodes leaves an empty side")
    return np.sort(np.random.default_rng(seed).choice(ids, size=count, replace=False))


def control_labels(target: np.ndarray, identity: np.ndarray, seed: int) -> np.ndarray:
    """The control task's labels [R]: each distinct identity (e.g. vehicle id) gets one value
    drawn (seeded) from the finite values of target [R], the same for all its rows."""
    target = np.asarray(target, dtype=np.float64)
    ids, inverse = np.unique(np.asarray(identity), return_inverse=True)
    finite = target[np.isfinite(target)]
    if finite.size == 0:
        raise ProbeFitError("the control task needs a target with finite values")
    return np.random.default_rng(seed).choice(finite, size=len(ids))[inverse]


# ------------------------------------------------------------------------------ fitting

@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe. estimator: the scaler + linear model pipeline; penalty: the chosen C
    (logistic) or alpha (ridge); classes: the labels (classification) or None; direction:
    the weights per site unit of the raw (unstandardised) features, [U] for a binary or
    continuous target (positive = class 1 / larger), [classes, U] for a categorical one;
    intercept: the matching intercept(s)."""

    kind: Kind
    estimator: Pipeline
    penalty: float
    classes: np.ndarray | None
    direction: np.ndarray
    intercept: np.ndarray


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown target kind {kind!r}; kinds: {', '.join(KINDS)}")


def mean_log_loss(y: np.ndarray, probability: np.ndarray, classes: np.ndarray) -> float:
    """Mean of −log p(y) over rows: y [R] (each one of `classes`), probability [R, classes] with
    columns in the order of `classes`; p is clipped at 1e-15 (a confident miss costs 34.5)."""
    column = np.searchsorted(classes, y)
    return float(-np.mean(np.log(np.clip(probability[np.arange(len(y)), column], 1e-15, 1.0))))


def _choose_c(scaled: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
              grid: Sequence[float]) -> float:
    """The C of `grid` (ascending) with the least mean validation log-loss over `splits`; each
    fold's path is warm-started from the previous, smaller C. A fold whose training rows miss a
    class, or whose validation rows hold a class its training rows lack, is left out."""
    losses = np.full((len(splits), len(grid)), np.nan)
    for fold, (train, val) in enumerate(splits):
        if len(np.unique(y[train])) < 2 or not set(np.unique(y[val])) <= set(np.unique(y[train])):
            continue
        model = LogisticRegression(warm_start=True, max_iter=MAX_ITER)
        for i, c in enumerate(grid):
            model.set_params(C=c).fit(scaled[train], y[train])
            losses[fold, i] = mean_log_loss(y[val], model.predict_proba(scaled[val]), model.classes_)
    scored = ~np.all(np.isnan(losses), axis=0)
    if not scored.any():
        raise ProbeFitError("no cross-validation fold holds every class on both sides; too few episodes")
    mean = np.where(scored, np.nanmean(np.where(scored, losses, 0.0), axis=0), np.inf)
    return float(grid[int(np.argmin(mean))])


def fit_probe(features: np.ndarray, target: np.ndarray, episode: np.ndarray, kind: Kind, *, folds: int = 5,
              penalties: Sequence[float] | None = None) -> ProbeFit:
    """Fit a probe of target [R] on features [R, U], its penalty chosen from `penalties` (default
    `LOGISTIC_C` / `RIDGE_ALPHA`) by `GroupKFold` with up to `folds` folds grouped by episode [R]:
    validation log-loss for classification (`_choose_c`), R² for regression; then refitted on all
    rows. Features are standardised with the mean and sd of all these rows (before the folds: no
    label enters them). Deterministic (lbfgs, closed-form ridge, unshuffled folds, one BLAS thread
    whatever the machine)."""
    _check_kind(kind)
    features, target, episode = np.asarray(features, dtype=np.float64), np.asarray(target), np.asarray(episode)
    groups = len(np.unique(episode))
    if groups < 2:
        raise ProbeFitError(f"cross-validation by episode needs at least 2 training episodes, got {groups}")
    splits = list(GroupKFold(n_splits=min(folds, groups)).split(features, target, episode))
    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    # One BLAS thread: lbfgs's many tiny BLAS calls spin-wait with more threads than free cores (8x
    # slower under load, benchmarks/probe_stages.py), and the probes already run one per process
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "continuous":
            search = GridSearchCV(Ridge(), {"alpha": list(penalties or RIDGE_ALPHA)}, scoring="r2", cv=splits)
            search.fit(scaled, target.astype(np.float64))
            linear, penalty = search.best_estimator_, float(search.best_params_["alpha"])
        else:
            y = target.astype(np.int64)
            if len(np.unique(y)) < 2:
                raise ProbeFitError("a classification probe needs at least 2 classes in its training rows")
            penalty = _choose_c(scaled, y, splits, sorted(penalties or LOGISTIC_C))
            linear = LogisticRegression(C=penalty, max_iter=MAX_ITER).fit(scaled, y)
    coef = np.atleast_2d(linear.coef_) / scaler.scale_
    intercept = np.atleast_1d(linear.intercept_) - coef @ scaler.mean_
    classes = getattr(linear, "classes_", None)
    direction = coef if kind == "categorical" else coef[0]
    return ProbeFit(kind, Pipeline([("scale", scaler), ("probe", linear)]), penalty, classes, direction,
                    intercept if kind == "categorical" else intercept[:1])


def predictions(fit: ProbeFit, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted label or value [R], probability of class 1 [R] for a binary probe, else None)."""
    features = np.asarray(features, dtype=np.float64)
    predicted = fit.estimator.predict(features)
    if fit.kind != "binary":
        return predicted, None
    return predicted, fit.estimator.predict_proba(features)[:, 1]


# ------------------------------------------------------------------------------ probes with controls

@dataclass(frozen=True)
class ProbeData:
    """One probe input: features [R, U], target [R] (NaN rows are dropped), episode [R] and
    identity [R], the control task's unit: the vehicle id for per-vehicle rows; per-step rows have
    no vehicle, so the caller names the unit (e.g. the step within its episode)."""

    features: np.ndarray
    target: np.ndarray
    episode: np.ndarray
    identity: np.ndarray


@dataclass(frozen=True)
class HeldOut:
    """A probe's held-out predictions: y, predicted, probability (binary) and episode, [R_test]."""

    y: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray | None
    episode: np.ndarray


def episode_split(data: ProbeData, test_episodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target as float [R], and the rows [R] bool of the training and of the held-out episodes
    that have a finite target; refuses a split that leaves either side empty."""
    target = np.asarray(data.target, dtype=np.float64)
    keep = np.isfinite(target)
    test = np.isin(data.episode, test_episodes) & keep
    train = ~np.isin(data.episode, test_episodes) & keep
    if not train.any() or not test.any():
        raise ProbeFitError("the episode split left no training or no held-out rows with a target")
    return target, train, test


def fit_held_out(data: ProbeData, kind: Kind, test_episodes: np.ndarray, *, folds: int = 5,
                 penalties: Sequence[float] | None = None) -> tuple[ProbeFit, HeldOut]:
    """Fit on the rows of the episodes not in `test_episodes` (finite targets only), predict the
    held-out ones."""
    target, train, test = episode_split(data, test_episodes)
    y = target if kind == "continuous" else np.where(np.isfinite(target), target, -1).astype(np.int64)
    fit = fit_probe(data.features[train], y[train], data.episode[train], kind, folds=folds, penalties=penalties)
    predicted, probability = predictions(fit, data.features[test])
    return fit, HeldOut(y[test], predicted, probability, np.asarray(data.episode)[test])


def episode_draws(test_episodes: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of held-out episode ids [resamples, n_test] (with replacement, seeded)."""
    test_episodes = np.asarray(test_episodes)
    return test_episodes[np.random.default_rng(seed).integers(0, len(test_episodes),
                                                              size=(resamples, len(test_episodes)))]


def resampled_scores(kind: Kind, held: HeldOut, draws: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on each draw of episodes [resamples, n_test]: an episode drawn k times adds its
    rows k times (`weighted_scores`). {metric: [resamples]}. Draws of a single episode are all NaN:
    every draw is that episode, and a zero-width interval would make any difference "significant"
    (`egolens.stats`' NaN policy)."""
    if len(np.unique(draws)) < 2:
        return {metric: np.full(len(draws), np.nan) for metric in METRICS[kind]}
    ids = np.union1d(draws, held.episode)
    counts = np.stack([np.bincount(np.searchsorted(ids, draw), minlength=len(ids)) for draw in draws])
    weights = counts[:, np.searchsorted(ids, held.episode)]                  # [resamples, R_test]
    return weighted_scores(kind, held.y, held.predicted, held.probability, weights)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite draws; NaN when there are none."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class InputScores:
    """One input's probe, control task and constant predictor (tasks `TASKS` and `BASELINE`):
    point[task][metric] on all held-out rows,
    samples[task][metric] [resamples] on the episode draws, penalty[task], n_train / n_test rows
    with a target, and note: why it could not be fitted (all scores NaN), else empty."""

    point: dict[str, dict[str, float]]
    samples: dict[str, dict[str, np.ndarray]]
    penalty: dict[str, float]
    n_train: int
    n_test: int
    note: str


TASKS = ("probe", "control")
BASELINE = "baseline"
"""The constant predictor's task in `InputScores` and `score_table` (`baseline_held_out`)."""


def baseline_held_out(data: ProbeData, kind: Kind, test_episodes: np.ndarray) -> HeldOut:
    """The constant predictor fitted on the training episodes' rows (finite targets), applied to
    the held-out ones: the majority class (the smallest on a tie) for a binary or categorical
    target, with probability of class 1 its training share (a constant: AUC 0.5) for a binary
    one; the training mean for a continuous target. What a probe must beat to read anything."""
    target, train, test = episode_split(data, test_episodes)
    episode = np.asarray(data.episode)[test]
    if kind == "continuous":
        return HeldOut(target[test], np.full(int(test.sum()), target[train].mean()), None, episode)
    classes, counts = np.unique(target[train].astype(np.int64), return_counts=True)
    y = target[test].astype(np.int64)
    predicted = np.full(len(y), classes[int(np.argmax(counts))])
    probability = np.full(len(y), float(np.mean(target[train] == 1))) if kind == "binary" else None
    return HeldOut(y, predicted, probability, episode)


def input_scores(data: ProbeData, kind: Kind, test_episodes: np.ndarray, draws: np.ndarray, *, seed: int,
                 folds: int = 5, penalties: Sequence[float] | None = None) -> InputScores:
    """Fit and score the probe of `data`, its control task (labels by `control_labels` seeded
    by `seed`) and the constant predictor (`baseline_held_out`) on the held-out episodes and each
    draw of them (`episode_draws`)."""
    target = np.asarray(data.target, dtype=np.float64)
    test = np.isin(data.episode, test_episodes)
    n_train, n_test = int(np.sum(~test & np.isfinite(target))), int(np.sum(test & np.isfinite(target)))
    try:
        control = ProbeData(data.features, control_labels(target, data.identity, seed), data.episode, data.identity)
        fitted = {task: fit_held_out(d, kind, test_episodes, folds=folds, penalties=penalties)
                  for task, d in zip(TASKS, (data, control))}
    except ProbeFitError as error:
        nan = np.full(len(draws), np.nan)
        return InputScores({task: dict.fromkeys(METRICS[kind], math.nan) for task in (*TASKS, BASELINE)},
                           {task: dict.fromkeys(METRICS[kind], nan) for task in (*TASKS, BASELINE)},
                           dict.fromkeys((*TASKS, BASELINE), math.nan), n_train, n_test, str(error))
    held = {task: h for task, (_, h) in fitted.items()} | {BASELINE: baseline_held_out(data, kind, test_episodes)}
    return InputScores({task: scores(kind, h.y, h.predicted, h.probability) for task, h in held.items()},
                       {task: resampled_scores(kind, h, draws) for task, h in held.items()},
                       {task: fit.penalty for task, (fit, _) in fitted.items()} | {BASELINE: math.nan},
                       n_train, n_test, "")


def probe_table(inputs: Mapping[str, ProbeData], kind: Kind, test_episodes: np.ndarray, *, seed: int,
                resamples: int, level: float = 0.95, folds: int = 5,
                penalties: Sequence[float] | None = None) -> pd.DataFrame:
    """Probe every input and its control task on the same held-out episodes (`input_scores` on
    the draws `episode_draws(test_episodes, resamples, seed)`), tabulated by `score_table`. The
    first input is the site under study, the others its controls (e.g. {"site": the trained
    network's activations, "obs": the raw observation, "untrained": the untrained network's
    activations at the same site, from its own rollouts of the same env seeds})."""
    _check_kind(kind)
    draws = episode_draws(test_episodes, resamples, seed)
    return score_table({name: input_scores(data, kind, test_episodes, draws, seed=seed, folds=folds,
                                           penalties=penalties)
                        for name, data in inputs.items()}, kind, level)


def score_table(results: Mapping[str, InputScores], kind: Kind, level: float = 0.95) -> pd.DataFrame:
    """Tabulate inputs scored on the same episode draws (`input_scores`; the first is the site,
    the others its controls: an input shared by several sites, such as the raw observation, is
    scored once and passed to each).

    One row per (input, task, metric), task:
    - "probe": the real target; "control": the control task; "selectivity": probe − control;
    - "site_minus_input" (inputs after the first): the first input's probe score − this one's;
    - "baseline": the constant predictor (`baseline_held_out`: the majority class, or the training
      mean); "probe_minus_baseline": probe − baseline.
    value on all held-out rows; ci_low / ci_high: percentile interval at `level` over the draws,
    paired across inputs and tasks; n_train / n_test: rows with a target; penalty: the chosen C
    or alpha (NaN for differences); note: why a probe could not be fitted (`ProbeFitError`; its
    scores are NaN), else empty.
    """
    site = next(iter(results.values()))
    rows = []
    for position, (name, result) in enumerate(results.items()):
        for metric in METRICS[kind]:
            point, samples = result.point, result.samples
            values = {task: (point[task][metric], samples[task][metric], result.penalty[task]) for task in TASKS}
            values["selectivity"] = (point["probe"][metric] - point["control"][metric],
                                     samples["probe"][metric] - samples["control"][metric], math.nan)
            if position:
                values["site_minus_input"] = (site.point["probe"][metric] - point["probe"][metric],
                                              site.samples["probe"][metric] - samples["probe"][metric], math.nan)
            values[BASELINE] = (point[BASELINE][metric], samples[BASELINE][metric], math.nan)
            values["probe_minus_baseline"] = (point["probe"][metric] - point[BASELINE][metric],
                                              samples["probe"][metric] - samples[BASELINE][metric], math.nan)
            for task, (value, sample, penalty) in values.items():
                low, high = _interval(sample, level)
                rows.append({"input": name, "task": task, "metric": metric, "value": value, "ci_low": low,
                             "ci_high": high, "n_train": result.n_train, "n_test": result.n_test,
                             "penalty": penalty, "note": result.note})
    return pd.DataFrame(rows)
