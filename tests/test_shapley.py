"""Vehicle Shapley values: efficiency, null players, and a planted vehicle every method finds."""

from __future__ import annotations

import torch

from egolens.analysis.attribution.attribution_tables import vehicle_attribution
from egolens.analysis.attribution.baselines import others_zeroed
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.schemes import FixedGrid
from egolens.analysis.attribution.shapley import shapley_vehicles
from egolens.vocabulary import present_others
from tests.attribution_nets import VX, PlantedVx3, planted_obs
from tests.conftest import random_obs, tiny_net


def test_ig_shapley_and_row_patching_all_point_at_the_planted_vehicle_3():
    net = PlantedVx3()
    obs = planted_obs()
    attr = integrated_gradients(net, obs, others_zeroed(obs), 0, FixedGrid(32)).attr
    outside = attr.clone()
    outside[:, 3, VX] = 0
    assert outside.abs().max() == 0 and (attr[:, 3, VX] > 0).all()
    assert (vehicle_attribution(attr).abs().argmax(1) == 3).all()

    phi = shapley_vehicles(net, obs, 0, n_samples=4)
    without_3 = obs.clone()
    without_3[:, 3] = 0
    torch.testing.assert_close(phi[:, 3], net(obs)[:, 0] - net(without_3)[:, 0])
    phi[:, 3] = 0
    assert phi.abs().max() == 0

    corrupted = planted_obs(seed=7)
    corrupted[:, 3, VX] = -corrupted[:, 3, VX]
    effects = torch.zeros(obs.shape[:2])
    for j in range(1, 15):
        patched = obs.clone()
        patched[:, j] = corrupted[:, j]
        effects[:, j] = (net(patched) - net(obs)).abs().sum(1)
    assert (effects[:, 3] > 0.5).all()
    effects[:, 3] = 0
    assert effects.max() == 0


def test_shapley_values_add_up_to_q_minus_q_of_the_ego_alone_and_skip_ego_and_absent_rows():
    net = tiny_net(seed=2)
    obs = random_obs(3, seed=8)
    alone = torch.zeros_like(obs)
    alone[:, 0] = obs[:, 0]
    for advantage in (False, True):
        phi = shapley_vehicles(net, obs, torch.tensor([0, 2, 1]), n_samples=3, advantage=advantage)
        q, q_alone = net(obs).detach(), net(alone).detach()
        if advantage:
            q, q_alone = q - q.mean(1, keepdim=True), q_alone - q_alone.mean(1, keepdim=True)
        expected = q[[0, 1, 2], [0, 2, 1]] - q_alone[[0, 1, 2], [0, 2, 1]]
        torch.testing.assert_close(phi.sum(1), expected, rtol=1e-4, atol=1e-6)
        assert (phi[:, 0] == 0).all() and (phi[obs[..., 0] == 0] == 0).all()
        assert (phi[present_others(obs)] != 0).all()
