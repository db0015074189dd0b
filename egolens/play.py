"""`play`: the one way every closed loop of the study plays a policy — `evaluate`, `reference`
(the constant and rule-based drivers, and the clairvoyant planner as a `Driver`), `rollout`
(recording every step) and the interventions' closed-loop conditions."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from egolens.episodes import Driver, Episode, EpisodeSchedule, greedy, outcome
from egolens.runner import EnvRunner
from egolens.tracking import VehicleTracker

Policy = Callable[[np.ndarray], Sequence[int]] | nn.Module
"""What `play` drives with: a network (its greedy action) or a function obs [1, E, F] -> [1] actions."""


Record = Literal["outcome", "steps", "frames"]
"""What `play` keeps of an episode besides its outcome: nothing, every step's observation,
action, reward and which vehicle each row shows, or those and the rendered frames."""


def play(policy: Policy | Driver, runner: EnvRunner, env_seeds: Sequence[int], record: Record = "outcome",
         progress: Callable[[], None] | None = None) -> list[Episode]:
    """Play one episode per env seed on `runner`'s envs; the episodes in the order of `env_seeds`.

    A network or a function is called on one observation at a time, so its actions never depend
    on how observations happen to be batched, and each episode depends only on its seed and the
    policy: the episodes do not depend on the number of envs or on timing.
    - record "outcome": the envs run free — each gets its next action as soon as its step is
      done; a finished env resets itself with the lowest unstarted seed (`EpisodeSchedule`).
    - record "steps" / "frames" and a `Driver`: each episode is a whole-episode job on whichever
      env is free (`EnvRunner.map`), the policy running beside the env; "frames" needs envs made
      with render_mode "rgb_array". A `Driver` records what it chooses; `record` does not apply.
    `progress` is called once per finished episode.
    """
    if isinstance(policy, Driver):
        return runner.map(_drive, [(policy, int(s)) for s in env_seeds], progress=progress)
    if record != "outcome":
        return runner.map(partial(_play_recorded, policy, record == "frames"), [int(s) for s in env_seeds],
                          progress=progress)
    return _play_stepwise(_actions(policy), runner, env_seeds, progress)


def _actions(policy: Policy) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(policy, nn.Module):
        return lambda obs: greedy(policy, obs, batch=1)
    return lambda obs: np.asarray(policy(obs))


def _play_stepwise(act: Callable[[np.ndarray], np.ndarray], runner: EnvRunner, env_seeds: Sequence[int],
                   progress: Callable[[], None] | None) -> list[Episode]:
    schedule = EpisodeSchedule(len(env_seeds), runner.num_envs)
    returns = dict.fromkeys(range(runner.num_envs), 0.0)
    lengths = dict.fromkeys(range(runner.num_envs), 0)
    offered: dict[int, dict[int, int]] = {}
    episodes: list[Episode | None] = [None] * len(env_seeds)

    def dispatch(i: int, obs: np.ndarray) -> None:
        # An env's offer is the lowest unstarted episode among those not offered to a stepping env.
        taken = {e for o in offered.values() for e in o.values()}
        unstarted = [e for e in schedule.skipped + list(range(schedule.frontier, schedule.total)) if e not in taken]
        offered[i] = {i: unstarted[0]} if unstarted else {}
        runner.send(i, int(act(obs[None])[0]), int(env_seeds[offered[i][i]]) if offered[i] else None)

    for i, obs in runner.reset({i: int(env_seeds[e]) for i, e in schedule.start().items()}).items():
        dispatch(i, obs)
    while not schedule.done:
        for i, step in runner.receive().items():
            returns[i] += step.reward
            lengths[i] += 1
            offer = offered.pop(i)
            if not step.ended:
                dispatch(i, step.obs)
                continue
            episode = schedule.playing[i]
            assert episode is not None
            episodes[episode] = Episode(int(env_seeds[episode]), returns[i], lengths[i],
                                        outcome(step.terminated, step.truncated, step.crashed))
            if progress is not None:
                progress()
            schedule.advance([i], offer)
            returns[i], lengths[i] = 0.0, 0
            if schedule.playing[i] is not None:
                dispatch(i, step.reset_obs)
    return [e for e in episodes if e is not None]


def _drive(env: Any, job: tuple[Driver, int]) -> Episode:
    driver, env_seed = job
    return driver.drive(env, env_seed)


_TRACKERS: weakref.WeakKeyDictionary[Any, VehicleTracker] = weakref.WeakKeyDictionary()
"""The tracker installed on each live env this process recorded an episode on."""


def _play_recorded(policy: Policy, render: bool, env: Any, env_seed: int) -> Episode:
    """One episode of `policy` from `env_seed`, every step recorded (and rendered if `render`): a
    job for `EnvRunner.map` (runs in the env's worker process; a tracker is installed on the
    env at its first episode)."""
    torch.set_num_threads(1)
    act = _actions(policy)
    tracker = _TRACKERS.get(env)
    if tracker is None:
        tracker = _TRACKERS[env] = VehicleTracker(env)
    obs, _ = env.reset(seed=env_seed)
    observations, actions, rewards, ids, positions, frames, pixels = [], [], [], [], [], [], []

    def snapshot() -> None:
        if render:
            frames.append(np.asarray(env.render()))
            pixels.append(_pixel_map(env))

    snapshot()
    while True:
        observations.append(np.asarray(obs, dtype=np.float32))
        ids.append(tracker.ids.copy())
        positions.append(tracker.positions.copy())
        action = int(act(observations[-1][None])[0])
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        snapshot()
        if terminated or truncated:
            break
    return Episode(env_seed, float(sum(rewards)), len(actions),
                   outcome(bool(terminated), bool(truncated), bool(info["crashed"])),
                   np.stack(observations), np.array(actions), np.array(rewards), np.stack(ids), np.stack(positions),
                   frames, pixels)


def _pixel_map(env: Any) -> Any:
    surface = env.unwrapped.viewer.sim_surface
    origin, scaling = np.array(surface.origin, dtype=np.float64), float(surface.scaling)
    return lambda xy: ((np.asarray(xy) - origin) * scaling).astype(int)
