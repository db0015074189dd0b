"""intersection-v0 as configured: shapes, actions, determinism, outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from egolens.config import EnvConfig
from egolens.env import make_env, make_runner
from egolens.episodes import outcome


@pytest.fixture(scope="module")
def env():
    env = make_env(EnvConfig())
    yield env
    env.close()


def test_observation_and_action_follow_the_reference(env):
    obs, _ = env.reset(seed=0)
    assert obs.shape == (15, 7)
    assert obs[0, 0] == 1.0                                     # row 0: the ego, present
    assert np.all(np.abs(obs[:, 1:5]) <= 1.0)                    # normalised and clipped
    absent = obs[:, 0] == 0
    assert np.all(obs[absent] == 0)                              # absent vehicles are zero rows
    unwrapped = env.unwrapped
    assert env.action_space.n == 3
    assert list(unwrapped.action_type.target_speeds) == [0, 4.5, 9]
    assert unwrapped.config["observation"]["absolute"] is True
    assert unwrapped.config["observation"]["order"] == "shuffled"
    assert unwrapped.config["duration"] == 13 and unwrapped.config["destination"] == "o1"


def test_the_same_seed_and_actions_give_the_same_episode(env):
    def play(seed):
        frames = [env.reset(seed=seed)[0]]
        for action in (2, 2, 1, 0, 2):
            obs, reward, terminated, truncated, _ = env.step(action)
            frames.append(obs)
            if terminated or truncated:
                break
        return np.stack(frames)
    np.testing.assert_array_equal(play(7), play(7))
    assert not np.array_equal(play(7), play(8))


def test_runner_workers_play_exactly_the_single_env_episode():
    """A worker process steps the same env: the same seed and actions give the same episode,
    and an env that ends resets itself with the seed it was handed."""
    env = make_env(EnvConfig())
    expected = [env.reset(seed=3)[0]]
    for action in (2, 2, 0, 1):
        expected.append(env.step(action)[0])
    first = env.reset(seed=4)[0]
    env.close()
    with make_runner(EnvConfig(), 2) as runner:
        got = [runner.reset({0: 3, 1: 5})[0]]
        for action in (2, 2, 0, 1):
            runner.step_async({0: action, 1: 1}, {})
            got.append(runner.step_wait()[0].obs)
        np.testing.assert_array_equal(np.stack(got), np.stack(expected))
        np.testing.assert_array_equal(runner.replay({1: (3, [2, 2, 0, 1])})[1], expected[-1])
        np.testing.assert_array_equal(runner.reset({1: 4})[1], first)


def test_outcomes_follow_termination_and_crash():
    assert outcome(True, False, True) == "collision"
    assert outcome(True, False, False) == "arrived"
    assert outcome(False, True, False) == "timeout"
    with pytest.raises(ValueError):
        outcome(False, False, False)
