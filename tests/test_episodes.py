"""Playing episodes: one episode per seed whatever the number of envs, the greedy action on one
observation at a time, whole-episode drivers, and paired comparisons joined on env seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.episodes import (
    ARRIVED,
    COLLISION,
    TIMEOUT,
    Driver,
    Episode,
    episode_table,
    greedy,
    outcome,
    paired_comparison,
)
from egolens.play import play
from tests.conftest import ToyEnv, tiny_net, toy_runner

SEEDS = [7, 2, 9, 4, 0, 5, 11, 3]


def toy_policy(obs: np.ndarray) -> np.ndarray:
    """obs [1, E, F] -> [1]: an action read off the observation."""
    return np.array([int(obs[0, 1, 1] > 0) + int(obs[0, 2, 2] > 0)])


def played_alone(seed: int) -> Episode:
    """One episode of `toy_policy` on a fresh toy env, the loop written out."""
    env = ToyEnv()
    obs, _ = env.reset(seed=seed)
    ret, length = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(int(toy_policy(obs[None])[0]))
        ret, length = ret + reward, length + 1
        if terminated or truncated:
            return Episode(seed, ret, length, outcome(terminated, truncated, info["crashed"]))


@pytest.mark.parametrize("num_envs", [1, 2, 3])
def test_play_gives_each_seed_its_own_episode_in_seed_order_whatever_the_number_of_envs(num_envs):
    with toy_runner(num_envs) as runner:
        episodes = play(toy_policy, runner, SEEDS)
    assert episodes == [played_alone(s) for s in SEEDS]
    assert {e.outcome for e in episodes} == {ARRIVED, COLLISION, TIMEOUT}     # every ending is exercised


def test_a_network_plays_its_greedy_action_computed_on_one_observation_at_a_time(monkeypatch):
    net = tiny_net()
    seen = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: seen.append(tuple(x.shape)) or forward(x))
    with toy_runner(2) as runner:
        episodes = play(net, runner, SEEDS[:4])
    assert seen and all(shape[0] == 1 for shape in seen)
    with torch.no_grad():
        def alone(obs: np.ndarray) -> np.ndarray:
            return forward(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()
        with toy_runner(1) as runner:
            assert play(alone, runner, SEEDS[:4]) == episodes


def test_greedy_rows_are_row_zero_of_a_batch_of_copies():
    net = tiny_net()
    obs = np.random.default_rng(0).uniform(-1, 1, (3, 4, 7)).astype(np.float32)
    with torch.no_grad():
        expected = [int(net(torch.as_tensor(o)[None].repeat(5, 1, 1))[0].argmax()) for o in obs]
    assert greedy(net, obs, batch=5).tolist() == expected


@dataclass(frozen=True)
class IdleDriver(Driver):
    """Drives a whole episode with one action on the env it is given."""

    action: int

    def drive(self, env, env_seed: int) -> Episode:
        env.reset(seed=env_seed)
        ret, length = 0.0, 0
        while True:
            _, reward, terminated, truncated, info = env.step(self.action)
            ret, length = ret + reward, length + 1
            if terminated or truncated:
                return Episode(env_seed, ret, length, outcome(terminated, truncated, info["crashed"]))


@pytest.mark.parametrize("num_envs", [1, 2])
def test_a_driver_plays_whole_episodes_on_free_envs_in_seed_order(num_envs):
    ticks = []
    with toy_runner(num_envs) as runner:
        episodes = play(IdleDriver(1), runner, SEEDS, progress=lambda: ticks.append(1))
    assert episodes == [IdleDriver(1).drive(ToyEnv(), s) for s in SEEDS] and len(ticks) == len(SEEDS)


def episodes_of(outcomes: list[str], ret: float, length: int, seeds=range(4)) -> list[Episode]:
    return [Episode(s, ret, length, o) for s, o in zip(seeds, outcomes)]


def test_paired_comparison_of_closed_loop_episodes():
    control = episode_table(episodes_of(["arrived", "collision", "arrived", "timeout"], 5.0, 10))
    treated = episode_table(episodes_of(["collision", "collision", "arrived", "timeout"], 1.0, 8))
    table = paired_comparison(treated, control, 500, 0).set_index("metric")
    assert table.loc["success", "value"] == 0.25 and table.loc["success", "control"] == 0.5
    assert table.loc["success", "diff"] == -0.25 and table.loc["collision", "diff"] == 0.25
    assert table.loc["return", "diff"] == -4.0 and table.loc["return", "diff_ci_low"] == -4.0
    assert (table["episodes"] == 4).all()
    # joined on env seed, not on row order
    pd.testing.assert_frame_equal(paired_comparison(treated[::-1], control, 500, 0).set_index("metric")
                                  .drop(columns=["value_ci_low", "value_ci_high", "diff_ci_low", "diff_ci_high"]),
                                  table.drop(columns=["value_ci_low", "value_ci_high", "diff_ci_low", "diff_ci_high"]))
    with pytest.raises(ValueError, match="paired"):
        paired_comparison(treated, control.iloc[1:], 100, 0)
