"""Integrated gradients by each integration scheme (captum's fixed grid, kink cut on one grid,
refined kink cut) checked against quantities computed independently on tiny hand-made networks."""

from __future__ import annotations

import torch
from torch import nn

from egolens.analysis.attribution.baselines import ego_alone, others_zeroed, typical_scene
from egolens.analysis.attribution.faithfulness import completeness_error
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.schemes import FixedGrid, KinkCut
from egolens.vocabulary import absent_mask
from tests.attribution_nets import VX, LinearQ, planted_obs
from tests.conftest import random_obs, tiny_net


def test_ig_of_a_linear_net_is_input_minus_baseline_times_weight():
    net = LinearQ()
    obs = random_obs(5, seed=1)
    target = torch.tensor([0, 1, 2, 1, 0])
    for baseline in (others_zeroed(obs), typical_scene(obs, random_obs(20, seed=2), replace_ego=True)):
        ig = integrated_gradients(net, obs, baseline, target, FixedGrid(4))
        attr, delta = ig.attr, ig.delta
        expected = (obs - baseline) * net.weight.detach()[target]
        torch.testing.assert_close(attr, expected, rtol=1e-5, atol=1e-6)
        assert delta.abs().max() < 1e-4
        adv = integrated_gradients(net, obs, baseline, target, FixedGrid(4), advantage=True).attr
        centred = net.weight.detach() - net.weight.detach().mean(0)
        torch.testing.assert_close(adv, (obs - baseline) * centred[target], rtol=1e-5, atol=1e-6)


def test_ig_completeness_holds_with_the_fixed_mask_and_breaks_when_the_mask_is_recomputed():
    net = tiny_net()
    obs = random_obs(4, seed=1)
    baseline = ego_alone(obs)          # presence goes 0 -> 1 along the path: a recomputed mask flips at 0.5
    ig = integrated_gradients(net, obs, baseline, 0, FixedGrid(128))
    fixed, delta = ig.attr, ig.delta
    err_fixed = completeness_error(net, obs, baseline, fixed, 0)
    assert err_fixed.max() < 0.01
    # captum's delta is the same gap, computed its own way
    mask = absent_mask(obs)
    delta_q = net(obs, mask)[:, 0] - net(baseline, mask)[:, 0]
    torch.testing.assert_close(delta.abs() / delta_q.abs().detach(), err_fixed, rtol=1e-3, atol=1e-4)

    flipping = integrated_gradients(net, obs, baseline, 0, FixedGrid(128), fix_mask=False).attr
    err_flipping = completeness_error(net, obs, baseline, flipping, 0, fix_mask=False)
    assert err_flipping.mean() > 0.05
    assert err_flipping.mean() > 10 * err_fixed.mean()


def test_ig_of_the_advantage_is_the_q_attribution_minus_its_mean_over_actions_and_batching_changes_nothing():
    net = tiny_net(seed=1)
    obs = random_obs(3, seed=3)
    baseline = others_zeroed(obs)
    per_action = torch.stack([integrated_gradients(net, obs, baseline, a, FixedGrid(64)).attr for a in range(3)])
    adv = integrated_gradients(net, obs, baseline, 2, FixedGrid(64), advantage=True).attr
    torch.testing.assert_close(adv, per_action[2] - per_action.mean(0), rtol=1e-4, atol=1e-6)
    small_batches = integrated_gradients(net, obs, baseline, 2, FixedGrid(64, internal_batch_size=6),
                                         advantage=True).attr
    torch.testing.assert_close(small_batches, adv, rtol=1e-5, atol=1e-7)
    assert (completeness_error(net, obs, baseline, adv, 2, advantage=True) < 0.01).all()
    # others_zeroed keeps presence and the ego row: nothing to attribute there
    assert (adv[:, 0] == 0).all() and (adv[..., 0] == 0).all()


class KinkedQ(nn.Module):
    """Q_a = w_a·relu(vx₃ − c): one ReLU kink at vx₃ = c, so a path's gradient jumps once.

    With baseline b and observation x, IG of vx₃ is exact: w_a·(x − c)⁺ − w_a·(b − c)⁺, and every
    other feature gets 0."""

    def __init__(self, c: float = 0.2137) -> None:
        super().__init__()
        self.c = c
        self.relu = nn.ReLU()
        self.register_buffer("w", torch.tensor([1.0, -0.5, 2.0]))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.relu(obs[:, 3, VX] - self.c)[:, None] * self.w


def test_refined_kink_cut_ig_is_exact_on_a_kinked_net_that_a_fixed_grid_misses():
    net = KinkedQ()
    obs = planted_obs(6, seed=2)
    baseline = others_zeroed(obs)                     # vx₃ goes 0 -> [0.3, 0.9]: every path crosses the kink
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    exact = net.w[target] * (torch.relu(obs[:, 3, VX] - net.c) - torch.relu(baseline[:, 3, VX] - net.c))

    coarse = integrated_gradients(net, obs, baseline, target, FixedGrid(8)).attr
    assert (completeness_error(net, obs, baseline, coarse, target) > 0.01).any()

    refined = integrated_gradients(net, obs, baseline, target, KinkCut(grid=16, max_grid=256))
    torch.testing.assert_close(refined.attr[:, 3, VX], exact, rtol=1e-5, atol=1e-6)
    assert (refined.grid == 16).all()                 # the kink was found at once: nothing refined
    assert (completeness_error(net, obs, baseline, refined.attr, target) < 1e-5).all()
    others = refined.attr.clone()
    others[:, 3, VX] = 0
    assert others.abs().max() == 0


def test_kink_cut_ig_on_one_grid_equals_captum_ig_on_a_fine_grid_and_is_complete():
    net = tiny_net(seed=5)
    obs = random_obs(4, seed=11)
    baseline = typical_scene(obs, random_obs(20, seed=12), replace_ego=True)
    piecewise = integrated_gradients(net, obs, baseline, 2, KinkCut(grid=256, max_grid=None, segment_points=2))
    attr, delta, points = piecewise.attr, piecewise.delta, piecewise.points
    fine = integrated_gradients(net, obs, baseline, 2, FixedGrid(20000, "riemann_middle")).attr
    torch.testing.assert_close(attr, fine, rtol=1e-3, atol=2e-5)
    assert (delta.abs() < 1e-4).all()
    assert (points >= 2 * 16).all()                   # at least the 16 uniform pieces, 2 points each


def test_kink_cut_ig_pieces_add_up_whatever_the_grid():
    # IG is additive along a straight path: cutting it anywhere (any grid) changes only the
    # quadrature error, which stays small because each piece is smooth
    net = tiny_net(seed=6)
    obs = random_obs(3, seed=13)
    baseline = others_zeroed(obs)
    a = integrated_gradients(net, obs, baseline, 0, KinkCut(grid=64, max_grid=None, segment_points=4)).attr
    b = integrated_gradients(net, obs, baseline, 0, KinkCut(grid=1024, max_grid=None, segment_points=4)).attr
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_refined_kink_cut_ig_of_the_advantage_explains_the_advantage():
    net = tiny_net(seed=7)
    obs = random_obs(5, seed=14)
    baseline = others_zeroed(obs)
    refined = integrated_gradients(net, obs, baseline, 1, KinkCut(grid=64), advantage=True)
    assert (completeness_error(net, obs, baseline, refined.attr, 1, advantage=True) < 1e-3).all()
