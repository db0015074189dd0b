"""Demonstrations: episodes recorded step by step (the clairvoyant planner's: `egolens.planner_steps`).

A set of demonstrations is one table of N steps (every episode's steps in episode order):

    obs, next_obs  [N, E, F] float32   the normalised observation before / after the step
    action         [N] int64           0 SLOWER, 1 IDLE, 2 FASTER
    reward         [N] float64
    terminated, truncated, crashed  [N] bool
    episode        [N] int64           index of the step's episode (0 .. K−1)
    env_seed       [K] int64           env seed of each episode

They are behaviour cloning's targets (`egolens.imitation`) and DQfD's demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STEP_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "crashed", "episode")
"""The per-step arrays of a demonstration set (each of length N)."""


@dataclass
class EpisodeSteps:
    """One episode's steps: obs, next_obs [T, E, F] float32; action [T] int64; reward [T] float64;
    terminated, truncated, crashed [T] bool."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    crashed: np.ndarray


def demonstration_arrays(episodes: Sequence[EpisodeSteps], env_seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """The demonstration table (module docstring) of `episodes`, played on `env_seeds` (one each)."""
    if len(episodes) != len(env_seeds) or not episodes:
        raise ValueError(f"need one env seed per episode and at least one episode, got {len(episodes)} episodes "
                         f"and {len(env_seeds)} seeds")
    arrays = {key: np.concatenate([getattr(e, key) for e in episodes])
              for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "crashed")}
    arrays["episode"] = np.concatenate([np.full(len(e.action), k, dtype=np.int64) for k, e in enumerate(episodes)])
    arrays["env_seed"] = np.asarray(env_seeds, dtype=np.int64)
    return arrays


@dataclass(frozen=True)
class Demonstrations:
    """A checked demonstration table (module docstring): N steps of K episodes."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    crashed: np.ndarray
    episode: np.ndarray
    env_seed: np.ndarray

    def __len__(self) -> int:
        return len(self.action)

    @property
    def episodes(self) -> int:
        return len(self.env_seed)

    @property
    def ended(self) -> np.ndarray:
        """[N] bool: the step ends its episode."""
        return self.terminated | self.truncated


def check_arrays(arrays: dict[str, np.ndarray], source: str = "demonstrations") -> Demonstrations:
    """Check a demonstration table's keys, shapes, dtypes and episode structure; raise ValueError naming
    what is wrong."""
    missing = sorted(set(STEP_KEYS + ("env_seed",)) - set(arrays))
    if missing:
        raise ValueError(f"{source}: missing arrays {missing}")
    n = len(arrays["action"])
    wrong = [k for k in STEP_KEYS if len(arrays[k]) != n]
    if wrong or arrays["obs"].ndim != 3 or arrays["obs"].shape != arrays["next_obs"].shape:
        raise ValueError(f"{source}: arrays of different lengths {wrong} or obs/next_obs not [N, E, F] alike")
    if arrays["obs"].dtype != np.float32 or arrays["action"].dtype != np.int64:
        raise ValueError(f"{source}: obs must be float32 and action int64, got {arrays['obs'].dtype} and "
                         f"{arrays['action'].dtype}")
    episode = arrays["episode"]
    ended = arrays["terminated"] | arrays["truncated"]
    starts = np.flatnonzero(np.diff(episode, prepend=-1))
    if (n == 0 or not np.array_equal(episode[starts], np.arange(len(starts)))
            or len(starts) != len(arrays["env_seed"]) or not np.array_equal(np.flatnonzero(ended),
                                                                               np.append(starts[1:] - 1, n - 1))):
        raise ValueError(f"{source}: episodes must be numbered 0, 1, ... in order, one env seed each, and "
                         "each must end (terminated or truncated) on its last step and only there")
    return Demonstrations(**{key: arrays[key] for key in STEP_KEYS + ("env_seed",)})


def load_demonstrations(path: str | Path) -> Demonstrations:
    """Read a demonstrations .npz (written by the demonstrations stage) and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no demonstrations there (run the demonstrations stage)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return check_arrays(arrays, str(path))
