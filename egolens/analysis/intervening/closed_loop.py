"""Closed loop with held-out selection: the env seeds split in two (a head chosen on the rank half,
its effect measured on the measure half), each condition played on both halves with its action
counts, and the paired comparison of a condition with the unablated agent per half."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.episodes import Episode, episode_table, greedy, paired_comparison
from egolens.names import MEASURE_HALF, RANK_HALF
from egolens.play import play
from egolens.progress import Progress, no_progress
from egolens.runner import EnvRunner
from egolens.vocabulary import ACTIONS

if TYPE_CHECKING:
    from egolens.analysis.intervening.intervention_study import Condition


RANK, MEASURE, ALL = RANK_HALF, MEASURE_HALF, "all"
"""The closed-loop episodes a number comes from: the rank half (heads are chosen there), the
measure half (a chosen head's effect is measured there), or all of them."""


ACTION_METRICS = tuple(f"action_{name.lower()}" for name in ACTIONS)
"""closed_loop.csv metrics: the share of the condition's steps on which it chose each action."""


def split_halves(env_seeds: Sequence[int]) -> dict[str, list[int]]:
    """The closed-loop env seeds in two by env seed: rank = the lower half (sorted), measure = the
    rest (the larger half when the count is odd). Needs at least two env seeds."""
    seeds = sorted(int(s) for s in env_seeds)
    if len(seeds) < 2:
        raise ValueError(f"held-out selection needs at least 2 closed-loop episodes, got {len(seeds)}")
    cut = len(seeds) // 2
    return {RANK: seeds[:cut], MEASURE: seeds[cut:]}


class CountingPolicy:
    """The greedy policy of `net` (`egolens.episodes.greedy`, one observation at a time, as `play`
    drives a network) that counts the actions it chooses: counts [A]."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.counts = np.zeros(len(ACTIONS), dtype=np.int64)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        actions = greedy(self.net, obs, batch=1)
        np.add.at(self.counts, actions, 1)
        return actions


@dataclass
class Played:
    """One condition's closed-loop episodes and action counts [A], per half (RANK, MEASURE, ALL)."""

    episodes: dict[str, list[Episode]]
    counts: dict[str, np.ndarray]


def play_halves(policy: nn.Module, runner: EnvRunner, halves: dict[str, list[int]]) -> Played:
    """Play `policy` greedily on each half's env seeds (an episode depends only on its env seed, so
    this equals one run over all of them); ALL = the rank half's episodes then the measure half's."""
    episodes, counts = {}, {}
    for half, seeds in halves.items():
        counting = CountingPolicy(policy)
        with torch.no_grad():
            episodes[half] = play(counting, runner, seeds)
        counts[half] = counting.counts
    episodes[ALL] = [e for half in halves for e in episodes[half]]
    counts[ALL] = sum(counts[half] for half in halves)
    return Played(episodes, counts)


def action_rows(counts: np.ndarray, control: np.ndarray, episodes: int) -> list[dict]:
    """closed_loop.csv rows of the action histogram: per action its share of the condition's steps
    (value), the control's share (control) and the difference (diff); no intervals."""
    share, base = counts / max(counts.sum(), 1), control / max(control.sum(), 1)
    return [{"metric": metric, "value": float(share[i]), "control": float(base[i]), "diff": float(share[i] - base[i]),
             "episodes": episodes} for i, metric in enumerate(ACTION_METRICS)]


def comparison(played: Played, control: Played, half: str, resamples: int, seed: int) -> pd.DataFrame:
    """One half's paired comparison with the control (`paired_comparison`) and the action rows."""
    table = paired_comparison(episode_table(played.episodes[half]), episode_table(control.episodes[half]),
                              resamples, seed)
    actions = pd.DataFrame(action_rows(played.counts[half], control.counts[half], len(played.episodes[half])))
    table = pd.concat([table, actions], ignore_index=True)
    table.insert(0, "half", half)
    return table


@dataclass
class ClosedLoop:
    """Closed-loop runs of some conditions: paired comparisons (closed_loop.csv rows, per half),
    episodes (closed_loop_episodes.csv rows, with their half), and each condition's `Played`."""

    table: pd.DataFrame
    episodes: pd.DataFrame
    results: dict[str, Played]


def closed_loop(net: nn.Module, conditions: Sequence[Condition], runner: EnvRunner, env_seeds: Sequence[int],
                baseline: Played | None, resamples: int, seed: int,
                progress: Progress = no_progress) -> ClosedLoop:
    """Play every condition greedily on the same env seeds, split into halves (`split_halves`);
    compare each with `baseline` (the unablated agent's `Played`; None: the "none" condition among
    `conditions`, played first) on the rank half, the measure half and all episodes."""
    halves = split_halves(env_seeds)
    tables, episodes, results = [], [], {}
    for condition in progress(conditions, "closed loop"):
        played = play_halves(condition.policy(net), runner, halves)
        results[condition.name] = played
        control = baseline if baseline is not None else results["none"]
        table = pd.concat([comparison(played, control, half, resamples, seed) for half in (ALL, RANK, MEASURE)],
                          ignore_index=True)
        for name, value in reversed(condition.labels().items()):
            table.insert(0, name, value)
        tables.append(table)
        for half in (RANK, MEASURE):
            ep = episode_table(played.episodes[half])
            ep.insert(0, "half", half)
            ep.insert(0, "condition", condition.name)
            episodes.append(ep)
    return ClosedLoop(pd.concat(tables, ignore_index=True), pd.concat(episodes, ignore_index=True), results)


def diffs(closed: pd.DataFrame, condition: str, half: str = ALL) -> dict[str, float]:
    """Closed-loop success and collision differences of one condition on one half, with their CIs."""
    rows = closed[(closed.condition == condition) & (closed.half == half)].set_index("metric")
    out = {}
    for metric in ("success", "collision"):
        row = rows.loc[metric]
        out |= {f"{metric}_diff": row["diff"], f"{metric}_diff_ci_low": row["diff_ci_low"],
                f"{metric}_diff_ci_high": row["diff_ci_high"]}
    return out


def action_shares(closed: pd.DataFrame, condition: str, half: str = ALL) -> dict[str, float]:
    """The share of each action in one condition's closed-loop steps on one half: action_<name>."""
    rows = closed[(closed.condition == condition) & (closed.half == half)].set_index("metric")
    return {metric: rows.loc[metric, "value"] for metric in ACTION_METRICS}


def most_affecting_head(closed: pd.DataFrame, heads: int, mode: str, half: str = RANK) -> tuple[int, dict[str, float]]:
    """The head whose ablation changes closed-loop success or collision rate most on `half` (max
    of |Δ|; ties: the lower head), and its `diffs` there. closed: closed_loop.csv with rows
    head<h>_<mode>. The choice is made on the rank half so that its effect can be measured on
    the other (`summarize`)."""
    scored = []
    for h in range(heads):
        head_diffs = diffs(closed, f"head{h}_{mode}", half)
        scored.append((max(abs(head_diffs["success_diff"]), abs(head_diffs["collision_diff"])), -h, head_diffs))
    score, neg_h, best = max(scored, key=lambda t: (t[0], t[1]))
    return -neg_h, best
