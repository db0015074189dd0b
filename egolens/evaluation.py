"""Greedy evaluation: play one episode per env seed and summarise outcomes with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from egolens.analysis.stats import bootstrap_ci
from egolens.env import outcome


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


def play_greedy(net: nn.Module, envs: Any, env_seeds: Sequence[int]) -> list[EpisodeResult]:
    """Play one greedy episode per env seed on a vector env (autoreset disabled).

    Episodes are handed to whichever env is free; each depends only on its seed, so the
    results (returned in the order of `env_seeds`) do not depend on the number of envs.
    """
    n = envs.num_envs
    results: list[EpisodeResult | None] = [None] * len(env_seeds)
    queue = list(range(len(env_seeds)))
    playing: list[int | None] = [None] * n
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=int)
    obs = np.zeros((n, *envs.single_observation_space.shape), dtype=np.float32)

    def start(which: list[int]) -> None:
        mask = np.zeros(n, dtype=bool)
        seeds: list[int | None] = [None] * n
        for i in which:
            playing[i] = queue.pop(0)
            seeds[i] = int(env_seeds[playing[i]])
            mask[i] = True
            returns[i], lengths[i] = 0.0, 0
        fresh, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
        obs[mask] = np.asarray(fresh, dtype=np.float32)[mask]

    start([i for i in range(min(n, len(queue)))])
    while any(p is not None for p in playing):
        actions = greedy_actions(net, obs)
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        obs[:] = np.asarray(next_obs, dtype=np.float32)
        free = []
        for i in range(n):
            if playing[i] is None:
                continue
            returns[i] += float(rewards[i])
            lengths[i] += 1
            if terminated[i] or truncated[i]:
                results[playing[i]] = EpisodeResult(int(env_seeds[playing[i]]), float(returns[i]), int(lengths[i]),
                                                    outcome(bool(terminated[i]), bool(truncated[i]),
                                                            bool(infos["crashed"][i])))
                playing[i] = None
                free.append(i)
        if free and queue:
            start(free[: len(queue)])
    return [r for r in results if r is not None]


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
