"""Greedy evaluation: play one episode per env seed and summarise outcomes with bootstrap CIs."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.env import outcome
from egolens.runner import EnvRunner
from egolens.stats import bootstrap_ci, paired_bootstrap_ci


@dataclass
class EpisodeResult:
    env_seed: int
    ret: float
    length: int
    outcome: str


def greedy_actions(net: nn.Module, obs: np.ndarray) -> np.ndarray:
    """obs: [N, E, F] -> argmax_a Q(obs, a): [N]."""
    with torch.no_grad():
        return net(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()


def play_policy(policy: Callable[[np.ndarray], Sequence[int]], runner: EnvRunner,
                env_seeds: Sequence[int]) -> list[EpisodeResult]:
    """Play one episode per env seed; results in the order of `env_seeds`.

    policy: obs [1, E, F] -> one action (called on one observation at a time, so its output
    never depends on how observations happen to be batched). The envs run free: each gets its
    next action as soon as its step is done, and a finished env resets itself with the next
    unstarted seed. Each episode depends only on its seed and the policy, so the results do not
    depend on the number of envs or on timing.
    """
    unstarted = list(range(len(env_seeds)))          # a heap of episode indices
    heapq.heapify(unstarted)
    playing: dict[int, int] = {}
    offered: dict[int, int] = {}
    returns: dict[int, float] = {}
    lengths: dict[int, int] = {}
    results: list[EpisodeResult | None] = [None] * len(env_seeds)

    def dispatch(i: int, obs: np.ndarray) -> None:
        action = int(np.asarray(policy(obs[None]))[0])
        if unstarted:
            offered[i] = heapq.heappop(unstarted)
        runner.send(i, action, int(env_seeds[offered[i]]) if i in offered else None)

    first = {i: heapq.heappop(unstarted) for i in range(min(runner.num_envs, len(env_seeds)))}
    for i, obs in runner.reset({i: int(env_seeds[e]) for i, e in first.items()}).items():
        playing[i], returns[i], lengths[i] = first[i], 0.0, 0
        dispatch(i, obs)
    while playing:
        for i, step in runner.receive().items():
            returns[i] += step.reward
            lengths[i] += 1
            taken = offered.pop(i, None)
            if not step.ended:
                if taken is not None:
                    heapq.heappush(unstarted, taken)
                dispatch(i, step.obs)
                continue
            episode = playing.pop(i)
            results[episode] = EpisodeResult(int(env_seeds[episode]), returns[i], lengths[i],
                                             outcome(step.terminated, step.truncated, step.crashed))
            if taken is not None:
                playing[i], returns[i], lengths[i] = taken, 0.0, 0
                dispatch(i, step.reset_obs)
    return [r for r in results if r is not None]


def play_greedy(net: nn.Module, runner: EnvRunner, env_seeds: Sequence[int]) -> list[EpisodeResult]:
    """`play_policy` with the network's greedy action."""
    return play_policy(lambda obs: greedy_actions(net, obs), runner, env_seeds)


def summarize_episodes(results: Sequence[EpisodeResult], resamples: int, seed: int) -> dict[str, dict[str, float]]:
    """Success (arrived without crash), collision and timeout rates, mean return and length,
    each as {"mean", "ci_low", "ci_high"} (95% percentile bootstrap over episodes)."""
    columns = {
        "success_rate": [r.outcome == "arrived" for r in results],
        "collision_rate": [r.outcome == "collision" for r in results],
        "timeout_rate": [r.outcome == "timeout" for r in results],
        "mean_return": [r.ret for r in results],
        "mean_length": [r.length for r in results],
    }
    summary = {}
    for name, values in columns.items():
        mean, low, high = bootstrap_ci(np.asarray(values, dtype=np.float64), resamples, seed)
        summary[name] = {"mean": round(mean, 6), "ci_low": round(low, 6), "ci_high": round(high, 6)}
    return summary


def episode_outcomes(results: Sequence[EpisodeResult]) -> pd.DataFrame:
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
    paired = agent.merge(reference, on="env_seed", suffixes=("", "_ref"), validate="one_to_one")
    if len(paired) != len(agent):
        raise ValueError("the reference does not cover every agent episode's env seed")
    out = {}
    columns = {"success": ("outcome", "arrived"), "collision": ("outcome", "collision"),
               "timeout": ("outcome", "timeout"), "return": ("return", None)}
    for name, (column, value) in columns.items():
        mine, ref = paired[column], paired[f"{column}_ref"]
        if value is not None:
            mine, ref = (mine == value).astype(float), (ref == value).astype(float)
        diff, low, high = paired_bootstrap_ci(mine.to_numpy(), ref.to_numpy(), resamples, seed)
        out[name] = {"diff": round(diff, 6), "ci_low": round(low, 6), "ci_high": round(high, 6)}
    return out


DRIVING = ("success_rate", "collision_rate", "timeout_rate", "mean_return")
"""The four numbers of how an agent drives: the per-seed DVC metric (driving.json)."""


def driving_metrics(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """The trained network's `DRIVING` means from a seed's evaluate.json summary."""
    return {name: summary["trained"][name]["mean"] for name in DRIVING}


EPISODE_CLASSES = ("go", "timing", "unsolved")
"""What a held-out episode asks of a driver, from the reference policies on it: `go` (driving on at a
constant speed arrives: constant FASTER or IDLE does), `timing` (only the clairvoyant planner
arrives: it takes waiting for the right gap), `unsolved` (not even the clairvoyant planner arrives)."""


def episode_classes(reference: pd.DataFrame) -> pd.Series:
    """env_seed -> its class (`EPISODE_CLASSES`), from results/reference/episodes.csv (policy, env_seed,
    outcome) with the constant_faster, constant_idle and clairvoyant policies."""
    outcome = reference.pivot(index="env_seed", columns="policy", values="outcome")
    arrived = outcome.eq("arrived")
    go = arrived["constant_faster"] | arrived["constant_idle"]
    classes = np.where(go, "go", np.where(arrived["clairvoyant"], "timing", "unsolved"))
    return pd.Series(classes, index=outcome.index, name="episode_class")


def success_by_class(episodes: pd.DataFrame, classes: pd.Series) -> dict[str, float]:
    """An agent's success rate within each episode class: episodes (env_seed, outcome) on the
    classified env seeds. A class with no episode of the agent gives NaN."""
    joined = episodes.set_index("env_seed")["outcome"].to_frame().join(classes, how="inner")
    rates = joined["outcome"].eq("arrived").groupby(joined["episode_class"]).mean()
    return {name: float(rates.get(name, np.nan)) for name in EPISODE_CLASSES}
