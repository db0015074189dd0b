"""Demonstrations: planner episodes recorded step by step, their table, and its checks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from egolens.artifacts import npz_bytes
from egolens.config import EnvConfig
from egolens.demonstrations import check_arrays, demonstration_arrays, load_demonstrations
from egolens.env import make_env
from egolens.planner_steps import demonstrate, demonstration_summary, episode_outcome, record_episode
from egolens.policies import replay_plan
from tests.conftest import ToyEnv


def toy_episode(seed: int, action: int = 1):
    """A recorded ToyEnv episode (it lasts 2 + seed % 4 steps whatever the actions)."""
    return record_episode(ToyEnv(), seed, [action] * (2 + seed % 4))


def test_a_recorded_episode_chains_its_observations_and_ends_on_its_last_step():
    env = ToyEnv()
    steps = record_episode(env, 6, [2, 0, 1, 2])            # seed 6: 4 steps, terminated, crashed
    first = env.reset(seed=6)[0]
    np.testing.assert_array_equal(steps.obs[0], first)
    np.testing.assert_array_equal(steps.obs[1:], steps.next_obs[:-1])
    assert steps.action.tolist() == [2, 0, 1, 2] and steps.obs.dtype == np.float32
    assert steps.terminated.tolist() == [False, False, False, True] and not steps.truncated.any()
    assert episode_outcome(steps) == "collision"
    # rewards are the env's own: 0.5·a − 0.1·t + (s % 5)·0.01
    np.testing.assert_allclose(steps.reward, [1.0 - 0.1 + 0.01, -0.2 + 0.01, 0.5 - 0.3 + 0.01, 1.0 - 0.4 + 0.01])


def test_recording_refuses_actions_that_do_not_match_the_episode_length():
    with pytest.raises(ValueError, match="ended at step 2 of 3"):
        record_episode(ToyEnv(), 0, [1, 1, 1])               # seed 0 lasts 2 steps
    with pytest.raises(ValueError, match="had not ended after 1"):
        record_episode(ToyEnv(), 1, [1])


def test_the_table_numbers_episodes_in_order_and_survives_its_own_check(tmp_path):
    episodes = [toy_episode(s, a) for s, a in ((3, 0), (4, 2), (1, 1))]
    arrays = demonstration_arrays(episodes, [3, 4, 1])
    assert arrays["episode"].tolist() == [0] * 5 + [1] * 2 + [2] * 3
    assert arrays["env_seed"].tolist() == [3, 4, 1]
    path = tmp_path / "demos.npz"
    path.write_bytes(npz_bytes(arrays))
    demos = load_demonstrations(path)
    assert len(demos) == 10 and demos.episodes == 3
    assert np.flatnonzero(demos.ended).tolist() == [4, 6, 9]
    assert npz_bytes(arrays) == npz_bytes(demonstration_arrays([toy_episode(s, a) for s, a in ((3, 0), (4, 2), (1, 1))],
                                                               [3, 4, 1]))       # same episodes, same bytes


@pytest.mark.parametrize("damage, needle", [
    (lambda a: a.pop("reward"), "missing arrays ['reward']"),
    (lambda a: a.update(episode=a["episode"][::-1].copy()), "numbered 0, 1, ... in order"),
    (lambda a: a.update(terminated=np.zeros_like(a["terminated"]), truncated=np.zeros_like(a["truncated"])),
     "each must end"),
    (lambda a: a.update(env_seed=a["env_seed"][:1]), "one env seed each"),
    (lambda a: a.update(obs=a["obs"].astype(np.float64)), "obs must be float32"),
])
def test_a_damaged_table_is_refused_naming_what_is_wrong(damage, needle):
    arrays = demonstration_arrays([toy_episode(3), toy_episode(4)], [3, 4])
    damage(arrays)
    with pytest.raises(ValueError, match=re.escape(needle)):
        check_arrays(arrays)


@pytest.mark.slow
def test_a_planner_demonstration_replays_to_the_planners_episode():
    cfg = EnvConfig()
    env = make_env(cfg)
    planned, steps = demonstrate(env, 800_000_002)          # brakes twice, then goes (about 15 s)
    assert steps.action.tolist() == list(planned.actions) and 0 in planned.actions
    assert episode_outcome(steps) == planned.outcome and planned.replay_matched
    assert replay_plan(make_env(cfg), 800_000_002, planned.actions).outcome == planned.outcome
    np.testing.assert_array_equal(steps.obs[0], make_env(cfg).reset(seed=800_000_002)[0])
    summary = demonstration_summary([planned], [steps])
    assert summary["episodes"] == 1 and summary["steps"] == planned.length
    assert summary["success_rate"] + summary["collision_rate"] + summary["timeout_rate"] == 1.0
    assert sum(summary["action_fraction"].values()) == pytest.approx(1.0)
