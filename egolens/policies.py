"""Baseline drivers for intersection-v0: constant actions, a rule-based driver and a clairvoyant planner.

They bracket what a learned agent can reach (README, "Performance"):

- `constant_policy(a)`: always the same meta-action (0 SLOWER, 1 IDLE, 2 FASTER).

Every policy is played by `egolens.episodes.play` on the study's runner (the planner as a `Driver`).
- `RuleBasedDriver`: FASTER unless a vehicle threatens the ego's path soon, then SLOWER; it only
  reads the normalised observation, like the network does.
- `plan_episode`: a clairvoyant planner. A deep copy of highway-env's env keeps the simulator's
  random state, so stepping a copy shows the real future (later spawns included). It searches the
  open-loop "wait-then-go" plans FASTER^j SLOWER^k FASTER^rest with a pruned tree search
  (`search_plans`) and re-plans where it can matter. Its outcomes are an upper reference, not a
  policy an agent could learn from observations.

Outcomes rank arrived (without a crash) > timeout > collision; within an outcome a higher return
(undiscounted sum of rewards) is better.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from egolens.config import EnvConfig
from egolens.episodes import ARRIVED, COLLISION, TIMEOUT, Driver, Episode, outcome
from egolens.scene import denormalize, scene_facts, time_to_collision

SLOWER, IDLE, FASTER = 0, 1, 2
"""highway-env's DiscreteMetaAction indices (longitudinal only)."""

OUTCOME_RANK = {COLLISION: 0, TIMEOUT: 1, ARRIVED: 2}
"""Higher is better: an arrival beats a timeout, which beats a collision."""



# --------------------------------------------------------------------------------------- constant


def constant_policy(action: int) -> Callable[[np.ndarray], np.ndarray]:
    """A policy that returns `action` whatever the observations: obs [N, E, F] -> [N] actions
    (the batched form `egolens.episodes.play` calls)."""
    if action not in (SLOWER, IDLE, FASTER):
        raise ValueError(f"action must be 0 (SLOWER), 1 (IDLE) or 2 (FASTER), got {action!r}")

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.full(len(obs), action, dtype=np.int64)

    policy.__name__ = f"constant_{action}"
    return policy


# ------------------------------------------------------------------------------------ rule-based


@dataclass(frozen=True)
class RuleBasedDriver:
    """FASTER unless some present vehicle threatens the ego's path within the horizon, then SLOWER.

    A vehicle is a threat when
    - its constant-velocity path over `horizon` s crosses the ego's path over the same horizon
      (`egolens.scene.scene_facts`' "crossing": the ego drawn along its heading at
      max(speed, `min_ego_speed`)), or it is ahead of the ego in its lane (|lateral offset| below
      `lane_half_width`: oncoming traffic one lane over, 4 m away, is not a threat); and
    - its time to collision with the ego *if the ego goes* — the ego moving along its heading at
      max(speed, `min_ego_speed`), the other vehicle at constant velocity, a collision being a gap
      below `collision_radius` m — is below `ttc_threshold` s.
    Judging the ego as if it went (rather than at its current speed) makes a stopped ego wait for a
    vehicle that would hit it once it moves, and go again once that vehicle has passed.

    A weak baseline by construction: the ego's path is a straight line along its current heading
    (it does not know it will turn left), and at 1 decision per second a threat first seen with a
    time to collision under a second cannot be avoided by braking (which can leave the ego stopped
    in the junction).
    """

    cfg: EnvConfig = field(default_factory=EnvConfig)
    """How the observation is normalised (features, features_range)."""
    ttc_threshold: float = 3.0
    """s: yield to a threat whose time to collision is below this."""
    horizon: float = 5.0
    """s: look-ahead of the constant-velocity paths for the crossing test."""
    collision_radius: float = 5.0
    """m: gap below which two vehicles count as colliding."""
    min_ego_speed: float = 4.5
    """m/s: the ego's speed when it goes (it can always speed up to IDLE's target)."""
    lane_half_width: float = 2.0
    """m: a vehicle ahead whose path does not cross the ego's counts only within this lateral offset."""

    def threats(self, obs: np.ndarray) -> np.ndarray:
        """obs: [N, E, F] normalised -> [N, E] bool, True for vehicles the ego yields to (never the ego)."""
        obs = np.asarray(obs, dtype=np.float64)
        k = denormalize(obs, self.cfg)
        facts = scene_facts(obs, self.cfg, horizon=self.horizon, radius=self.collision_radius,
                            min_ego_speed=self.min_ego_speed)
        heading = np.stack([k.cos_h[:, :1], k.sin_h[:, :1]], axis=-1)               # [N, 1, 2]
        go_speed = np.maximum(np.hypot(k.vx[:, :1], k.vy[:, :1]), self.min_ego_speed)  # [N, 1]
        ego_velocity = heading * go_speed[..., None]                                 # [N, 1, 2]
        rel = np.stack([k.x - k.x[:, :1], k.y - k.y[:, :1]], axis=-1)                # [N, E, 2]
        rel_v = np.stack([k.vx, k.vy], axis=-1) - ego_velocity
        ttc_go = time_to_collision(rel, rel_v, self.collision_radius)                # [N, E]
        others = k.present.copy()
        others[:, 0] = False
        in_lane = facts["ahead"] & (np.abs(facts["lateral"]) < self.lane_half_width)
        return others & (facts["crossing"] | in_lane) & (ttc_go < self.ttc_threshold)

    def actions(self, obs: np.ndarray) -> np.ndarray:
        """obs: [N, E, F] normalised -> actions [N] (int64): SLOWER where any threat, else FASTER."""
        return np.where(self.threats(obs).any(axis=1), SLOWER, FASTER).astype(np.int64)

    def __call__(self, obs: np.ndarray) -> int:
        """obs: [E, F] normalised -> SLOWER or FASTER."""
        return int(self.actions(np.asarray(obs)[None])[0])


# ------------------------------------------------------------------------------ the planner


@dataclass(frozen=True)
class PlanValue:
    """How an episode ends under a plan: outcome, return (whole episode) and length (steps)."""

    outcome: str
    ret: float
    length: int

    def key(self) -> tuple[int, float]:
        """Sort key: higher is better (outcome first, then return)."""
        return OUTCOME_RANK[self.outcome], self.ret

    def beats(self, other: PlanValue | None) -> bool:
        """Strictly better than `other` (anything beats None)."""
        return other is None or self.key() > other.key()


def steps_until_truncation(config: Mapping[str, Any], time: float = 0.0) -> int:
    """Decisions left before highway-env truncates an episode whose clock reads `time` (s).

    Repeats the env's own float arithmetic (`time += 1 / policy_frequency` until
    `time >= duration`), so it is exact: 13 from the start with the default config.
    """
    n = 0
    while not time >= config["duration"]:
        time += 1 / config["policy_frequency"]
        n += 1
    return n


def reward_bound(config: Mapping[str, Any]) -> float:
    """An upper bound on one step's reward of intersection-v0 under `config` (1 by default).

    A step earns arrived_reward on arrival, else collision_reward·crashed + high_speed_reward·s
    with s in [0, 1], times on_road (0 or 1); normalize_reward maps [collision, arrived] to [0, 1].
    """
    high, crash, arrived = config["high_speed_reward"], config["collision_reward"], config["arrived_reward"]
    bound = max(0.0, arrived, high, crash + max(high, 0.0))
    if config.get("normalize_reward", False):
        bound = (bound - crash) / (arrived - crash)
    return float(bound)


def wait_then_go(j: int, k: int, steps: int) -> tuple[int, ...]:
    """The plan FASTER for j steps, SLOWER for k steps, then FASTER up to `steps` actions."""
    if j < 0 or k < 0 or j + k > steps:
        raise ValueError(f"need j, k >= 0 and j + k <= steps, got j={j}, k={k}, steps={steps}")
    return (FASTER,) * j + (SLOWER,) * k + (FASTER,) * (steps - j - k)


def plan_family(steps: int) -> list[tuple[int, ...]]:
    """The distinct wait-then-go plans of `steps` actions (every k = 0 plan is all-FASTER).

    1 + steps·(steps + 1)/2 plans: 92 for 13 steps.
    """
    plans = [wait_then_go(steps, 0, steps)]
    plans += [wait_then_go(j, k, steps) for k in range(1, steps + 1) for j in range(steps - k + 1)]
    return plans


# A node's phase in the wait-then-go tree and its children (action, next phase), explored in order:
# still in the first FASTER run (A), waiting (B), going to the end (C). FASTER first in A leads to the
# all-FASTER plan first; FASTER first in B tries the shortest wait first.
_CHILDREN = {
    "A": ((FASTER, "A"), (SLOWER, "B")),
    "B": ((FASTER, "C"), (SLOWER, "B")),
    "C": ((FASTER, "C"),),
}


@dataclass
class SearchResult:
    """The best plan a search found and what it cost.

    plan: every action of the episode from step 0 (the given prefix included) up to the step the
    episode is predicted to end; value: its predicted outcome, return and length.
    """

    plan: tuple[int, ...]
    value: PlanValue
    env_steps: int
    """env.step calls made by the search."""
    copies: int
    """deepcopy calls made by the search (one at the root, one per branch point)."""
    leaves: dict[tuple[int, ...], PlanValue] = field(default_factory=dict)
    """Every episode end reached: actions after the root -> value (when `record_leaves`)."""


class _TreeSearch:
    def __init__(self, bound: float, prune: bool, record: bool,
                 incumbent: tuple[tuple[int, ...], PlanValue] | None) -> None:
        self.bound, self.prune, self.record = bound, prune, record
        self.best_plan, self.best = incumbent if incumbent is not None else ((), None)
        self.env_steps = self.copies = 0
        self.leaves: dict[tuple[int, ...], PlanValue] = {}
        self.root_length = 0

    def hopeful(self, ret: float, steps_left: int) -> bool:
        """Whether a node with return `ret` so far and `steps_left` steps to go may still beat the best."""
        if not self.prune or self.best is None or self.best.outcome != ARRIVED:
            return True  # any branch may still arrive (or, failing that, time out)
        return ret + steps_left * self.bound > self.best.ret

    def copy(self, env: Any) -> Any:
        self.copies += 1
        return copy.deepcopy(env)

    def expand(self, env: Any, phase: str, actions: tuple[int, ...], ret: float, steps_left: int) -> None:
        """Explore the subtree under a node; `env` is at the node, not ended, and owned by this call."""
        children = _CHILDREN[phase]
        for i, (action, next_phase) in enumerate(children):
            if not self.hopeful(ret, steps_left):
                return
            child = env if i == len(children) - 1 else self.copy(env)
            _, reward, terminated, truncated, info = child.step(action)
            self.env_steps += 1
            path, child_ret = actions + (action,), ret + float(reward)
            if terminated or truncated:
                value = PlanValue(outcome(bool(terminated), bool(truncated), bool(info["crashed"])), child_ret,
                                  len(path))
                if self.record:
                    self.leaves[path[self.root_length:]] = value
                if value.beats(self.best):
                    self.best_plan, self.best = path, value
            elif steps_left > 1:
                self.expand(child, next_phase, path, child_ret, steps_left - 1)
            else:
                raise RuntimeError("the env did not truncate when its duration was up")


def search_plans(env: Any, steps_left: int, bound: float, *, prefix: Sequence[int] = (), ret: float = 0.0,
                 incumbent: tuple[Sequence[int], PlanValue] | None = None, prune: bool = True,
                 record_leaves: bool = False) -> SearchResult:
    """Best wait-then-go plan from `env`'s current state, by a depth-first tree search over copies.

    env: a highway-env env (the unwrapped one: `env.step` -> obs, reward, terminated, truncated,
    info with "crashed"); it is deep-copied at the root and left untouched. steps_left: decisions
    before truncation (`steps_until_truncation`); bound: an upper bound on one step's reward
    (`reward_bound`). prefix, ret: the actions taken and return earned so far in this episode (so
    plans and values are whole-episode ones).

    The plans FASTER^j SLOWER^k FASTER^rest (j + k <= steps_left) form a tree whose nodes are their
    shared prefixes: every prefix is simulated once, and the env is copied only where the tree
    branches (after a FASTER run, or a SLOWER run, that may continue or switch); the final FASTER
    run is stepped in place. Children are explored FASTER first (the all-FASTER plan is the first
    leaf, the shortest wait comes first).

    Pruning (`prune`): when the best so far arrived with return R, a node with return G and s
    steps to go is cut if G + s·bound <= R — nothing under it can arrive with a higher return, and
    a timeout or a collision never beats an arrival. Nothing is cut while the best is a timeout or
    a collision. A leaf replaces the best only if strictly better, so the result equals that of
    replaying every plan from the start and keeping the first best in the exploration order.

    incumbent: a known (plan, value) to beat — e.g. the previous search's best, whose continuation
    is in this family — so pruning is tight from the start; returned if nothing beats it.
    """
    if steps_left < 1:
        raise ValueError("the episode has no step left")
    if incumbent is not None and tuple(incumbent[0])[:len(prefix)] != tuple(prefix):
        raise ValueError("the incumbent plan must start with the prefix")
    search = _TreeSearch(bound, prune, record_leaves, (tuple(incumbent[0]), incumbent[1]) if incumbent else None)
    search.root_length = len(prefix)
    if search.hopeful(ret, steps_left):
        search.expand(search.copy(env), "A", tuple(prefix), ret, steps_left)
    if search.best is None:
        raise RuntimeError("the search found no plan")
    return SearchResult(tuple(search.best_plan), search.best, search.env_steps, search.copies, search.leaves)


def replay_steps(leaves: Mapping[tuple[int, ...], PlanValue], steps_left: int) -> int:
    """Env steps that replaying every wait-then-go plan from the search root would simulate.

    leaves: an unpruned search's `leaves` (every episode end); each plan runs until its episode
    ends, i.e. for the length of the leaf that is a prefix of it.
    """
    total = 0
    for plan in plan_family(steps_left):
        for n in range(1, steps_left + 1):
            if plan[:n] in leaves:
                total += n
                break
        else:
            raise ValueError(f"no leaf is a prefix of the plan {plan}")
    return total


@dataclass(kw_only=True)
class PlannedEpisode(Episode):
    """One episode driven by the clairvoyant planner (its actions in `action`) and how it compares
    with the prediction."""

    predicted_outcome: str
    """Outcome of the best plan found at the first decision."""
    predicted_return: float
    predicted_length: int
    final_outcome: str
    """Predicted outcome of the plan finally executed (differs from the first only if re-planning improved)."""
    final_return: float
    final_length: int
    replay_matched: bool
    """The episode ended exactly as the executed plan predicted (outcome, return, length)."""
    replans: int
    """Searches run (the first decision included)."""
    env_steps: int
    """env.step calls made by all the searches (the real episode's own steps not included)."""
    copies: int

    @property
    def actions(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.action)

    @property
    def improved(self) -> bool:
        """Re-planning found something strictly better than the first decision's plan."""
        first = PlanValue(self.predicted_outcome, self.predicted_return, self.predicted_length)
        return PlanValue(self.final_outcome, self.final_return, self.final_length).beats(first)


REPLAN_RULES = ("after_slower", "every_step", "never")
"""When `plan_episode` searches again after the first decision."""


def plan_episode(env: Any, env_seed: int, *, replan: str = "after_slower") -> PlannedEpisode:
    """Drive one episode of `env` (a gym env, reset here with `env_seed`) with the clairvoyant planner.

    At the first decision it deep-copies the env and finds the best wait-then-go plan over the
    whole episode (`search_plans`); the real env then plays that plan's actions. A re-plan
    searches FASTER^j SLOWER^k FASTER^rest again from the real current state, seeded with the
    current plan's continuation and value as the incumbent (that continuation is in the new
    family), and switches only to a strictly better plan, so the executed plan is at least as good
    as the first prediction. `replan`:

    - "after_slower" (default): re-plan right after every executed SLOWER. Not after a FASTER: if
      the actions executed since the last search are all FASTER, every plan of the new family is
      FASTER^m followed by a plan of that search's family, so it was searched (or pruned as unable
      to beat the best) there and the current plan is still the best. This chooses exactly the
      actions of "every_step" at a fraction of the cost; a re-plan after a SLOWER can find plans
      outside the first family (go, wait, go again, ...).
    - "every_step": re-plan before every action (the plain receding horizon).
    - "never": play the first decision's plan open loop.
    Whatever the rule, it also re-plans if the plan has run out (only if the env did not do what
    a copy predicted).

    The real env must truncate where its unwrapped copies do (no shorter TimeLimit wrapper);
    copies drop any viewer, so searching from a rendered env does not render.

    Deterministic: the same seed gives the same actions and outcome. `replay_matched` says
    whether the real episode ended as the executed plan predicted (it should: copies keep the
    simulator's random state).
    """
    if replan not in REPLAN_RULES:
        raise ValueError(f"replan must be one of {REPLAN_RULES}, got {replan!r}")
    env.reset(seed=int(env_seed))
    sim = env.unwrapped
    bound = reward_bound(sim.config)
    actions: list[int] = []
    ret = 0.0
    plan: tuple[int, ...] = ()
    value: PlanValue | None = None
    first: PlanValue | None = None
    replans = env_steps = copies = 0
    while True:
        t = len(actions)
        if (value is None or t >= len(plan) or replan == "every_step"
                or (replan == "after_slower" and actions[-1] == SLOWER)):
            incumbent = (plan, value) if value is not None and t < len(plan) else None
            found = search_plans(sim, steps_until_truncation(sim.config, sim.time), bound, prefix=actions, ret=ret,
                                 incumbent=incumbent)
            plan, value = found.plan, found.value
            first = first or value
            replans, env_steps, copies = replans + 1, env_steps + found.env_steps, copies + found.copies
        action = plan[t]
        _, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        ret += float(reward)
        if terminated or truncated:
            break
    assert first is not None and value is not None
    result = outcome(bool(terminated), bool(truncated), bool(info["crashed"]))
    matched = (result == value.outcome and len(actions) == value.length and tuple(actions) == plan
               and math.isclose(ret, value.ret, rel_tol=0.0, abs_tol=1e-9))
    return PlannedEpisode(env_seed=int(env_seed), ret=ret, length=len(actions), outcome=result,
                          action=np.array(actions, dtype=np.int64), predicted_outcome=first.outcome,
                          predicted_return=first.ret, predicted_length=first.length, final_outcome=value.outcome,
                          final_return=value.ret, final_length=value.length, replay_matched=matched,
                          replans=replans, env_steps=env_steps, copies=copies)


@dataclass(frozen=True)
class Clairvoyant(Driver):
    """The clairvoyant planner as a `Driver` for `egolens.episodes.play` (`plan_episode` with `replan`)."""

    replan: str = "after_slower"

    def drive(self, env: Any, env_seed: int) -> PlannedEpisode:
        return plan_episode(env, env_seed, replan=self.replan)


def replay_plan(env: Any, env_seed: int, actions: Sequence[int]) -> PlanValue:
    """Reset `env` with `env_seed` and play `actions` until the episode ends (FASTER once they run out).

    The independent check of a planner's prediction: no copies, the env from its reset.
    """
    env.reset(seed=int(env_seed))
    ret, t = 0.0, 0
    while True:
        action = actions[t] if t < len(actions) else FASTER
        _, reward, terminated, truncated, info = env.step(action)
        ret += float(reward)
        t += 1
        if terminated or truncated:
            return PlanValue(outcome(bool(terminated), bool(truncated), bool(info["crashed"])), ret, t)
