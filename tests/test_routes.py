"""Routes read from the simulator: side numbers from node names, a replay that keeps the recorded
observations, the ego's known route, every observed vehicle's route, and the rollout's probe file
(its rows line up with the vehicles table, its targets follow from the routes)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from egolens.analysis.reading import probe_targets as pt
from egolens.analysis_config import SceneConfig
from egolens.config import EnvConfig
from egolens.env import make_env
from egolens.model import EgoAttentionNetwork
from egolens.play import play
from egolens.probes_config import ProbeTargetsConfig
from egolens.rollout import probe_arrays, rollout_arrays, vehicles_table
from egolens.routes import UNKNOWN, entry_side, exit_side, node_side, replay_routes
from egolens.runner import EnvRunner

CFG = EnvConfig()


def test_sides_from_node_names_and_lanes():
    assert node_side("o3", ("o",)) == 3 and node_side("ir2", ("ir",)) == 2 and node_side("il1", ("o",)) == UNKNOWN
    approaching = SimpleNamespace(lane_index=("o2", "ir2", 0), route=[("o2", "ir2", 0), ("ir2", "il0", None),
                                                                       ("il0", "o0", None)])
    inside = SimpleNamespace(lane_index=("ir1", "il3", 0), route=[("ir1", "il3", 0), ("il3", "o3", None)])
    leaving = SimpleNamespace(lane_index=("il3", "o3", 0), route=[])
    assert (entry_side(approaching), exit_side(approaching)) == (2, 0)
    assert (entry_side(inside), exit_side(inside)) == (1, 3)
    assert (entry_side(leaving), exit_side(leaving)) == (UNKNOWN, 3)        # its entry is remembered, not read


@pytest.fixture(scope="module")
def recorded():
    torch.manual_seed(0)
    net = EgoAttentionNetwork().eval()
    with EnvRunner([partial(make_env, CFG)]) as runner:
        episodes = play(net, runner, [21, 22], record="steps")
        routes = runner.map(replay_routes, [(e.env_seed, e.action, e.obs) for e in episodes])
    return net, episodes, routes


def test_replay_reads_every_observed_vehicles_route_and_the_egos(recorded):
    _, episodes, routes = recorded
    for episode, route in zip(episodes, routes):
        assert route.shape == (episode.length, CFG.vehicles_count, 2)
        np.testing.assert_array_equal(route[:, 0], np.tile([0, 1], (episode.length, 1)))   # o0 -> o1 (destination)
        present = episode.vehicle_id >= 0
        assert (route[present] >= 0).all() and (route[present][:, 0] != route[present][:, 1]).all()
        assert (route[~present] == UNKNOWN).all()
        for vid in np.unique(episode.vehicle_id[present]):              # a vehicle's route never changes
            assert len(np.unique(route[episode.vehicle_id == vid], axis=0)) == 1


def test_a_replay_that_departs_from_the_recording_raises(recorded):
    _, episodes, _ = recorded
    episode = episodes[0]
    env = make_env(CFG)
    with pytest.raises(RuntimeError, match="departs from the recording at step 0"):
        replay_routes(env, (episode.env_seed + 1, episode.action, episode.obs))


def test_probe_file_rows_follow_the_vehicles_table_and_the_routes(recorded):
    net, episodes, routes = recorded
    arrays = rollout_arrays(episodes, net)
    scene, targets = SceneConfig(), ProbeTargetsConfig()
    probe = probe_arrays(episodes, arrays, routes, CFG, scene, targets)
    vehicles = vehicles_table(arrays, CFG, scene.horizon, scene.collision_radius, scene.min_ego_speed)
    np.testing.assert_array_equal(probe["vehicle.vehicle_id"], vehicles["vehicle_id"])
    np.testing.assert_allclose(probe["vehicle.distance"], vehicles["distance"])
    step_index, row = probe["vehicle.step_index"], probe["vehicle.row"]
    route = probe["routes"][step_index, row]
    ego = probe["routes"][step_index, 0]
    np.testing.assert_array_equal(probe["vehicle.route_crosses"],
                                  pt.routes_cross(route[:, 0], route[:, 1], ego[:, 0], ego[:, 1]).astype(float))
    np.testing.assert_array_equal(probe["vehicle.turn"], pt.turn(route[:, 0], route[:, 1]))
    assert len(probe["step.action"]) == len(arrays["action"])
    outcome = np.concatenate([np.full(e.length, pt.OUTCOMES.index(e.outcome)) for e in episodes])
    np.testing.assert_array_equal(probe["step.outcome"], outcome)
