"""Path pieces between ReLU kinks: where the kinks are, how paths are cut, the quadrature, refinement."""

from __future__ import annotations

from itertools import product

import pytest
import torch
from torch import nn

from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.paths import (
    MAX_SEGMENT,
    Crossings,
    PathKinks,
    Segments,
    gauss_legendre_nodes,
    grid_crossings,
    integrate_on_grids,
    path_kinks,
    path_segments,
    point_schedule,
    polish_roots,
    refine_until_complete,
    relu_input_sites,
)
from egolens.analysis.attribution.schemes import KinkCut
from tests.conftest import tiny_net


class TwoUnits(nn.Module):
    """relu(W·x₀ + c) summed, x: [N, 1, 2]; each unit's input is linear along a straight path."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            self.linear.bias.copy_(torch.tensor([-0.3, -0.7]))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.relu(self.linear(x[:, 0])).sum(-1, keepdim=True)


def test_sign_changes_are_bracketed_by_the_grid_cell_they_happen_in():
    alphas = torch.linspace(0, 1, 5, dtype=torch.float64)
    values = torch.stack([alphas - 0.3, 0.6 - alphas, torch.ones(5, dtype=torch.float64)], 1)
    path, cell, unit = grid_crossings(values[None])
    assert path.tolist() == [0, 0]
    assert sorted(zip(unit.tolist(), cell.tolist())) == [(0, 1), (1, 2)]   # 0.3 in [0.25, 0.5], 0.6 in [0.5, 0.75]


def test_kinks_of_a_first_layer_are_exact_whatever_the_grid():
    net = TwoUnits()
    obs = torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    baseline = torch.zeros_like(obs)
    mask = torch.zeros(2, 1, dtype=torch.bool)
    for grid, polish in product((3, 10, 64), (True, False)):             # linear interpolation is exact here
        kinks = path_kinks(net, obs, baseline, mask, grid, polish=polish)
        assert kinks[0].tolist() == pytest.approx([0.3, 0.7], abs=1e-6)    # both units switch on
        assert kinks[1].tolist() == pytest.approx([0.3], abs=1e-6)         # the second never does


class TwoLayers(nn.Module):
    """relu(2·relu(x₀ − 0.45) − 0.13), x: [N, 1, 2]. On the path 0 → (1, 0) the first unit switches
    on at α = 0.45 and the second at α = 0.515, where its input bends (it is flat before 0.45)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(2, 1), nn.Linear(1, 1)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([[1.0, 0.0]]))
            self.first.bias.fill_(-0.45)
            self.second.weight.fill_(2.0)
            self.second.bias.fill_(-0.13)
        self.relu_first, self.relu_second = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.relu_second(self.second(self.relu_first(self.first(x[:, 0]))))


def test_roots_are_found_inside_their_brackets_to_the_tolerance():
    roots = torch.tensor([0.3 ** 0.5, 0.25, 0.9], dtype=torch.float64)

    def f(idx, alpha):            # a curved, a linear and a decreasing function
        curves = torch.stack([alpha ** 2 - 0.3, 4 * (alpha - 0.25), torch.exp(0.9 - alpha) - 1])
        return curves[idx, torch.arange(len(idx))]

    lo = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    idx = torch.arange(3)
    crossings = Crossings(idx, idx * 0, idx * 0, lo, hi, f(idx, lo), f(idx, hi))
    assert (crossings.interpolated() - roots).abs().max() > 0.05      # a secant through the bracket misses
    assert polish_roots(f, crossings, xtol=1e-12).tolist() == pytest.approx(roots.tolist(), abs=1e-10)


def test_a_deeper_units_kink_is_its_root_where_linear_interpolation_misses_it():
    net = TwoLayers()
    obs = torch.tensor([[[1.0, 0.0]]])
    baseline, mask = torch.zeros_like(obs), torch.zeros(1, 1, dtype=torch.bool)
    interpolated = path_kinks(net, obs, baseline, mask, 3, polish=False)[0]
    assert interpolated.tolist() == pytest.approx([1 / 3 + 0.13 / 1.3, 0.45])   # the bent unit is off by 0.08
    assert path_kinks(net, obs, baseline, mask, 3)[0].tolist() == pytest.approx([0.45, 0.515], abs=1e-6)
    # so IG on the pieces is complete: f(obs) − f(baseline) = 2·0.55 − 0.13 = 0.97, all of it on x₀
    piecewise = integrated_gradients(net, obs, baseline, 0, KinkCut(grid=3, max_grid=None))
    assert piecewise.attr[0, 0].tolist() == pytest.approx([0.97, 0.0], abs=1e-5)
    assert abs(piecewise.delta.item()) < 1e-5


def test_kinks_are_found_in_every_mlp_of_the_attention_net_and_unchanged_rows_add_none():
    net = tiny_net(seed=1)
    assert len(relu_input_sites(net)) == 5                 # 2 + 2 embedding layers, 1 output layer
    obs = torch.zeros(1, 3, 7)
    obs[:, :, 0] = 1.0
    obs[:, 1:, 1:] = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 3, dtype=torch.bool)
    assert len(path_kinks(net, obs, obs.clone(), mask, 64)[0]) == 0   # no path, no kink
    baseline = obs.clone()
    baseline[:, 1:, 1:] = 0
    coarse = path_kinks(net, obs, baseline, mask, 64, rows=7)[0]      # chunked forward passes
    fine = path_kinks(net, obs, baseline, mask, 4096)[0]
    assert len(coarse) > 0 and ((coarse > 0) & (coarse < 1)).all()
    # every kink the coarse grid finds, the fine grid finds nearby
    assert torch.cdist(coarse[:, None], fine[:, None]).min(1).values.max() < 1e-2


def test_paths_are_cut_at_kinks_and_at_the_longest_piece():
    segments = path_segments([torch.tensor([0.05, 0.05, 0.3], dtype=torch.float64), torch.zeros(0)], max_length=0.25)
    first = segments.step == 0
    assert segments.start[first].tolist() == pytest.approx([0.0, 0.05, 0.25, 0.3, 0.5, 0.75])
    assert segments.end[first].tolist() == pytest.approx([0.05, 0.25, 0.3, 0.5, 0.75, 1.0])
    assert segments.count(2).tolist() == [6, 4]
    assert len(path_segments([torch.zeros(0)]).step) == round(1 / MAX_SEGMENT)


def test_composite_gauss_legendre_integrates_piecewise_polynomials_exactly():
    segments = Segments(torch.tensor([0, 0, 1]), torch.tensor([0.0, 0.4, 0.0], dtype=torch.float64),
                        torch.tensor([0.4, 1.0, 1.0], dtype=torch.float64))
    step, alpha, weight = gauss_legendre_nodes(segments, 2)
    assert step.tolist() == [0, 0, 0, 0, 1, 1]
    # step 0: a cubic on [0, 0.4] and another one on [0.4, 1]; step 1: the second cubic on [0, 1]
    g = torch.where((step == 0) & (alpha < 0.4), alpha ** 3, 2 - alpha ** 2 + 5 * alpha ** 3)
    total = torch.zeros(2, dtype=torch.float64).index_add_(0, step, weight * g)
    exact_0 = 0.4 ** 4 / 4 + (2 * 0.6 - (1 - 0.4 ** 3) / 3 + 5 * (1 - 0.4 ** 4) / 4)
    exact_1 = 2 - 1 / 3 + 5 / 4
    assert total.tolist() == pytest.approx([exact_0, exact_1], rel=1e-12)
    assert torch.zeros(2, dtype=torch.float64).index_add_(0, step, weight).tolist() == pytest.approx([1.0, 1.0])


def test_point_schedule_multiplies_up_to_the_maximum():
    assert point_schedule(512, 8192) == [512, 2048, 8192]
    assert point_schedule(64, 1000) == [64, 256, 1000]
    assert point_schedule(8, 8) == [8]
    with pytest.raises(ValueError):
        point_schedule(64, 32)


def test_refinement_recomputes_only_the_failing_steps_and_stops_when_all_pass():
    # step i's error is errors[i] / grid: steps 0 and 2 pass at once, step 1 needs 4x, step 3 never
    # passes, step 4 has nothing to explain (tiny delta_f) and is never refined
    errors = torch.tensor([0.001, 0.03, 0.0, 100.0, 5.0])
    delta_f = torch.tensor([1.0, 1.0, -2.0, 1.0, 1e-5])
    calls = []

    def attribute(idx, grid):
        calls.append((idx.tolist(), grid))
        delta = errors[idx] * 8 / grid
        return (torch.stack([idx.double(), torch.full_like(idx, grid, dtype=torch.float64)], 1), delta,
                torch.full_like(idx, 3 * grid))

    refined = refine_until_complete(attribute, delta_f, [8, 32, 128], tolerance=0.01, min_delta=1e-3)
    assert calls == [([0, 1, 2, 3, 4], 8), ([1, 3], 32), ([3], 128)]
    assert refined.grid.tolist() == [8, 32, 8, 128, 8]
    assert refined.points.tolist() == [24, 96, 24, 384, 24]
    assert refined.attr[:, 1].tolist() == [8, 32, 8, 128, 8]          # each step keeps its last result
    torch.testing.assert_close(refined.delta, (errors * 8 / refined.grid).double())


def test_per_step_grids_run_the_steps_of_each_grid_together_smallest_first():
    calls = []

    def attribute(idx, grid):
        calls.append((idx.tolist(), grid))
        return idx.double()[:, None] * grid, torch.full_like(idx, grid, dtype=torch.float64), torch.full_like(idx, 2)

    result = integrate_on_grids(attribute, torch.tensor([64, 16, 64, 256]))
    assert calls == [([1], 16), ([0, 2], 64), ([3], 256)]
    assert result.attr[:, 0].tolist() == [0, 16, 128, 768] and result.grid.tolist() == [64, 16, 64, 256]
    assert result.delta.tolist() == [64, 16, 64, 256] and result.points.tolist() == [2, 2, 2, 2]


def test_path_kinks_are_located_once_per_step_and_grid_and_shared_by_every_job(monkeypatch):
    import egolens.analysis.attribution.paths as paths_module
    from egolens.vocabulary import absent_mask

    net = tiny_net(seed=1)
    obs = torch.zeros(3, 3, 7)
    obs[:, :, 0] = 1.0
    obs[:, 1:, 1:] = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(0))
    baseline = obs.clone()
    baseline[:, 1:, 1:] = 0
    scheme = KinkCut(grid=16, max_grid=64)
    alone = [integrated_gradients(net, obs, baseline, action, scheme) for action in (0, 2)]
    located = []
    real = paths_module.path_kinks
    monkeypatch.setattr(paths_module, "path_kinks", lambda *a, **k: located.append(len(a[1])) or real(*a, **k))
    kinks = PathKinks(net, obs, baseline, absent_mask(obs))
    shared = [integrated_gradients(net, obs, baseline, action, scheme, kinks=kinks) for action in (0, 2)]
    assert sum(located) == 3                       # the 3 paths on the first grid, once for both actions
    for a, b in zip(alone, shared):
        torch.testing.assert_close(a.attr, b.attr, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="other paths"):
        integrated_gradients(net, obs, torch.zeros_like(obs), 0, KinkCut(grid=16), kinks=kinks)
