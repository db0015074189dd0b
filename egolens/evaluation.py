"""Greedy evaluation: play one episode per env seed and summarise outcomes with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.stats import bootstrap_ci, paired_bootstrap_ci
from egolens.env import outcome
from egolens.runner import EnvRunner, EpisodeSchedule


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

    policy: obs [N, E, F] -> N actions (called on the playing envs only). Each episode
    depends only on its seed and the policy, so the results do not depend on the number of
    envs in `runner` nor on which env played which episode.
    """
    schedule = EpisodeSchedule(len(env_seeds), runner.num_envs)
    started = schedule.start()
    obs = runner.reset({i: int(env_seeds[e]) for i, e in started.items()})
    returns = dict.fromkeys(started, 0.0)
    lengths = dict.fromkeys(started, 0)
    results: list[EpisodeResult | None] = [None] * len(env_seeds)
    while not schedule.done:
        active = schedule.active
        actions = policy(np.stack([obs[i] for i in active]))
        offers = schedule.offers()
        runner.step_async(dict(zip(active, actions)), {i: int(env_seeds[e]) for i, e in offers.items()})
        steps = runner.step_wait()
        ended = [i for i in active if steps[i].ended]
        for i in active:
            step = steps[i]
            returns[i] += step.reward
            lengths[i] += 1
            if step.ended:
                episode = schedule.playing[i]
                results[episode] = EpisodeResult(int(env_seeds[episode]), returns[i], lengths[i],
                                                 outcome(step.terminated, step.truncated, step.crashed))
                returns[i], lengths[i] = 0.0, 0
            obs[i] = step.reset_obs if step.reset_obs is not None else step.obs
        schedule.advance(ended, offers)
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
