"""Scene facts on hand-made observations with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from egolens.config import EnvConfig
from egolens.scene import scene_facts, segments_cross, time_to_collision

CFG = EnvConfig()


def observation(rows: list[tuple[float, float, float, float, float]], entities: int = 6) -> np.ndarray:
    """rows of (x, y, vx, vy, heading_rad) in metres and m/s -> one normalised obs [1, E, 7]."""
    obs = np.zeros((1, entities, 7), dtype=np.float64)
    for i, (x, y, vx, vy, h) in enumerate(rows):
        obs[0, i] = [1.0, x / 100, y / 100, vx / 20, vy / 20, np.cos(h), np.sin(h)]
    return obs


# The ego at (0, 0) drives along +x at 5 m/s. Remember y points down the screen: +y is its right.
SCENE = observation([
    (0, 0, 5, 0, 0),
    (20, 0, 0, 0, np.pi),          # 1: stopped 20 m straight ahead
    (-20, 0, 5, 0, 0),             # 2: 20 m behind at the same velocity
    (20, 20, 0, -5, -np.pi / 2),   # 3: right of the road ahead, driving towards the ego's lane
    (10, -10, 0, 0, 0),            # 4: ahead-left, parked
])


def test_distance_bearing_and_frame_coordinates():
    f = scene_facts(SCENE, CFG)
    np.testing.assert_allclose(f["distance"][0, 1:5], [20, 20, np.hypot(20, 20), np.hypot(10, 10)])
    np.testing.assert_allclose(f["bearing_deg"][0, 1:5], [0, 180, 45, -45])
    np.testing.assert_allclose(f["longitudinal"][0, 1:5], [20, -20, 20, 10])
    np.testing.assert_allclose(f["lateral"][0, 1:5], [0, 0, 20, -10], atol=1e-12)
    assert f["ahead"][0, 1:5].tolist() == [True, False, True, True]


def test_closing_speed_and_time_to_collision():
    f = scene_facts(SCENE, CFG, radius=5.0)
    np.testing.assert_allclose(f["closing_speed"][0, 1:3], [5.0, 0.0], atol=1e-12)
    assert f["ttc"][0, 1] == pytest.approx((20 - 5) / 5)        # gap 20 m closes to 5 m at 5 m/s
    assert f["ttc"][0, 2] == np.inf                              # same velocity: never
    # vehicle 3 relative motion (-5, -5) from (20, 20): heads straight at the ego
    assert f["ttc"][0, 3] == pytest.approx((np.hypot(20, 20) - 5) / np.hypot(5, 5))


def test_crossing_paths_within_the_horizon():
    f = scene_facts(SCENE, CFG, horizon=5.0)
    assert f["crossing"][0, 3]                                   # its path (20,20)->(20,-5) cuts (0,0)->(25,0)
    assert not f["crossing"][0, 4]                               # parked off the ego's path
    short = scene_facts(SCENE, CFG, horizon=3.0)                 # (20,20)->(20,5): stops short of the lane
    assert not short["crossing"][0, 3]


def test_absent_vehicles_and_the_ego_have_no_facts():
    f = scene_facts(SCENE, CFG)
    for name in ("distance", "bearing_deg", "ttc", "closing_speed"):
        assert np.isnan(f[name][0, 0]) and np.isnan(f[name][0, 5])
    assert not f["ahead"][0, 5] and not f["crossing"][0, 0]


def test_time_to_collision_matches_brute_force_simulation():
    rng = np.random.default_rng(0)
    rel = rng.uniform(-30, 30, (200, 2))
    rel_v = rng.uniform(-10, 10, (200, 2))
    ttc = time_to_collision(rel, rel_v, radius=4.0)
    t = np.linspace(0, 60, 600_001)
    for i in range(200):
        gaps = np.linalg.norm(rel[i] + rel_v[i] * t[:, None], axis=1)
        hits = np.nonzero(gaps <= 4.0)[0]
        expected = t[hits[0]] if hits.size else np.inf
        if np.isinf(expected):
            assert ttc[i] == np.inf or ttc[i] > 60
        else:
            assert ttc[i] == pytest.approx(expected, abs=2e-4)


def test_segments_cross_cases():
    p, p_end = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    assert segments_cross(p, p_end, np.array([5.0, -5.0]), np.array([5.0, 5.0]))
    assert not segments_cross(p, p_end, np.array([15.0, -5.0]), np.array([15.0, 5.0]))
    assert segments_cross(p, p_end, np.array([10.0, -5.0]), np.array([10.0, 0.0]))   # touching counts
    assert not segments_cross(p, p_end, np.array([0.0, 1.0]), np.array([10.0, 1.0]))   # parallel
