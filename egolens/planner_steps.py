"""The clairvoyant planner's episodes recorded step by step, as demonstrations.

The planner (`egolens.policies.plan_episode`) searches deep copies of the env; it returns the
actions it played, not what the agent would have observed. `demonstrate` plays the planner's
episode, then replays its actions on the same env from the same seed (a few steps, against the
thousands of the search) to record every observation, and checks that the replay ended exactly
as the planner's episode did. `egolens.demonstrations` turns the episodes into one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from egolens.demonstrations import EpisodeSteps
from egolens.episodes import outcome
from egolens.policies import PlannedEpisode, plan_episode


def episode_outcome(steps: EpisodeSteps) -> str:
    """'arrived', 'collision' or 'timeout', from the episode's last step."""
    return outcome(bool(steps.terminated[-1]), bool(steps.truncated[-1]), bool(steps.crashed[-1]))


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
    if episode_outcome(steps) != planned.outcome or len(steps.action) != planned.length or not np.isclose(
            ret, planned.ret, rtol=0.0, atol=1e-9):
        raise RuntimeError(f"env seed {env_seed}: replaying the planner's actions gave {episode_outcome(steps)} after "
                           f"{len(steps.action)} steps (return {ret}), the planner's episode {planned.outcome} after "
                           f"{planned.length} (return {planned.ret})")
    return planned, steps


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
