"""Probe targets on hand-made episodes with known answers: who comes close (followed by vehicle
id across shuffled rows, never across episodes), actions ahead (NaN past the end), sectors,
capped times to collision, per-step facts, and names that do not exist."""

from __future__ import annotations

import numpy as np
import pytest

from egolens.analysis.reading import probe_targets as pt
from egolens.config import EnvConfig
from tests.test_scene import SCENE

CFG = EnvConfig()


def test_comes_close_follows_the_vehicle_id_within_the_window_and_the_episode():
    # Two episodes of 5 steps, 3 rows. Vehicle 7 (episode 0) reaches the ego at step 3, shown in
    # row 1 before and row 2 then (shuffled rows); vehicle 8 never comes close. Episode 1's first
    # step has a vehicle 7 near the ego: another vehicle, which must not count for episode 0.
    episode = np.repeat([0, 1], 5)
    ids = np.array([[0, 7, 8]] * 3 + [[0, 8, 7]] + [[0, 7, 8]] + [[0, 7, -1]] * 5)
    positions = np.zeros((10, 3, 2))
    positions[:, 1] = positions[:, 2] = [50.0, 0.0]
    positions[3, 2] = [3.0, 0.0]                                       # vehicle 7 within 5 m at step 3
    positions[5, 1] = [1.0, 0.0]                                       # episode 1, step 0
    close = pt.comes_close(episode, ids, positions, steps=2, radius=5.0)
    expected = np.zeros((10, 3), dtype=bool)
    expected[1, 1] = expected[2, 1] = True                             # steps 1, 2 see step 3 within 2 steps
    expected[3, 2] = expected[5, 1] = True                             # within the radius now
    np.testing.assert_array_equal(close, expected)
    wide = pt.comes_close(episode, ids, positions, steps=3, radius=5.0)
    assert wide[0, 1] and not wide[4, 1] and not wide[0, 2]           # not at step 0 with 2, never vehicle 8


def test_comes_close_counts_a_pass_between_two_recorded_states():
    # Vehicle 1 drives past the ego 2 m to its side: 8 m behind at step 0, 8 m ahead at step 1.
    episode = np.zeros(3, dtype=int)
    ids = np.tile([0, 1], (3, 1))
    positions = np.zeros((3, 2, 2))
    positions[:, 1] = [[-8.0, 2.0], [8.0, 2.0], [24.0, 2.0]]
    np.testing.assert_array_equal(pt.comes_close(episode, ids, positions, steps=1, radius=5.0)[:, 1],
                                  [True, False, False])
    np.testing.assert_array_equal(pt.comes_close(episode, ids, positions, steps=1, radius=1.9)[:, 1],
                                  [False, False, False])
    start = np.array([[-8.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    end = np.array([[8.0, 2.0], [3.0, 4.0], [3.0, 4.0]])
    np.testing.assert_allclose(pt.closest_approach(start, end), [2.0, 5.0, 5.0])


# The ego's left turn from the south (o0) to the west (o1), against every other movement.
LEFT_TURN_CONFLICTS = {
    (1, 0): False,   # from the west, right turn into the south exit: hugs its own corner
    (1, 2): True,    # from the west, left turn
    (1, 3): True,    # from the west, straight across
    (2, 0): True,    # oncoming straight traffic
    (2, 1): True,    # oncoming right turn into the ego's exit (merge)
    (2, 3): False,   # oncoming left turn: the two left turns pass in front of each other
    (3, 0): True,    # from the east, left turn
    (3, 1): True,    # from the east, straight into the ego's exit (merge)
    (3, 2): False,   # from the east, right turn
    (0, 3): False,   # behind the ego from its own entry
}


def test_routes_cross_a_left_turn_as_the_junction_geometry_says():
    movements = np.array(list(LEFT_TURN_CONFLICTS))
    crosses = pt.routes_cross(movements[:, 0], movements[:, 1], 0, 1)
    assert dict(zip(LEFT_TURN_CONFLICTS, crosses.tolist())) == LEFT_TURN_CONFLICTS
    # the ego going straight north (0 -> 2): the west's straight crosses, its right turn does not
    np.testing.assert_array_equal(pt.routes_cross(np.array([1, 1, 3, -1]), np.array([3, 0, 2, 2]), 0, 2),
                                  [True, False, True, False])
    # symmetric under rotating the whole junction
    rotated = pt.routes_cross((movements[:, 0] + 1) % 4, (movements[:, 1] + 1) % 4, 1, 2)
    np.testing.assert_array_equal(rotated, crosses)


def test_action_ahead_is_nan_past_the_episode_end():
    episode = np.array([0, 0, 0, 1, 1])
    action = np.array([2, 1, 0, 2, 0])
    np.testing.assert_array_equal(pt.action_ahead(action, episode, 1), [1, 0, np.nan, 0, np.nan])
    np.testing.assert_array_equal(pt.action_ahead(action, episode, 2), [0, np.nan, np.nan, np.nan, np.nan])
    assert np.isnan(pt.action_ahead(action, episode, 9)).all()


def test_bearing_sectors_and_capped_ttc():
    bearings = np.array([0, 44, 46, 90, 134, 136, 180, -136, -90, -44, np.nan])
    codes = pt.bearing_sector(bearings)
    names = [pt.SECTORS[int(c)] for c in codes[:-1]]
    assert names == ["ahead", "ahead", "right", "right", "right", "behind", "behind", "behind", "left", "ahead"]
    assert np.isnan(codes[-1])
    np.testing.assert_array_equal(pt.capped_ttc(np.array([1.0, np.inf, 30.0, np.nan]), 20.0), [1, 20, 20, np.nan])


def test_vehicle_and_step_targets_of_a_hand_made_scene():
    # SCENE (tests/test_scene.py): the ego at (0, 0) along +x at 5 m/s; vehicle 3 comes from the right
    # across its path; vehicle 1 is stopped 20 m ahead (ttc (20 - 5) / 5 = 3 s).
    obs = np.repeat(SCENE, 2, axis=0)
    episode, step = np.array([0, 0]), np.array([0, 1])
    ids = np.tile(np.arange(6), (2, 1))
    kin_positions = np.stack([obs[..., 1] * 100, obs[..., 2] * 100], axis=-1)
    vehicles = pt.vehicle_targets(obs, episode, ids, kin_positions, CFG, horizon=5.0, radius=5.0, min_ego_speed=4.5,
                                  ttc_cap=20.0, close_steps=3)
    assert list(vehicles["row"][:4]) == [1, 2, 3, 4] and len(vehicles) == 8
    first = vehicles[vehicles["step_index"] == 0].set_index("row")
    assert first.loc[1, "distance"] == pytest.approx(20.0)
    assert first.loc[1, "ttc"] == pytest.approx(3.0)
    assert first.loc[2, "ttc"] == 20.0                                  # never: capped
    assert [pt.SECTORS[int(s)] for s in first["bearing_sector"]] == ["ahead", "behind", "right", "ahead"]
    assert first.loc[3, "crossing"] == 1 and first.loc[1, "crossing"] == 0
    assert (vehicles["comes_close"] == 0).all()
    assert "route_crosses" not in vehicles
    routes = np.tile(np.array([[0, 1], [2, 0], [3, 2], [1, 3], [-1, 2], [0, 0]]), (2, 1, 1))
    with_routes = pt.vehicle_targets(obs, episode, ids, kin_positions, CFG, horizon=5.0, radius=5.0,
                                     min_ego_speed=4.5, ttc_cap=20.0, close_steps=3, routes=routes)
    np.testing.assert_array_equal(with_routes["route_crosses"][:4], [1.0, 0.0, 1.0, np.nan])
    steps = pt.step_targets(obs, episode, step, np.array([0, 2]), np.array(["arrived", "arrived"]), CFG,
                            horizon=5.0, radius=5.0, min_ego_speed=4.5, threat_ttc=3.0)
    np.testing.assert_allclose(steps["ego_speed"], 5.0)
    np.testing.assert_allclose(steps["junction_distance"], 0.0)
    np.testing.assert_array_equal(steps["action_next"], [2, np.nan])
    assert list(steps["outcome"]) == [pt.OUTCOMES.index("arrived")] * 2


def test_outcome_per_step_from_the_last_steps_flags():
    episode = np.array([0, 0, 0, 1, 1, 2])
    crashed = np.array([False, False, True, False, False, False])
    arrived = np.array([False, False, False, False, False, True])
    assert list(pt.outcome_per_step(episode, crashed, arrived)) == ["collision"] * 3 + ["timeout"] * 2 + ["arrived"]


def test_crossing_threat_needs_both_crossing_and_a_short_ttc():
    crossing = np.array([[False, True, True], [False, True, False], [False, False, True]])
    ttc = np.array([[np.nan, 5.0, 2.0], [np.nan, 4.0, 1.0], [np.nan, np.nan, np.inf]])
    np.testing.assert_array_equal(pt.crossing_threat(crossing, ttc, 3.0), [True, False, False])


def test_bad_names_and_orders_fail_naming_them():
    with pytest.raises(KeyError, match="no probe target named 'route'"):
        pt.target("route")
    assert pt.target("comes_close").kind == "binary"
    with pytest.raises(ValueError, match=r"unknown episode outcomes \['crash'\]"):
        pt.outcome_codes(np.array(["arrived", "crash"]))
    with pytest.raises(ValueError, match="contiguously"):
        pt.check_ordered(np.array([0, 1, 0]), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="0, 1, 2"):
        pt.check_ordered(np.array([0, 0, 1]), np.array([0, 2, 0]))
    pt.check_ordered(np.array([3, 3, 1]), np.array([0, 1, 0]))
