"""Episodes: the one episode type and its outcomes, the schedule that hands episodes to envs,
the greedy action, the episode table and the paired comparison of two policies.

An episode ends in one of three outcomes (`OUTCOMES`): arrived (terminated without a crash),
collision, or timeout (truncated). Episodes are played by `egolens.play.play` (every closed
loop of the study) and collected for training by `egolens.collector`, both with
`EpisodeSchedule`. Episode tables have one row per episode keyed by env seed, and two policies
are compared by pairing their episodes on env seed (`paired_comparison`).

Nothing here touches an env, so summaries (`evaluation`, `aggregate`) do not depend on the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.names import ARRIVED, COLLISION, OUTCOMES, TIMEOUT  # noqa: F401  (re-exported: how an episode ends)
from egolens.stats import bootstrap_ci, paired_bootstrap_ci


def outcome(terminated: bool, truncated: bool, crashed: bool) -> str:
    """COLLISION, ARRIVED or TIMEOUT for an episode's last step.

    highway-env has no `arrived` key in info: arrival is a termination without a crash.
    """
    if crashed:
        return COLLISION
    if terminated:
        return ARRIVED
    if truncated:
        return TIMEOUT
    raise ValueError("the episode has not ended")


@dataclass
class Episode:
    """One played episode: its env seed, return (undiscounted), length (steps) and outcome, and
    what `play` was asked to record (T = length; obs_t is the state in which action_t was chosen):

    obs [T, E, F]; action, reward [T]; vehicle_id [T, E]; positions [T, E, 2] (m) (record "steps");
    frames: T + 1 rendered frames [H, W, 3] (the last one after the final step) and pixels, per
    frame a function world (x, y) in m -> frame pixel (column, row) (record "frames").
    """

    env_seed: int
    ret: float
    length: int
    outcome: str
    obs: np.ndarray | None = None
    action: np.ndarray | None = None
    reward: np.ndarray | None = None
    vehicle_id: np.ndarray | None = None
    positions: np.ndarray | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    pixels: list[Any] = field(default_factory=list)

    @property
    def arrived(self) -> bool:
        return self.outcome == ARRIVED

    @property
    def collided(self) -> bool:
        return self.outcome == COLLISION

    @property
    def timed_out(self) -> bool:
        return self.outcome == TIMEOUT


class Driver:
    """A policy that drives a whole episode on the env itself (e.g. a planner that copies the
    simulator): `drive(env, env_seed)` resets `env` with `env_seed` and plays until the end."""

    def drive(self, env: Any, env_seed: int) -> Episode:
        raise NotImplementedError


# ------------------------------------------------------------------------------ the schedule


@dataclass
class EpisodeSchedule:
    """Which episode (index into a list of `total` episodes) each of `num_envs` envs plays.

    `offers()` gives each playing env the lowest unstarted indices, in env order; `advance`
    records which envs ended (they take their offer, or stop when none is left). With one env
    episodes run in order 0, 1, 2, ... The assignment depends only on which envs end on which
    step, so a run is deterministic for a given number of envs whatever the timing.
    """

    total: int
    num_envs: int
    playing: list[int | None] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)   # unstarted indices below `frontier`, sorted
    frontier: int = 0                                  # every index >= frontier is unstarted

    def start(self) -> dict[int, int]:
        """Assign the first episodes; env -> episode index."""
        first = min(self.num_envs, self.total)
        self.playing = [i if i < first else None for i in range(self.num_envs)]
        self.frontier = first
        return {i: e for i, e in enumerate(self.playing) if e is not None}

    @property
    def active(self) -> list[int]:
        return [i for i, e in enumerate(self.playing) if e is not None]

    @property
    def done(self) -> bool:
        return not self.active

    def offers(self) -> dict[int, int]:
        """env -> the episode it starts if its current episode ends on this step."""
        unstarted = iter(self.skipped + list(range(self.frontier, self.total)))
        offers = {}
        for i in self.active:
            nxt = next(unstarted, None)
            if nxt is None:
                break
            offers[i] = nxt
        return offers

    def advance(self, ended: Sequence[int], offers: dict[int, int]) -> None:
        """Envs in `ended` finished their episode and took their offer (if any)."""
        for i in ended:
            taken = offers.get(i)
            self.playing[i] = taken
            if taken is None:
                continue
            if taken < self.frontier:
                self.skipped.remove(taken)
            else:
                self.skipped.extend(range(self.frontier, taken))
                self.frontier = taken + 1
        self.skipped.sort()

    def state_dict(self) -> dict[str, Any]:
        return {"playing": list(self.playing), "skipped": list(self.skipped), "frontier": self.frontier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.playing = list(state["playing"])
        self.skipped = sorted(state["skipped"])
        self.frontier = state["frontier"]

    def copy(self) -> EpisodeSchedule:
        twin = EpisodeSchedule(self.total, self.num_envs)
        twin.load_state_dict(self.state_dict())
        return twin


# ------------------------------------------------------------------------------ the greedy action


def greedy(net: nn.Module, obs: np.ndarray, batch: int | None = None) -> np.ndarray:
    """obs: [N, E, F] -> argmax_a Q(obs, a): [N] int.

    Each row's action is computed on its own, as row 0 of a batch of `batch` (default N) copies
    of that observation: which observations share a forward pass can change the last bits of a
    row on some CPUs (MKL), so by construction no env's action depends on another's. `play`
    uses batch 1 (one observation at a time); the trainer a batch as large as its round.
    """
    size = len(obs) if batch is None else batch
    with torch.no_grad():
        rows = [net(torch.as_tensor(o)[None].expand(size, *o.shape))[0] for o in obs]
        return torch.stack(rows).argmax(dim=1).numpy()


# ------------------------------------------------------------------------------ tables


def episode_table(episodes: Sequence[Episode]) -> pd.DataFrame:
    """One row per episode: env_seed, outcome, success, collision, timeout (0/1), return, length."""
    return pd.DataFrame({
        "env_seed": [e.env_seed for e in episodes], "outcome": [e.outcome for e in episodes],
        "success": [float(e.arrived) for e in episodes], "collision": [float(e.collided) for e in episodes],
        "timeout": [float(e.timed_out) for e in episodes],
        "return": [e.ret for e in episodes], "length": [float(e.length) for e in episodes]})


OUTCOME_METRICS = ("success", "collision", "timeout", "return", "length")
"""The per-episode numbers of `episode_table` that policies are compared on."""


def paired_table(treated: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """Episode tables (`episode_table`, or any with env_seed, outcome, return) joined on env seed:
    the treated columns and the control's with suffix `_control`, in the treated table's order.
    Every treated env seed must be in the control, once."""
    def numbers(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        for metric, value in zip(("success", "collision", "timeout"), OUTCOMES):
            table[metric] = table["outcome"].eq(value).astype(float)
        return table
    paired = numbers(treated).merge(numbers(control), on="env_seed", how="left", suffixes=("", "_control"),
                                    validate="one_to_one", indicator=True)
    if not paired["_merge"].eq("both").all():
        raise ValueError("episodes cannot be paired: the control lacks some treated episode's env seed")
    return paired.drop(columns="_merge")


def paired_comparison(treated: pd.DataFrame, control: pd.DataFrame, resamples: int, seed: int,
                      metrics: Sequence[str] = OUTCOME_METRICS) -> pd.DataFrame:
    """Treated minus control on the same env seeds (`paired_table` of two episode tables).

    One row per metric: the treated mean and its 95% bootstrap CI (value, value_ci_low,
    value_ci_high), the control mean (control), the mean per-episode difference and its 95%
    paired-bootstrap CI (diff, diff_ci_low, diff_ci_high), and the number of episodes.
    """
    paired = paired_table(treated, control)
    rows = []
    for metric in metrics:
        x = paired[metric].to_numpy(dtype=np.float64)
        y = paired[f"{metric}_control"].to_numpy(dtype=np.float64)
        value, low, high = bootstrap_ci(x, resamples, seed)
        diff, dlow, dhigh = paired_bootstrap_ci(x, y, resamples, seed)
        rows.append({"metric": metric, "value": value, "value_ci_low": low, "value_ci_high": high,
                     "control": float(y.mean()), "diff": diff, "diff_ci_low": dlow, "diff_ci_high": dhigh,
                     "episodes": len(x)})
    return pd.DataFrame(rows)
