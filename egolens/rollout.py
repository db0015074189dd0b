"""Record greedy episodes: observations, actions, rewards, which simulator vehicle each
observation row shows, and (optionally) rendered frames; then tabulate them.

highway-env shuffles the observation rows every step (`order: shuffled`), so a row is not a
vehicle. `VehicleTracker` makes the observation say which vehicle went to which row: it builds
the rows unshuffled and applies the very shuffle highway-env would (same generator, same
draws) to an index array, so the map is exact and the observations are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.config import EnvConfig
from egolens.env import make_env, make_runner, outcome
from egolens.hooks import run_with_cache
from egolens.scene import denormalize, scene_facts
from egolens.vocabulary import ACTIONS

ABSENT = -1
"""Vehicle id of an empty observation row."""


class VehicleTracker:
    """Installed on one env: after every reset/step, `ids[row]` is the vehicle shown in that row
    (0 = ego, 1, 2, ... in order of first appearance in the episode, −1 = empty row) and
    `positions[row]` its world position (m)."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        self._ids: dict[int, tuple[Any, int]] = {}
        self._ego: Any = None
        self._install()
        # Every reset builds a new observation type (define_spaces): wrap each new one too.
        define_spaces = self.env.define_spaces

        def define_and_install() -> None:
            define_spaces()
            self._install()
        self.env.define_spaces = define_and_install
        self.ids = np.full(self.obs_type.vehicles_count, ABSENT)
        self.positions = np.zeros((self.obs_type.vehicles_count, 2))

    def _install(self) -> None:
        self.obs_type = self.env.observation_type
        self._observe = self.obs_type.observe
        self.obs_type.observe = self._observe_tracked

    def _vehicle_id(self, vehicle: Any) -> int:
        # Keep the vehicle object alive beside its id so its address is never reused.
        return self._ids.setdefault(id(vehicle), (vehicle, len(self._ids)))[1]

    def _observe_tracked(self) -> np.ndarray:
        obs_type, env = self.obs_type, self.env
        shuffled = obs_type.order == "shuffled"
        if shuffled:
            obs_type.order = "unshuffled"      # neither sorted nor shuffled: rows as found
        try:
            obs = self._observe()
        finally:
            if shuffled:
                obs_type.order = "shuffled"
        if obs_type.observer_vehicle is not self._ego:   # a new episode: a new ego vehicle
            self._ego, self._ids = obs_type.observer_vehicle, {}
        count = obs_type.vehicles_count
        close = env.road.close_objects_to(obs_type.observer_vehicle, env.PERCEPTION_DISTANCE, count=count - 1,
                                          see_behind=obs_type.see_behind, sort=obs_type.order == "sorted",
                                          vehicles_only=not obs_type.include_obstacles)[-count + 1:]
        rows: list[Any] = [obs_type.observer_vehicle, *close] + [None] * (count - 1 - len(close))
        if shuffled:
            order = np.arange(count - 1)
            env.np_random.shuffle(order)       # the same draws as shuffling obs[1:] in place
            obs[1:] = obs[1:][order]
            rows = [rows[0]] + [rows[1 + i] for i in order]
        self.ids = np.array([ABSENT if v is None else self._vehicle_id(v) for v in rows])
        self.positions = np.array([[0.0, 0.0] if v is None else v.position[:2] for v in rows], dtype=np.float64)
        return obs


@dataclass
class Episode:
    """One greedy episode. T = steps taken; obs_t is the state in which action_t was chosen.

    obs [T, E, F]; action, reward [T]; vehicle_id [T, E]; positions [T, E, 2] (m);
    frames: T + 1 rendered frames [H, W, 3] (the last one after the final step) or empty.
    """

    env_seed: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    vehicle_id: np.ndarray
    positions: np.ndarray
    outcome: str
    frames: list[np.ndarray] = field(default_factory=list)
    pixels: list[Any] = field(default_factory=list)
    """Per frame, a function world (x, y) in m -> frame pixel (column, row)."""


def _pixel_map(env: gym.Env) -> Any:
    surface = env.unwrapped.viewer.sim_surface
    origin, scaling = np.array(surface.origin, dtype=np.float64), float(surface.scaling)
    return lambda xy: ((np.asarray(xy) - origin) * scaling).astype(int)


def play_episode(net: nn.Module, env: gym.Env, tracker: VehicleTracker, env_seed: int,
                 render: bool = False) -> Episode:
    """Play one greedy episode of `net` on `env` (tracked by `tracker`) from `env_seed`."""
    obs, _ = env.reset(seed=env_seed)
    observations, actions, rewards, ids, positions, frames, pixels = [], [], [], [], [], [], []

    def snapshot(state: np.ndarray) -> None:
        if render:
            frames.append(np.asarray(env.render()))
            pixels.append(_pixel_map(env))

    snapshot(obs)
    while True:
        observations.append(np.asarray(obs, dtype=np.float32))
        ids.append(tracker.ids.copy())
        positions.append(tracker.positions.copy())
        with torch.no_grad():
            action = int(net(torch.as_tensor(observations[-1])[None]).argmax(dim=1))
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        snapshot(obs)
        if terminated or truncated:
            break
    return Episode(env_seed, np.stack(observations), np.array(actions), np.array(rewards), np.stack(ids),
                   np.stack(positions), outcome(bool(terminated), bool(truncated), bool(info["crashed"])),
                   frames, pixels)


_TRACKERS: dict[int, VehicleTracker] = {}
"""The tracker installed on each env this process played `record_episode` on (by id)."""


def record_episode(net: nn.Module, env: gym.Env, env_seed: int) -> Episode:
    """One unrendered greedy episode of `net` from `env_seed`, tracked: a job for `EnvRunner.map`
    (runs in the env's worker process; a tracker is installed on the env at its first episode)."""
    torch.set_num_threads(1)
    tracker = _TRACKERS.get(id(env))
    if tracker is None:
        tracker = _TRACKERS[id(env)] = VehicleTracker(env)
    return play_episode(net, env, tracker, env_seed)


def record_activations(net: nn.Module, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Q [N, A] and every named activation {name: [N, ...]} of a batch of observations [N, E, F]."""
    q, cache = run_with_cache(net, torch.as_tensor(obs))
    return q.numpy(), {name: value.numpy() for name, value in cache.items()}


def rollout_arrays(episodes: list[Episode], net: nn.Module) -> dict[str, np.ndarray]:
    """Everything recorded, one row per step: obs [N, E, F], episode, step, action, reward [N],
    vehicle_id [N, E], q [N, A], attention [N, H, E], and every activation by name."""
    obs = np.concatenate([e.obs for e in episodes])
    q, cache = record_activations(net, obs)
    arrays = {
        "obs": obs,
        "episode": np.concatenate([np.full(len(e.action), i) for i, e in enumerate(episodes)]),
        "step": np.concatenate([np.arange(len(e.action)) for e in episodes]),
        "env_seed": np.concatenate([np.full(len(e.action), e.env_seed) for e in episodes]),
        "action": np.concatenate([e.action for e in episodes]),
        "reward": np.concatenate([e.reward for e in episodes]).astype(np.float32),
        "vehicle_id": np.concatenate([e.vehicle_id for e in episodes]),
        "q": q,
        "attention": cache["attention_layer.hook_pattern"][:, :, 0, :],
    }
    return arrays | cache


def steps_table(episodes: list[Episode], arrays: dict[str, np.ndarray], cfg: EnvConfig) -> pd.DataFrame:
    """One row per step: episode, step, env_seed, action (name), Q per action, reward, whether the
    step ended the episode by a crash or an arrival, and the ego speed (m/s)."""
    kin = denormalize(arrays["obs"], cfg)
    last = np.concatenate([np.arange(len(e.action)) == len(e.action) - 1 for e in episodes])
    ended_as = np.concatenate([np.full(len(e.action), e.outcome) for e in episodes])
    table = pd.DataFrame({
        "episode": arrays["episode"], "step": arrays["step"], "env_seed": arrays["env_seed"],
        "action": [ACTIONS[a] for a in arrays["action"]],
        **{f"q_{name.lower()}": arrays["q"][:, i] for i, name in enumerate(ACTIONS)},
        "reward": arrays["reward"],
        "crashed": last & (ended_as == "collision"),
        "arrived": last & (ended_as == "arrived"),
        "ego_speed": np.hypot(kin.vx[:, 0], kin.vy[:, 0]),
    })
    return table


def vehicles_table(arrays: dict[str, np.ndarray], cfg: EnvConfig, horizon: float, radius: float,
                   min_ego_speed: float) -> pd.DataFrame:
    """One row per (step, present other vehicle): its simulator id, row, position (m), the scene
    facts of `egolens.scene` and its attention weight per head."""
    facts = scene_facts(arrays["obs"], cfg, horizon, radius, min_ego_speed)
    kin = denormalize(arrays["obs"], cfg)
    n, entities = arrays["vehicle_id"].shape
    step_index, row = np.nonzero(kin.present & (np.arange(entities) > 0)[None, :])
    columns = {
        "episode": arrays["episode"][step_index], "step": arrays["step"][step_index],
        "vehicle_id": arrays["vehicle_id"][step_index, row], "row": row,
        "x": kin.x[step_index, row], "y": kin.y[step_index, row],
        "vx": kin.vx[step_index, row], "vy": kin.vy[step_index, row],
    }
    columns |= {name: value[step_index, row] for name, value in facts.items()}
    for h in range(arrays["attention"].shape[1]):
        columns[f"attention_h{h}"] = arrays["attention"][step_index, h, row]
    return pd.DataFrame(columns)


def attention_off_ego(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """How much attention the other vehicles get at all: one row per (episode, head) with the
    episode's steps and the mean over its steps of the attention share off the ego
    (1 − pattern[ego]), from the recorded attention [N, H, E] and episode [N]."""
    off_ego = 1.0 - arrays["attention"][:, :, 0].astype(np.float64)           # [N, H]
    episode = arrays["episode"]
    rows = []
    for e in np.unique(episode):
        steps = episode == e
        rows += [{"episode": int(e), "head": h, "steps": int(steps.sum()),
                  "off_ego": round(float(off_ego[steps, h].mean()), 6)} for h in range(off_ego.shape[1])]
    return pd.DataFrame(rows, columns=["episode", "head", "steps", "off_ego"])


def play_episodes(net: nn.Module, cfg: EnvConfig, env_seeds: Sequence[int], render_episodes: int, num_envs: int,
                  progress: Callable[[], None] = lambda: None) -> list[Episode]:
    """Greedy episodes of `net` from each of `env_seeds`, in order. The first `render_episodes` play
    on a rendered env of their own (once rendered, an env draws every intermediate frame of every
    later step), the others unrendered on `num_envs` envs in parallel (`EnvRunner.map`); `progress`
    is called once per unrendered episode."""
    rendered = make_env(cfg, render_mode="rgb_array")
    tracker = VehicleTracker(rendered)
    try:
        episodes = [play_episode(net, rendered, tracker, seed, render=True) for seed in env_seeds[:render_episodes]]
    finally:
        rendered.close()
    plain = list(env_seeds[render_episodes:])
    with make_runner(cfg, min(num_envs, max(len(plain), 1))) as runner:
        episodes += runner.map(partial(record_episode, net), plain, progress=progress)
    return episodes
