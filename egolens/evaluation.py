"""Greedy evaluation's summaries: outcome rates with bootstrap CIs, the episode table, paired
differences against a reference policy, and what each held-out episode asks of a driver. The
episodes themselves are played by `egolens.episodes.play`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from egolens.episodes import ARRIVED, Episode, paired_comparison
from egolens.stats import bootstrap_ci


def summarize_episodes(results: Sequence[Episode], resamples: int, seed: int) -> dict[str, dict[str, float]]:
    """Success (arrived without crash), collision and timeout rates, mean return and length,
    each as {"mean", "ci_low", "ci_high"} (95% percentile bootstrap over episodes)."""
    columns = {
        "success_rate": [r.arrived for r in results],
        "collision_rate": [r.collided for r in results],
        "timeout_rate": [r.timed_out for r in results],
        "mean_return": [r.ret for r in results],
        "mean_length": [r.length for r in results],
    }
    summary = {}
    for name, values in columns.items():
        mean, low, high = bootstrap_ci(np.asarray(values, dtype=np.float64), resamples, seed)
        summary[name] = {"mean": round(mean, 6), "ci_low": round(low, 6), "ci_high": round(high, 6)}
    return summary


def episode_outcomes(results: Sequence[Episode]) -> pd.DataFrame:
    """One row per episode: env_seed, return, length, outcome (the evaluation episode table)."""
    return pd.DataFrame([{"env_seed": r.env_seed, "return": round(r.ret, 6), "length": r.length,
                          "outcome": r.outcome} for r in results])


def paired_versus(agent: pd.DataFrame, reference: pd.DataFrame, resamples: int, seed: int
                  ) -> dict[str, dict[str, float]]:
    """Agent minus reference on the same env seeds: success, collision and timeout rates and the
    mean return, each {"diff", "ci_low", "ci_high"} (95% paired bootstrap over episodes).

    agent, reference: episode tables (env_seed, return, outcome); every agent seed must be in
    the reference.
    """
    table = paired_comparison(agent, reference, resamples, seed, metrics=("success", "collision", "timeout", "return"))
    return {row.metric: {"diff": round(row.diff, 6), "ci_low": round(row.diff_ci_low, 6),
                         "ci_high": round(row.diff_ci_high, 6)} for row in table.itertuples()}


DRIVING = ("success_rate", "collision_rate", "timeout_rate", "mean_return")
"""The four numbers of how an agent drives: the per-seed DVC metric (driving.json)."""


def driving_metrics(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """The trained network's `DRIVING` means from a seed's evaluate.json summary."""
    return {name: summary["trained"][name]["mean"] for name in DRIVING}


EPISODE_CLASSES = ("go", "timing", "unsolved")
"""What a held-out episode asks of a driver, from the reference policies on it: `go` (driving on at a
constant speed arrives: constant FASTER or IDLE does), `timing` (only the clairvoyant planner
arrives: it takes waiting for the right gap), `unsolved` (not even the clairvoyant planner arrives)."""

WAIT = "wait"
"""The episodes that are not `go` (timing or unsolved), where the clairvoyant planner was not played to
split them: an env other than the study's, whose only reference is the constant-speed policies."""


def episode_classes(reference: pd.DataFrame) -> pd.Series:
    """env_seed -> its class (`EPISODE_CLASSES`), from results/reference/episodes.csv (policy, env_seed,
    outcome) with the constant_faster, constant_idle and clairvoyant policies; without a clairvoyant
    policy in `reference`, every episode that is not `go` is `WAIT`."""
    outcome = reference.pivot(index="env_seed", columns="policy", values="outcome")
    arrived = outcome.eq(ARRIVED)
    go = arrived["constant_faster"] | arrived["constant_idle"]
    rest = (np.where(arrived["clairvoyant"], "timing", "unsolved") if "clairvoyant" in arrived
            else np.full(len(arrived), WAIT))
    return pd.Series(np.where(go, "go", rest), index=outcome.index, name="episode_class")


def success_by_class(episodes: pd.DataFrame, classes: pd.Series,
                     names: Sequence[str] = EPISODE_CLASSES) -> dict[str, float]:
    """An agent's success rate within each episode class of `names`: episodes (env_seed, outcome) on
    the classified env seeds. A class with no episode of the agent gives NaN."""
    joined = episodes.set_index("env_seed")["outcome"].to_frame().join(classes, how="inner")
    rates = joined["outcome"].eq(ARRIVED).groupby(joined["episode_class"]).mean()
    return {name: float(rates.get(name, np.nan)) for name in names}
