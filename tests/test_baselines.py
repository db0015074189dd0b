"""Baselines: what they keep, what they replace, and where a path attribution can be non-zero."""

from __future__ import annotations

import torch

from egolens.analysis.attribution.attribution_tables import chosen
from egolens.analysis.attribution.baselines import changed_entries, others_zeroed, typical_scene
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.schemes import FixedGrid
from tests.attribution_nets import LinearQ
from tests.conftest import random_obs


def test_typical_scene_puts_the_pooled_mean_vehicle_in_every_present_row_and_keeps_presence():
    obs, ref = random_obs(3, seed=4), random_obs(10, seed=5)
    rows = [ref[n, j] for n in range(10) for j in range(1, 15) if ref[n, j, 0] >= 0.5]
    mean = torch.stack(rows).mean(0)
    mean[5:] = mean[5:] / mean[5:].norm()
    baseline = typical_scene(obs, ref)
    for b in range(3):
        torch.testing.assert_close(baseline[b, 0], obs[b, 0])
        for j in range(1, 15):
            if obs[b, j, 0] >= 0.5:
                torch.testing.assert_close(baseline[b, j], torch.cat([obs[b, j, :1], mean[1:]]))
            else:
                assert (baseline[b, j] == 0).all()
    assert baseline[:, 0, 0].eq(1).all()
    moved_ego = typical_scene(obs, ref, replace_ego=True)
    ego_mean = ref[:, 0].mean(0)
    torch.testing.assert_close(moved_ego[:, 0, 1:5], ego_mean[1:5].expand(3, 4))
    torch.testing.assert_close(moved_ego[:, 0, 5:].norm(dim=-1), torch.ones(3))


def test_chosen_picks_each_steps_action_and_changed_entries_mark_where_path_attributions_can_live():
    per_action = torch.randn(3, 4, 15, 7, generator=torch.Generator().manual_seed(0))
    action = torch.tensor([2, 0, 1, 2])
    picked = chosen(per_action, action)
    for b, a in enumerate(action.tolist()):
        assert torch.equal(picked[b], per_action[a, b])
    assert torch.equal(chosen(per_action, 1), per_action[1])

    net, obs = LinearQ(), random_obs(4, seed=2)
    baseline = others_zeroed(obs)
    moved = changed_entries(obs, baseline)
    assert not moved[:, 0].any() and not moved[..., 0].any()
    assert torch.equal(moved[:, 1:, 1:], (obs[:, 1:, 1:] != 0))
    attr = integrated_gradients(net, obs, baseline, 0, FixedGrid(4)).attr
    assert (attr[~moved] == 0).all()
