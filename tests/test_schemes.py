"""Integration schemes of the path methods: checked when made, and each one's contract (a fixed grid
locates no kinks; a kink cut holds the mask fixed and runs each step on its grid)."""

from __future__ import annotations

import pytest
import torch

from egolens.analysis.attribution.baselines import others_zeroed
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.paths import PathKinks
from egolens.analysis.attribution.schemes import FixedGrid, KinkCut
from egolens.vocabulary import absent_mask
from tests.conftest import random_obs, tiny_net


@pytest.mark.parametrize("make", [lambda: FixedGrid(0), lambda: FixedGrid(8, "simpson"),
                                  lambda: KinkCut(grid=64, max_grid=32), lambda: KinkCut(grid=0, max_grid=None),
                                  lambda: KinkCut(segment_points=0), lambda: KinkCut(grid=torch.tensor([16, 64])),
                                  lambda: KinkCut(grid=torch.tensor([16, 0]), max_grid=None)])
def test_a_scheme_that_cannot_integrate_fails_when_made(make):
    with pytest.raises(ValueError):
        make()


def test_a_fixed_grid_locates_no_kinks_and_a_kink_cut_keeps_the_mask_fixed():
    net = tiny_net(seed=2)
    obs = random_obs(3, seed=5)
    baseline = others_zeroed(obs)
    fixed = integrated_gradients(net, obs, baseline, 1, FixedGrid(16))
    assert fixed.grid.tolist() == [0, 0, 0] and fixed.points.tolist() == [16, 16, 16]
    with pytest.raises(ValueError, match="fix_mask"):
        integrated_gradients(net, obs, baseline, 1, KinkCut(grid=16), fix_mask=False)
    with pytest.raises(ValueError, match="KinkCut"):
        integrated_gradients(net, obs, baseline, 1, FixedGrid(16), kinks=PathKinks(net, obs, baseline,
                                                                                  absent_mask(obs)))


def test_per_step_grids_give_each_step_what_its_own_grid_gives():
    net = tiny_net(seed=4)
    obs = random_obs(4, seed=6)
    baseline = others_zeroed(obs)
    target = torch.tensor([0, 1, 2, 1])
    grids = torch.tensor([64, 16, 64, 16])
    scheme = KinkCut(grid=16, max_grid=None, segment_points=3)
    mixed = integrated_gradients(net, obs, baseline, target, scheme.on_grids(grids))
    assert scheme.on_grids(grids).max_grid is None and torch.equal(mixed.grid, grids)
    for n in (16, 64):
        alone = integrated_gradients(net, obs, baseline, target, KinkCut(grid=n, max_grid=None, segment_points=3))
        steps = grids == n
        torch.testing.assert_close(mixed.attr[steps], alone.attr[steps], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(mixed.delta[steps], alone.delta[steps], rtol=0, atol=1e-6)
        assert torch.equal(mixed.points[steps], alone.points[steps])
