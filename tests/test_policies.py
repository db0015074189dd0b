"""Baseline policies: constant, rule-based on planted scenes, and the clairvoyant planner against
brute-force replays (on a toy env with arrivals, and on a short intersection-v0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egolens.config import EnvConfig
from egolens.env import make_env, make_runner
from egolens.play import play
from egolens.policies import (
    FASTER,
    IDLE,
    SLOWER,
    PlanValue,
    RuleBasedDriver,
    constant_policy,
    plan_episode,
    plan_family,
    replay_plan,
    replay_steps,
    reward_bound,
    search_plans,
    steps_until_truncation,
    wait_then_go,
)

CFG = EnvConfig()
SHORT = EnvConfig(duration=5)
SHORT_SEEDS = (12, 26)
"""Seeds of the 5 s env on which constant FASTER crashes, so the planner has something to avoid."""


# ----------------------------------------------------------------------------- constant policies


def test_constant_policies_return_their_action():
    obs = np.zeros((4, 15, 7), dtype=np.float32)
    for action in (SLOWER, IDLE, FASTER):
        assert constant_policy(action)(obs).tolist() == [action] * 4
    with pytest.raises(ValueError):
        constant_policy(3)


# ----------------------------------------------------------------------------- rule-based driver


def normalised(rows: list[tuple[float, float, float, float, float, float]], entities: int = 5) -> np.ndarray:
    """rows of (presence, x, y, vx, vy, heading_rad) in metres and m/s -> obs [entities, 7], normalised
    with the config's features_range (v -> 2 (v - low) / (high - low) - 1); other rows absent (zeros)."""
    ranges = CFG.features_range

    def scale(v: float, bounds: list[float]) -> float:
        low, high = bounds
        return 2 * (v - low) / (high - low) - 1

    obs = np.zeros((entities, 7), dtype=np.float32)
    for i, (p, x, y, vx, vy, h) in enumerate(rows):
        obs[i] = [p, scale(x, ranges.x), scale(y, ranges.y), scale(vx, ranges.vx), scale(vy, ranges.vy),
                  np.cos(h), np.sin(h)]
    return obs


# The ego at (0, 0) drives along +x at 9 m/s; +y is down the screen, i.e. the ego's right.
EGO = (1.0, 0.0, 0.0, 9.0, 0.0, 0.0)
STOPPED_EGO = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
CROSSER = (1.0, 15.0, 15.0, 0.0, -9.0, -np.pi / 2)       # from the right, towards the ego's lane: ttc ~1.3 s
FAR_CROSSER = (1.0, 80.0, 80.0, 0.0, -9.0, -np.pi / 2)   # same line of approach, 113 m away: ttc ~8.5 s
LEAVING = (1.0, 15.0, 15.0, 0.0, 9.0, np.pi / 2)         # right of the road ahead, driving away from it
FOLLOWER = (1.0, -12.0, 0.0, 12.0, 0.0, 0.0)              # behind in the ego's lane, faster (it brakes, not us)


def test_rule_based_driver_yields_to_a_vehicle_crossing_soon():
    driver = RuleBasedDriver(CFG)
    assert driver(normalised([EGO, CROSSER])) == SLOWER
    assert driver(normalised([EGO, FAR_CROSSER, CROSSER])) == SLOWER
    # A stopped ego is judged as if it went at min_ego_speed: it keeps waiting for the crosser.
    assert driver(normalised([STOPPED_EGO, (1.0, 10.0, 10.0, 0.0, -9.0, -np.pi / 2)])) == SLOWER
    # (The crosser 15 m out would pass 6.7 m ahead of an ego starting at 4.5 m/s: no threat to it.)
    assert driver(normalised([STOPPED_EGO, CROSSER])) == FASTER
    # ... but goes at once if its time to collision threshold is below the crosser's
    assert RuleBasedDriver(CFG, ttc_threshold=1.0)(normalised([EGO, CROSSER])) == FASTER


def test_rule_based_driver_goes_when_nothing_threatens():
    driver = RuleBasedDriver(CFG)
    assert driver(normalised([EGO])) == FASTER                                        # alone
    assert driver(normalised([EGO, FAR_CROSSER])) == FASTER                           # far away
    assert driver(normalised([EGO, LEAVING])) == FASTER                               # moving away
    assert driver(normalised([EGO, (0.0, *CROSSER[1:])])) == FASTER                   # absent (presence 0)
    assert driver(normalised([EGO, FOLLOWER])) == FASTER                              # behind, same lane
    assert driver(normalised([STOPPED_EGO, (1.0, 10.0, -10.0, 0.0, -9.0, -np.pi / 2)])) == FASTER  # has passed


def test_rule_based_batched_actions_match_single_calls():
    near = (1.0, 10.0, 10.0, 0.0, -9.0, -np.pi / 2)
    scenes = [[EGO, CROSSER], [EGO], [EGO, LEAVING], [STOPPED_EGO, near], [EGO, (0.0, *CROSSER[1:])]]
    batch = np.stack([normalised(s) for s in scenes])
    driver = RuleBasedDriver(CFG)
    actions = driver.actions(batch)
    assert actions.shape == (len(scenes),) and actions.dtype == np.int64
    assert actions.tolist() == [driver(obs) for obs in batch] == [SLOWER, FASTER, FASTER, SLOWER, FASTER]
    assert not driver.threats(batch)[:, 0].any()                                       # never the ego


# ----------------------------------------------------------------------------- plan family


def test_plan_family_and_episode_budget():
    assert wait_then_go(2, 3, 6) == (FASTER, FASTER, SLOWER, SLOWER, SLOWER, FASTER)
    family = plan_family(13)
    assert len(family) == len(set(family)) == 92
    assert (FASTER,) * 13 in family and (SLOWER,) * 13 in family
    assert steps_until_truncation(make_env(CFG).unwrapped.config) == 13
    assert steps_until_truncation({"duration": 13, "policy_frequency": 1}, time=4.0) == 9
    # The env's own float clock: six steps of 1/3 s sum to 1.9999999999999998 < 2, so a 7th step is played.
    assert steps_until_truncation({"duration": 2, "policy_frequency": 3}) == 7
    assert reward_bound(make_env(CFG).unwrapped.config) == 1.0
    with pytest.raises(ValueError):
        wait_then_go(4, 3, 6)


def test_outcome_ranking():
    arrived, timeout, crash = PlanValue("arrived", 2.0, 9), PlanValue("timeout", 9.0, 13), PlanValue("collision", 9, 8)
    assert arrived.beats(timeout) and timeout.beats(crash) and arrived.beats(crash)
    assert PlanValue("arrived", 2.5, 10).beats(arrived) and not arrived.beats(arrived)


# ----------------------------------------------------------------------------- toy env: arrivals


class ToyCrossing:
    """A 1-D stand-in for intersection-v0 that a planner can deep-copy: the ego drives `goal` metres
    (target speeds 0 / 4.5 / 9, at most 6 m/s of speed change per step) across conflict zones; each
    step a random draw per zone decides whether crossing traffic occupies it, and being in an occupied
    zone is a crash. Rewards follow intersection-v0's: arrived 1, else (speed - 7) / 2 clipped to
    [0, 1], -5 more on a crash. zones: per zone, the range its start is drawn from and its length."""

    def __init__(self, duration: int = 7, goal: float = 42.0,
                 zones: tuple[tuple[float, float, float], ...] = ((0.0, 20.0, 15.0),), occupancy: float = 0.6) -> None:
        self.config = {"duration": duration, "policy_frequency": 1, "high_speed_reward": 1.0,
                       "collision_reward": -5.0, "arrived_reward": 1.0, "normalize_reward": False}
        self.goal, self.zone_specs, self.occupancy = goal, zones, occupancy

    @property
    def unwrapped(self) -> ToyCrossing:
        return self

    def reset(self, seed: int):
        self.rng = np.random.default_rng(seed)
        starts = [float(self.rng.uniform(low, high)) for low, high, _ in self.zone_specs]
        self.zones = [(start, start + length) for start, (_, _, length) in zip(starts, self.zone_specs)]
        self.time, self.position, self.speed, self.index = 0, 0.0, 9.0, 2
        return np.zeros(2), {}

    def step(self, action: int):
        self.index = int(np.clip(self.index + {SLOWER: -1, IDLE: 0, FASTER: 1}[action], 0, 2))
        self.speed += float(np.clip((0.0, 4.5, 9.0)[self.index] - self.speed, -6.0, 6.0))
        self.position += self.speed
        self.time += 1
        occupied = self.rng.uniform(size=len(self.zones)) < self.occupancy
        crashed = any(o and low <= self.position <= high for o, (low, high) in zip(occupied, self.zones))
        arrived = self.position >= self.goal
        reward = 1.0 if arrived else float(np.clip((self.speed - 7.0) / 2.0, 0.0, 1.0)) - 5.0 * crashed
        return np.zeros(2), reward, crashed or arrived, self.time >= self.config["duration"], {"crashed": crashed}


TWO_CROSSINGS = {"duration": 9, "goal": 55.0, "zones": ((6.0, 14.0, 5.0), (26.0, 36.0, 5.0)), "occupancy": 0.4}
"""A toy where going, waiting and going again can beat every wait-then-go plan."""


def brute_force(env, seed: int, steps: int) -> tuple[PlanValue, int]:
    """Best value by replaying every plan FASTER^j SLOWER^k FASTER^rest from a reset, and the steps it took."""
    best, total = None, 0
    plans = {(FASTER,) * j + (SLOWER,) * k + (FASTER,) * (steps - j - k)
             for j in range(steps + 1) for k in range(steps + 1 - j)}
    for plan in sorted(plans):
        env.reset(seed=seed)
        ret, length = 0.0, 0
        for action in plan:
            _, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            length += 1
            if terminated or truncated:
                break
        total += length
        rank = {"collision": 0, "timeout": 1, "arrived": 2}
        end = "collision" if info["crashed"] else "arrived" if terminated else "timeout"
        value = PlanValue(end, ret, length)
        if best is None or (rank[value.outcome], value.ret) > (rank[best.outcome], best.ret):
            best = value
    return best, total


def test_tree_search_matches_brute_force_on_a_toy_env_with_arrivals():
    env = ToyCrossing()
    steps, bound = 7, 1.0
    outcomes = set()
    for seed in range(40):
        expected, replayed = brute_force(env, seed, steps)
        env.reset(seed=seed)
        full = search_plans(env, steps, bound, prune=False, record_leaves=True)
        pruned = search_plans(env, steps, bound)
        for found in (full, pruned):
            assert (found.value.outcome, found.value.ret) == (expected.outcome, pytest.approx(expected.ret, abs=1e-12))
            assert replay_plan(env, seed, found.plan) == found.value
        assert replay_steps(full.leaves, steps) == replayed
        assert pruned.env_steps <= full.env_steps < replayed
        outcomes.add(expected.outcome)
    assert outcomes == {"arrived", "timeout", "collision"}


def test_replanning_after_each_slower_equals_replanning_every_step_and_can_improve():
    env = ToyCrossing(**TWO_CROSSINGS)
    improved = []
    for seed in [*range(40), 65]:
        episode = plan_episode(env, seed)
        assert episode.replay_matched
        assert plan_episode(env, seed, replan="every_step").actions == episode.actions
        open_loop = plan_episode(env, seed, replan="never")
        assert (open_loop.outcome, open_loop.ret) == (episode.predicted_outcome, episode.predicted_return)
        assert open_loop.replans == 1 and open_loop.replay_matched
        if episode.improved:
            improved.append(seed)
            assert SLOWER in episode.actions and episode.replans > 1
    # go, wait, go, wait, go: outside the wait-then-go family, found by re-planning after a SLOWER
    assert improved == [8, 65]


def test_search_keeps_an_incumbent_it_cannot_beat_and_leaves_the_env_untouched():
    env = ToyCrossing()
    env.reset(seed=5)
    best = search_plans(env, 7, 1.0)
    again = search_plans(env, 7, 1.0, incumbent=(best.plan, best.value))
    assert (again.plan, again.value) == (best.plan, best.value)
    assert again.env_steps <= best.env_steps
    assert env.time == 0 and env.position == 0.0


# ----------------------------------------------------------------------------- the real env, short


@pytest.fixture(scope="module")
def short_env():
    env = make_env(SHORT)
    yield env
    env.close()


@pytest.fixture(scope="module")
def planned(short_env):
    return {seed: plan_episode(short_env, seed) for seed in SHORT_SEEDS}


@pytest.mark.slow
def test_planned_episode_replays_exactly_on_a_fresh_env(planned):
    fresh = make_env(SHORT)
    for seed, episode in planned.items():
        assert episode.replay_matched
        replayed = replay_plan(fresh, seed, episode.actions)
        assert replayed.length == episode.length == len(episode.actions)
        assert replayed.outcome == episode.outcome == episode.final_outcome
        assert replayed.ret == episode.ret
        assert math.isclose(replayed.ret, episode.final_return, abs_tol=1e-9)
        assert PlanValue(episode.outcome, episode.ret, episode.length).key() >= (
            PlanValue(episode.predicted_outcome, episode.predicted_return, episode.predicted_length).key())
    fresh.close()


@pytest.mark.slow
def test_planner_is_deterministic_and_replans_like_every_step(short_env, planned):
    seed = SHORT_SEEDS[0]
    again = plan_episode(short_env, seed)
    assert again.actions == planned[seed].actions and again.ret == planned[seed].ret
    waits = plan_episode(short_env, 24)                   # FASTER, FASTER, SLOWER, SLOWER, FASTER: 3 searches
    assert waits.replans == 3
    assert plan_episode(short_env, 24, replan="every_step").actions == waits.actions


@pytest.mark.slow
def test_planner_is_at_least_as_good_as_every_constant_policy(planned):
    with make_runner(SHORT, 1) as runner:
        played = {action: play(constant_policy(action), runner, SHORT_SEEDS)
                  for action in (SLOWER, IDLE, FASTER)}
    for action in (SLOWER, IDLE, FASTER):
        for result in played[action]:
            episode = planned[result.env_seed]
            assert PlanValue(episode.outcome, episode.ret, episode.length).key() >= (
                PlanValue(result.outcome, result.ret, result.length).key())
    assert all(r.outcome == "collision" for r in played[FASTER])                 # what makes these seeds a test
    assert all(planned[s].outcome != "collision" for s in SHORT_SEEDS)


@pytest.mark.slow
def test_tree_search_matches_brute_force_on_a_short_env(short_env):
    seed = SHORT_SEEDS[1]
    steps = steps_until_truncation(short_env.unwrapped.config)
    expected, replayed = brute_force(short_env, seed, steps)
    short_env.reset(seed=seed)
    found = search_plans(short_env.unwrapped, steps, reward_bound(short_env.unwrapped.config), record_leaves=True)
    assert found.value.outcome == expected.outcome
    assert found.value.ret == pytest.approx(expected.ret, abs=1e-9)
    assert found.env_steps < replayed


@pytest.mark.slow
def test_the_rule_based_driver_plays_one_episode_per_seed_on_the_runner():
    with make_runner(SHORT, 2) as runner:
        results = play(RuleBasedDriver(SHORT).actions, runner, [3, 4, 5])
    assert [r.env_seed for r in results] == [3, 4, 5]
    for r in results:
        assert 1 <= r.length <= 5 and r.outcome in ("arrived", "timeout", "collision")
