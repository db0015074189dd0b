"""Neuron statistics: activation rates, activations over an episode, rank correlations of each neuron
with the scene facts (`neuron_facts`), and the neurons stage's summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from egolens.analysis.reading.neuron_facts import TTC_CAP, TTC_COLUMNS
from egolens.numbers import significant as significant_digits
from egolens.sites import json_key
from egolens.stats import spearman_columns


def activation_stats(acts: np.ndarray, layer: str) -> pd.DataFrame:
    """Per neuron of acts [N, units]: layer, neuron, mean, std, frac_active (> 0), dead (never
    active), max. Flatten per-vehicle layers first with `vehicle_rows`."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"expected non-empty [N, units] activations, got {acts.shape}")
    active = acts > 0
    return pd.DataFrame({
        "layer": layer, "neuron": np.arange(acts.shape[1]), "mean": acts.mean(axis=0), "std": acts.std(axis=0),
        "frac_active": active.mean(axis=0), "dead": ~active.any(axis=0), "max": acts.max(axis=0),
    })


def activations_over_time(acts: np.ndarray, episode: np.ndarray, step: np.ndarray, which_episode: int,
                          top_k: int) -> pd.DataFrame:
    """Tidy (step, neuron, activation) over one episode for its `top_k` most variable neurons.

    acts: [N, units] (step-level); episode, step: [N]. Neurons are ranked by their standard
    deviation within the episode (ties: lower index first); rows sorted by neuron then step.
    """
    acts, episode, step = np.asarray(acts), np.asarray(episode), np.asarray(step)
    rows = np.nonzero(episode == which_episode)[0]
    if rows.size == 0:
        raise ValueError(f"no recorded step of episode {which_episode}")
    rows = rows[np.argsort(step[rows], kind="stable")]
    chosen = np.argsort(-acts[rows].std(axis=0), kind="stable")[:top_k]
    neurons = np.sort(chosen)
    return pd.DataFrame({
        "step": np.tile(step[rows], neurons.size),
        "neuron": np.repeat(neurons, rows.size),
        "activation": acts[rows][:, neurons].T.reshape(-1),
    })


def _numeric_facts(facts: pd.DataFrame, ttc_cap: float) -> dict[str, np.ndarray]:
    """Numeric and boolean columns as float arrays. Times to collision (`TTC_COLUMNS`) are capped
    at ttc_cap (inf included: "no collision within the cap"); other infinities become NaN."""
    out = {}
    for name in facts.columns:
        column = facts[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            if name in TTC_COLUMNS:
                values = np.minimum(values, ttc_cap)
            out[name] = np.where(np.isinf(values), np.nan, values)
    return out


def neuron_fact_correlations(acts: np.ndarray, facts: pd.DataFrame, ttc_cap: float = TTC_CAP,
                             columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Spearman correlation of every neuron with every fact: tidy (neuron, fact, spearman, n).

    acts: [M, units], aligned row by row with `facts` (M rows): per-vehicle activations with
    `vehicle_facts_frame` (distance, ttc, closing_speed, bearing_deg, crossing, ahead), step-level
    ones with `step_facts_frame` (ego speed, action one-hot, Q-values, nearest distance, min ttc).
    Numeric and boolean columns are used (or `columns`); ttc and min_ttc are capped at
    `ttc_cap` (inf -> cap); rows where a fact is NaN are left out of that fact's correlation (n counts the
    rest). A constant neuron or fact gives NaN.
    """
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or len(acts) != len(facts):
        raise ValueError(f"acts {acts.shape} must be [M, units] with M = len(facts) = {len(facts)}")
    numeric = _numeric_facts(facts if columns is None else facts[list(columns)], ttc_cap)
    parts = []
    for name, values in numeric.items():
        valid = ~np.isnan(values)
        rho = spearman_columns(acts[valid], values[valid]) if valid.sum() > 1 else np.full(acts.shape[1], np.nan)
        parts.append(pd.DataFrame({"neuron": np.arange(acts.shape[1]), "fact": name, "spearman": rho,
                                   "n": int(valid.sum())}))
    return pd.concat(parts, ignore_index=True)




def summarize(tables: dict[str, pd.DataFrame]) -> dict:
    """The neurons stage's summary.json from its tables (each with a `model` column, models in order
    of first appearance in `stats`): per model, per layer (dots as underscores) the dead fraction,
    the mean sparsity (1 − mean fraction active) and the described neurons (`significant`
    dictionary entries); the model's described neurons; the logit-lens agreement and the tuned
    lens's held-out agreement per site without k; with a "lens_controls" table, per lens the majority
    baseline and the paired differences of `lens.lens_controls`.

    tables: "stats" (`activation_stats` rows), "dictionary" (`semantic_dictionary` rows with a
    layer and a boolean `significant` column), "lens_summary" (`lens.lens_summary`), "tuned_lens"
    (`lens.tuned_lens`). Numbers are rounded to 6 significant digits; a missing one is None (null).
    """
    out: dict = {}
    stats, dictionary = tables["stats"], tables["dictionary"]
    lens_summary, tuned = tables["lens_summary"], tables["tuned_lens"]
    for model in pd.unique(stats["model"]):
        layers = {}
        for layer, group in stats[stats["model"] == model].groupby("layer", sort=False):
            entries = dictionary[(dictionary["model"] == model) & (dictionary["layer"] == layer)]
            layers[json_key(layer)] = {"dead_fraction": float(group["dead"].mean()),
                                       "mean_sparsity": float(1.0 - group["frac_active"].mean()),
                                       "described_neurons": int(entries["significant"].sum())}
        logit = lens_summary[(lens_summary["model"] == model) & lens_summary["k"].isna()]
        held = tuned[(tuned["model"] == model) & tuned["k"].isna() & (tuned["split"] == "held_out")]
        out[model] = {
            "layers": layers,
            "described_neurons": int(dictionary[dictionary["model"] == model]["significant"].sum()),
            "logit_lens_agreement": dict(zip(logit["site"], logit["agreement"].astype(float))),
            "tuned_lens_held_out_agreement": dict(zip(held["site"], held["agreement"].astype(float))),
        }
        if "lens_controls" in tables:
            out[model]["lens_controls"] = _controls(tables["lens_controls"], model)
    return _rounded(out)


def _controls(table: pd.DataFrame, model: str) -> dict:
    """{lens: {majority_rate, <difference>: {diff, ci_low, ci_high}, n_steps, n_episodes}} of one model's
    `lens.lens_controls` rows (with `model` and `lens` columns)."""
    out: dict = {}
    for row in table[table["model"] == model].itertuples(index=False):
        node = out.setdefault(str(row.lens), {"n_steps": int(row.n_steps), "n_episodes": int(row.n_episodes)})
        node[row.quantity] = float(row.value) if row.quantity == "majority_rate" else \
            {"diff": float(row.value), "ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}
    return out


def _rounded(value: object) -> object:
    """Plain numbers rounded to 6 significant digits; a missing one (NaN) None (`egolens.numbers`)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, bool | int | np.integer):
        return int(value)
    return significant_digits(float(value))
