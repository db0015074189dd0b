"""intersection-v0 built exactly as the reference configured it, or intersection-v2 (the NPC fix) and the
other vehicles' destinations when params ask for them."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import gymnasium as gym
import highway_env  # noqa: F401  (registers the highway-env ids with gymnasium)

from egolens.config import EnvConfig
from egolens.runner import EnvRunner


def env_config(cfg: EnvConfig) -> dict[str, Any]:
    """The highway-env config dict for `cfg`.

    Every key of the observation block is given (a partial block replaces the whole default
    one), and `target_speeds` is explicit (without it the action falls back to [20, 25, 30]).
    """
    return {
        "observation": {
            "type": "Kinematics",
            "vehicles_count": cfg.vehicles_count,
            "features": list(cfg.features),
            "features_range": {k: list(v) for k, v in cfg.features_range.model_dump().items()},
            "absolute": cfg.absolute,
            "normalize": True,
            "clip": True,
            "see_behind": False,
            "observe_intentions": cfg.observe_intentions,
            "order": cfg.order,
        },
        "action": {
            "type": "DiscreteMetaAction",
            "longitudinal": True,
            "lateral": False,
            "target_speeds": list(cfg.target_speeds),
        },
        "duration": cfg.duration,
        "policy_frequency": cfg.policy_frequency,
        "simulation_frequency": cfg.simulation_frequency,
        "destination": cfg.destination,
        "initial_vehicle_count": cfg.initial_vehicle_count,
        "spawn_probability": cfg.spawn_probability,
        "collision_reward": cfg.collision_reward,
        "high_speed_reward": cfg.high_speed_reward,
        "arrived_reward": cfg.arrived_reward,
        "reward_speed_range": list(cfg.reward_speed_range),
        "normalize_reward": cfg.normalize_reward,
    }


def make_env(cfg: EnvConfig, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the env; if `seed` is given, reset it once with that seed.

    Observations are float32 `[vehicles_count, len(features)]`, row 0 the ego vehicle.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*out of date.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        env = gym.make(cfg.id, config=env_config(cfg), render_mode=render_mode)
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_runner(cfg: EnvConfig, num_envs: int) -> EnvRunner:
    """`num_envs` envs of `cfg` in an `EnvRunner` (one worker process each when more than one)."""
    return EnvRunner([partial(make_env, cfg) for _ in range(num_envs)])
