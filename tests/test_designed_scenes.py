"""Designed scenes: placement in the real simulator (position, speed, arrival time, route visibility),
the outcome of going now, the clairvoyant choice, and a hand-made network whose braking threshold
the arrival-time sweep recovers.

The geometry used as the independent reference is highway-env's intersection road (lane width 4 m):
the west approach lane runs along y = 2 towards +x, and the ego's left turn (south → west) is an arc
of radius 13 m centred at (−11, 11), so the two meet at x = −11 + √(13² − 9²), y = 2. The ego's
approach lane runs from (2, 111) towards −y.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from egolens.analysis.intervening.designed_scenes import (
    SceneSpec,
    arrival_times_for_gaps,
    build_scene,
    evaluate_scene,
    first_crossing,
    scene_config,
    sweep_arrival_times,
    switch_points,
)
from egolens.config import EnvConfig
from egolens.env import make_env
from egolens.policies import SLOWER
from egolens.scene import denormalize
from tests.conftest import tiny_net

CFG = EnvConfig()
CONFLICT_X = -11.0 + math.sqrt(13.0**2 - 9.0**2)
"""x of the point where the west approach (y = 2) meets the ego's left turn."""
EGO_START_Y = 111.0


class BrakeBelowThreshold(nn.Module):
    """A hand-made Q-network: SLOWER exactly when the conflicting vehicle reaches the conflict point
    within `threshold` seconds, else FASTER.

    It reads each present other vehicle's observed x and vx (de-normalised from features_range
    [-100, 100] m and [-20, 20] m/s), takes t = (conflict_x − x) / vx, the earliest over vehicles, and
    returns Q = (threshold − t, −100, 0) for (SLOWER, IDLE, FASTER).
    """

    def __init__(self, conflict_x: float, threshold: float) -> None:
        super().__init__()
        self.conflict_x, self.threshold = conflict_x, threshold

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        others = obs[:, 1:]
        x, vx = 100.0 * others[..., 1], 20.0 * others[..., 3]
        t = (self.conflict_x - x) / vx
        t = torch.where(others[..., 0] >= 0.5, t, torch.full_like(t, math.inf)).min(dim=1).values
        q_slower = torch.clamp(self.threshold - t, min=-1e6)
        return torch.stack([q_slower, torch.full_like(t, -100.0), torch.zeros_like(t)], dim=1)


@pytest.fixture(scope="module")
def env():
    env = make_env(scene_config(CFG))
    yield env
    env.close()


# ------------------------------------------------------------------------------------ no simulator


def test_first_crossing_of_two_lines_with_known_distances():
    ego_pts = np.array([[0.0, -5.0], [0.0, 0.0], [0.0, 5.0]])       # up the y axis, distances 0, 5, 10
    other_pts = np.array([[-3.0, 1.0], [1.0, 1.0], [5.0, 1.0]])     # along y = 1, distances 0, 4, 8
    conflict = first_crossing((ego_pts, np.array([0.0, 5.0, 10.0])), (other_pts, np.array([0.0, 4.0, 8.0])))
    assert np.allclose(conflict.point, [0.0, 1.0])
    assert conflict.ego_distance == pytest.approx(6.0)
    assert conflict.other_distance == pytest.approx(3.0)
    with pytest.raises(ValueError, match="never meet"):
        first_crossing((ego_pts, np.array([0.0, 5.0, 10.0])), (other_pts + [10.0, 0.0], np.array([0.0, 4.0, 8.0])))


def test_first_crossing_takes_the_first_meeting_along_the_other_route():
    ego_pts = np.array([[0.0, 0.0], [10.0, 0.0]])
    zigzag = np.array([[8.0, -1.0], [8.0, 1.0], [2.0, 1.0], [2.0, -1.0]])   # crosses at x = 8, then x = 2
    conflict = first_crossing((ego_pts, np.array([0.0, 10.0])), (zigzag, np.array([0.0, 2.0, 8.0, 10.0])))
    assert np.allclose(conflict.point, [8.0, 0.0])
    assert conflict.other_distance == pytest.approx(1.0)


def test_switch_points_bracket_each_change():
    table = pd.DataFrame({"arrival_time": [3.0, 1.0, 2.0, 4.0],
                          "greedy_action": ["FASTER", "SLOWER", "SLOWER", "IDLE"]})
    switches = switch_points(table)
    assert switches.to_dict("records") == [
        {"before": 2.0, "after": 3.0, "from_value": "SLOWER", "to_value": "FASTER"},
        {"before": 3.0, "after": 4.0, "from_value": "FASTER", "to_value": "IDLE"},
    ]
    assert switch_points(table.assign(greedy_action="SLOWER")).empty


# ------------------------------------------------------------------------------ placement (quick)


def test_gaps_are_counted_from_the_ego_reaching_the_conflict_point():
    """The ego's route to the conflict point: the rest of its 100 m approach lane, then the left-turn
    arc of radius 13 m up to the angle whose sine is 9 / 13."""
    spec = SceneSpec(arrival_time=0.0, ego_longitudinal=70.0, ego_speed=4.5)
    ego_time = (100.0 - 70.0 + 13.0 * math.asin(9.0 / 13.0)) / 4.5
    assert arrival_times_for_gaps(CFG, spec, [0.0, 1.5]) == pytest.approx([ego_time, ego_time + 1.5], abs=1e-4)


@pytest.mark.parametrize("arrival_time", [3.0, -0.5])
def test_placed_vehicles_are_observed_where_and_as_fast_as_asked(env, arrival_time):
    spec = SceneSpec(arrival_time=arrival_time, ego_longitudinal=80.0, ego_speed=9.0, other_speed=8.0)
    scene = build_scene(CFG, spec, env)
    assert scene.conflict.point == pytest.approx([CONFLICT_X, 2.0], abs=1e-4)
    k = denormalize(scene.obs[None].astype(np.float64), CFG)
    assert k.present[0].sum() == 2 and scene.other_row is not None
    row = scene.other_row
    assert (k.x[0, 0], k.y[0, 0], k.vx[0, 0], k.vy[0, 0]) == pytest.approx((2.0, EGO_START_Y - 80.0, 0.0, -9.0),
                                                                          abs=1e-4)
    assert (k.sin_h[0, 0]) == pytest.approx(-1.0)
    assert (k.x[0, row], k.y[0, row], k.vx[0, row], k.vy[0, row]) == pytest.approx(
        (CONFLICT_X - 8.0 * arrival_time, 2.0, 8.0, 0.0), abs=1e-4)
    assert k.cos_h[0, row] == pytest.approx(1.0)
    # the env's own observation type sees the same vehicles (its row order is drawn from the env's RNG)
    again = env.unwrapped.observation_type.observe()
    assert sorted(map(tuple, again.tolist())) == sorted(map(tuple, scene.obs.tolist()))
    assert env.unwrapped.config["spawn_probability"] == 0.0 and len(env.unwrapped.road.vehicles) == 2


def test_the_same_spec_gives_the_same_scene(env):
    spec = SceneSpec(arrival_time=2.0)
    first = build_scene(CFG, spec, env).obs.copy()
    build_scene(CFG, SceneSpec(arrival_time=5.0), env)
    assert np.array_equal(build_scene(CFG, spec, env).obs, first)


def test_route_visibility_sets_the_destination_features():
    cfg = EnvConfig(features=["presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "cos_d", "sin_d"],
                    observe_intentions=True)
    env = make_env(scene_config(cfg))
    try:
        seen = build_scene(cfg, SceneSpec(arrival_time=3.0, visible=True), env)
        row = seen.other_row
        assert seen.obs[row, 7:] == pytest.approx([1.0, 0.0], abs=1e-6)   # heading for the east exit, +x
        hidden = build_scene(cfg, SceneSpec(arrival_time=3.0, visible=False), env)
        assert hidden.obs[hidden.other_row, 7:].tolist() == [0.0, 0.0]
        assert hidden.obs[0, 7:].tolist() == seen.obs[0, 7:].tolist() != [0.0, 0.0]   # the ego's own stays
    finally:
        env.close()
    with pytest.raises(ValueError, match="cos_d"):
        build_scene(CFG, SceneSpec(arrival_time=3.0, visible=True))


def test_unplaceable_specs_fail_naming_the_allowed_range(env):
    with pytest.raises(ValueError, match=r"arrival_time = 30.0 s .* allowed: \["):
        build_scene(CFG, SceneSpec(arrival_time=30.0), env)
    with pytest.raises(ValueError, match="other_speed"):
        build_scene(CFG, SceneSpec(arrival_time=1.0, other_speed=12.0), env)
    with pytest.raises(ValueError, match="another approach"):
        build_scene(CFG, SceneSpec(arrival_time=1.0, approach="o0"), env)
    with pytest.raises(ValueError, match="scene_config"):
        build_scene(CFG, SceneSpec(arrival_time=1.0), make_env(CFG))


def test_attention_on_the_conflicting_vehicle_is_what_the_ego_does_not_keep(env):
    net = tiny_net(heads=2, seed=3)
    scene = build_scene(CFG, SceneSpec(arrival_time=2.0), env)
    row = evaluate_scene(scene, net, clairvoyant=False, going=False)
    obs = torch.as_tensor(scene.obs)[None]
    with torch.no_grad():
        q, pattern = net(obs)[0], net.get_attention_matrix(obs)[0, :, 0]
    for h in range(2):   # two vehicles present: the other gets what the ego's own entry does not
        assert row[f"attention_h{h}"] == pytest.approx(1.0 - float(pattern[h, 0]), abs=1e-6)
    assert row["q_slower_minus_faster"] == pytest.approx(float(q[0] - q[2]), abs=1e-6)
    assert row["greedy_action"] == ("SLOWER", "IDLE", "FASTER")[int(q.argmax())]


# ------------------------------------------------------------------------------ simulator-heavy


@pytest.mark.slow
def test_arrival_time_at_the_conflict_point_is_the_requested_one(env):
    """Step the env (the ego braking far before the junction) and time the other vehicle's crossing."""
    scene = build_scene(CFG, SceneSpec(arrival_time=3.5, ego_longitudinal=20.0, other_speed=8.0), env)
    xs, speeds = [scene.other.position[0]], [scene.other.speed]
    for _ in range(5):
        env.unwrapped.step(SLOWER)
        xs.append(scene.other.position[0])
        speeds.append(scene.other.speed)
    assert speeds == pytest.approx([8.0] * 6, abs=1e-9)
    k = int(np.flatnonzero(np.diff(np.sign(np.array(xs) - CONFLICT_X)))[0])  # crossed during step k + 1
    crossing = k + (CONFLICT_X - xs[k]) / (xs[k + 1] - xs[k])
    assert crossing == pytest.approx(3.5, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(("gap", "expected"), [(0.0, "collision"), (6.0, "arrived"), (-3.0, "arrived")])
def test_going_now_collides_at_zero_gap_and_arrives_with_a_large_one(env, gap, expected):
    (arrival,) = arrival_times_for_gaps(CFG, SceneSpec(arrival_time=0.0), [gap])
    scene = build_scene(CFG, SceneSpec(arrival_time=float(arrival)), env)
    row = evaluate_scene(scene, BrakeBelowThreshold(CONFLICT_X, 3.0), clairvoyant=False)
    assert row["gap"] == pytest.approx(gap)
    assert row["go_outcome"] == expected


@pytest.mark.slow
def test_the_clairvoyant_planner_waits_at_zero_gap_and_goes_with_a_large_one(env):
    table = sweep_arrival_times(CFG, BrakeBelowThreshold(CONFLICT_X, 3.0), SceneSpec(arrival_time=0.0),
                                arrival_times_for_gaps(CFG, SceneSpec(arrival_time=0.0), [0.0, 6.0]))
    zero, large = table.to_dict("records")
    assert zero["go_outcome"] == "collision"
    assert zero["clairvoyant_outcome"] == "arrived" and zero["clairvoyant_wait"] > 0
    assert large["clairvoyant_action"] == "FASTER" and large["clairvoyant_wait"] == 0
    assert large["clairvoyant_plan"] == "F" * large["go_steps"]
    assert large["clairvoyant_return"] == pytest.approx(large["go_return"])


@pytest.mark.slow
def test_the_sweep_recovers_a_hand_made_braking_threshold():
    """The issue's test: a network that brakes exactly when the arrival gap is below T switches there."""
    threshold = 3.1
    times = np.round(np.arange(1.0, 5.01, 0.4), 2)
    table = sweep_arrival_times(CFG, BrakeBelowThreshold(CONFLICT_X, threshold), SceneSpec(arrival_time=0.0), times,
                                clairvoyant=False, going=False)
    assert table["arrival_time"].tolist() == pytest.approx(times.tolist())
    assert table["observed"].all()
    assert table["q_slower_minus_faster"].to_numpy() == pytest.approx(threshold - times, abs=1e-3)
    expected = np.where(times < threshold, "SLOWER", "FASTER")
    assert table["greedy_action"].tolist() == expected.tolist()
    switches = switch_points(table)
    assert len(switches) == 1
    switch = switches.iloc[0]
    assert (switch.from_value, switch.to_value) == ("SLOWER", "FASTER")
    assert switch.before < threshold < switch.after and switch.after - switch.before == pytest.approx(0.4)
