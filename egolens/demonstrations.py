"""Demonstrations: the clairvoyant planner's episodes recorded step by step.

The planner (`egolens.policies.plan_episode`) searches deep copies of the env; it returns the
actions it played, not what the agent would have observed. `demonstrate` plays the planner's
episode, then replays its actions on the same env from the same seed (a few steps, against the
thousands of the search) to record every observation, and checks that the replay ended exactly
as the planner's episode did.

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
from typing import Any

import numpy as np

from egolens.env import outcome
from egolens.policies import PlannedEpisode, plan_episode

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

    @property
    def outcome(self) -> str:
        return outcome(bool(self.terminated[-1]), bool(self.truncated[-1]), bool(self.crashed[-1]))


def record_episode(env: Any, env_seed: int, actions: Sequence[int]) -> EpisodeSteps:
    """Reset `env` (a gym env) with `env_seed` and play `actions`, recording every step.

    Stops when the episode ends; raises ValueError if it ends before or after the last action.
    """
    obs = np.asarray(env.reset(seed=int(env_seed))[0], dtype=np.float32)
    rows: list[tuple[np.ndarray, int, float, np.ndarray, bool, bool, bool]] = []
    for t, action in enumerate(actions):
        next_obs, reward, terminated, truncated, info = env.step(int(action))
        next_obs = np.asarray(next_obs, dtype=np.float32)
        rows.append((obs, int(action), float(reward), next_obs, bool(terminated), bool(truncated),
                     bool(info.get("crashed", False))))
        obs = next_obs
        if (terminated or truncated) != (t == len(actions) - 1):
            raise ValueError(f"env seed {env_seed}: the episode ended at step {t + 1} of {len(actions)} actions"
                             if terminated or truncated else
                             f"env seed {env_seed}: the episode had not ended after {len(actions)} actions")
    if not rows:
        raise ValueError("an episode needs at least one action")
    columns = list(zip(*rows))
    return EpisodeSteps(np.stack(columns[0]), np.asarray(columns[1], dtype=np.int64),
                        np.asarray(columns[2], dtype=np.float64), np.stack(columns[3]),
                        np.asarray(columns[4], dtype=bool), np.asarray(columns[5], dtype=bool),
                        np.asarray(columns[6], dtype=bool))


def demonstrate(env: Any, env_seed: int, replan: str = "after_slower") -> tuple[PlannedEpisode, EpisodeSteps]:
    """The planner's episode on `env_seed` and its recorded steps (a module-level function, so
    `EnvRunner.map` can run it on a worker's env).

    Raises RuntimeError if the recording does not end as the planner's episode did (same outcome,
    length and return): the env would then not be deterministic given its seed.
    """
    planned = plan_episode(env, env_seed, replan=replan)
    steps = record_episode(env, env_seed, planned.actions)
    ret = float(steps.reward.sum())
    if steps.outcome != planned.outcome or len(steps.action) != planned.length or not np.isclose(
            ret, planned.ret, rtol=0.0, atol=1e-9):
        raise RuntimeError(f"env seed {env_seed}: replaying the planner's actions gave {steps.outcome} after "
                           f"{len(steps.action)} steps (return {ret}), the planner's episode {planned.outcome} after "
                           f"{planned.length} (return {planned.ret})")
    return planned, steps


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


def demonstration_summary(planned: Sequence[PlannedEpisode], steps: Sequence[EpisodeSteps]) -> dict[str, Any]:
    """Episodes, steps, the planner's success / collision / timeout rates, mean return and length,
    the fraction of episodes that ended as predicted, and how often each action was taken."""
    outcomes = [p.outcome for p in planned]
    actions = np.concatenate([s.action for s in steps])
    return {
        "episodes": len(planned),
        "steps": int(len(actions)),
        "success_rate": float(np.mean([o == "arrived" for o in outcomes])),
        "collision_rate": float(np.mean([o == "collision" for o in outcomes])),
        "timeout_rate": float(np.mean([o == "timeout" for o in outcomes])),
        "mean_return": round(float(np.mean([p.ret for p in planned])), 6),
        "mean_length": float(np.mean([p.length for p in planned])),
        "replay_matched": float(np.mean([p.replay_matched for p in planned])),
        "action_fraction": {name: round(float(np.mean(actions == a)), 6)
                            for a, name in enumerate(("slower", "idle", "faster"))},
    }
