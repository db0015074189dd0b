"""Layer and neuron conductance: sums at cuts, agreement with captum, tables and neuron rankings."""

from __future__ import annotations

import pytest
import torch

from egolens.analysis.attribution.baselines import others_zeroed, typical_scene
from egolens.analysis.attribution.conductance import (
    conductance_table,
    layer_conductance,
    neuron_conductance,
    neuron_ranking,
    neuron_totals,
)
from egolens.analysis.attribution.faithfulness import completeness_error
from egolens.analysis.attribution.schemes import FixedGrid, KinkCut
from egolens.vocabulary import absent_mask, present_others
from tests.conftest import random_obs, tiny_net


def test_layer_conductance_sums_to_delta_q_at_hook_resid_but_not_at_hook_combined_when_the_ego_moves():
    net = tiny_net()
    obs = random_obs(4, seed=1)
    moving_ego = typical_scene(obs, random_obs(32, seed=5), replace_ego=True)
    fixed_ego = others_zeroed(obs)
    mask = absent_mask(obs)
    for baseline in (moving_ego, fixed_ego):
        cond = layer_conductance(net, "attention_layer.hook_resid", obs, baseline, 0, FixedGrid(32)).attr
        delta_q = (net(obs, mask) - net(baseline, mask))[:, 0].detach()
        torch.testing.assert_close(cond.sum(1), delta_q, rtol=0.01, atol=1e-6)
    # with the ego row fixed, the ½·e bypass carries no change and combine's output is a cut too
    cond = layer_conductance(net, "attention_layer.hook_combined", obs, fixed_ego, 0, FixedGrid(32)).attr
    assert (completeness_error(net, obs, fixed_ego, cond, 0) < 0.01).all()
    cond = layer_conductance(net, "attention_layer.hook_combined", obs, moving_ego, 0, FixedGrid(32)).attr
    assert (completeness_error(net, obs, moving_ego, cond, 0) > 0.2).all()


def test_neuron_conductances_of_every_hidden_neuron_add_up_to_their_layer_conductance():
    net = tiny_net()
    obs = random_obs(3, seed=1)
    baseline = typical_scene(obs, random_obs(32, seed=5), replace_ego=True)
    layer = "output_layer.hook_post.0"
    cond = layer_conductance(net, layer, obs, baseline, 0, FixedGrid(128)).attr
    trapezoid = FixedGrid(128, "riemann_trapezoid")
    per_neuron = torch.stack([neuron_conductance(net, layer, i, obs, baseline, 0, trapezoid).sum((1, 2))
                              for i in range(8)], dim=1)
    scale = cond.abs().sum(1, keepdim=True)
    assert ((per_neuron - cond).abs() / scale).max() < 0.01
    # riemann_trapezoid (NeuronConductance's default) at 128 steps: a few per cent of a small ΔQ
    assert (completeness_error(net, obs, baseline, per_neuron, 0) < 0.03).all()
    with pytest.raises(KeyError, match="no activation named 'attention_layer'"):
        neuron_conductance(net, "attention_layer", 0, obs, baseline, 0)
    with pytest.raises(ValueError, match="FixedGrid"):
        neuron_conductance(net, layer, 0, obs, baseline, 0, KinkCut())


def test_conductance_tables_sum_entity_rows_per_neuron_and_rank_neurons_by_mean_absolute_value():
    cond = torch.zeros(2, 3, 4)                                     # [B, R, D]
    cond[0, :, 0] = torch.tensor([1.0, 2.0, -1.0])                  # neuron 0: totals 2, 0
    cond[:, 0, 1] = torch.tensor([-5.0, 5.0])                       # neuron 1: totals -5, 5
    cond[:, 2, 3] = torch.tensor([2.0, 2.0])                        # neuron 3: 2, 2; neuron 2: 0
    assert torch.equal(neuron_totals(cond), torch.tensor([[2.0, -5, 0, 2], [0.0, 5, 0, 2]]))
    table = conductance_table(cond, {"layer": "L"}).set_index("neuron")
    assert list(table.mean_conductance) == pytest.approx([1.0, 0.0, 0.0, 2.0])
    assert list(table.mean_abs_conductance) == pytest.approx([1.0, 5.0, 0.0, 2.0])
    assert (table.layer == "L").all() and (table.n_steps == 2).all()
    ranking = neuron_ranking(cond, {"layer": "L"})
    assert list(ranking.neuron) == [1, 3, 0, 2] and list(ranking["rank"]) == [0, 1, 2, 3]
    assert list(ranking.mean_abs_conductance) == pytest.approx([5.0, 2.0, 1.0, 0.0]) and (ranking.layer == "L").all()
    assert list(neuron_ranking(torch.ones(2, 5)).neuron) == [0, 1, 2, 3, 4]   # ties: lower index first


def test_neuron_conductance_over_rows_sums_per_entity_units_and_skipping_absent_rows_changes_nothing():
    net = tiny_net(seed=3)
    obs = random_obs(4, seed=11)
    baseline = typical_scene(obs, random_obs(16, seed=12), replace_ego=True)
    layer, neuron, target = "others_embedding.hook_post.1", 2, torch.tensor([0, 2, 1, 0])
    trapezoid = FixedGrid(64, "riemann_trapezoid")
    every_row = neuron_conductance(net, layer, neuron, obs, baseline, target, trapezoid,
                                   rows=torch.ones(4, 14, dtype=torch.bool))
    naive = sum(neuron_conductance(net, layer, (r, neuron), obs, baseline, target, trapezoid) for r in range(14))
    torch.testing.assert_close(every_row, naive)
    present_only = neuron_conductance(net, layer, neuron, obs, baseline, target, trapezoid,
                                      rows=present_others(obs)[:, 1:])
    torch.testing.assert_close(present_only, naive, rtol=1e-5, atol=1e-7)
    assert (present_only[absent_mask(obs)] == 0).all() and (present_only[:, 0] == 0).all()
    # summed over its inputs, it is the layer conductance of that neuron summed over the rows
    cond = layer_conductance(net, layer, obs, baseline, target, FixedGrid(64)).attr
    total = neuron_totals(cond)[:, neuron]
    assert ((present_only.sum((1, 2)) - total).abs() <= 0.02 * total.abs() + 1e-6).all()
    sixteen = FixedGrid(16, "riemann_trapezoid")
    ego = neuron_conductance(net, "ego_embedding.hook_post.1", 1, obs, baseline, target, sixteen,
                             rows=torch.ones(4, 1, dtype=torch.bool))
    torch.testing.assert_close(ego, neuron_conductance(net, "ego_embedding.hook_post.1", (0, 1), obs, baseline,
                                                       target, sixteen))


def test_kink_cut_conductance_on_one_grid_equals_captum_layer_conductance_on_a_fine_grid():
    net = tiny_net(seed=3)
    obs = random_obs(3, seed=7)
    baseline = typical_scene(obs, random_obs(20, seed=8), replace_ego=True)
    for layer in ("attention_layer.hook_resid", "others_embedding.hook_post.1", "output_layer.hook_post.0"):
        cond = layer_conductance(net, layer, obs, baseline, 1, KinkCut(grid=256, max_grid=None)).attr
        captum_cond = layer_conductance(net, layer, obs, baseline, 1, FixedGrid(20000, "riemann_trapezoid")).attr
        torch.testing.assert_close(cond, captum_cond, rtol=2e-3, atol=5e-5)


def test_refined_kink_cut_conductance_adds_up_at_a_cut_and_other_layers_share_its_grids():
    net = tiny_net(seed=3)
    obs = random_obs(5, seed=7)
    baseline = typical_scene(obs, random_obs(20, seed=8), replace_ego=True)
    scheme = KinkCut(grid=32, max_grid=512)
    refined = layer_conductance(net, "attention_layer.hook_resid", obs, baseline, 1, scheme)
    assert (completeness_error(net, obs, baseline, refined.attr, 1) < 1e-3).all()
    assert (refined.delta.abs() < 1e-3).all()
    on_grids = scheme.on_grids(refined.grid)
    torch.testing.assert_close(layer_conductance(net, "attention_layer.hook_resid", obs, baseline, 1, on_grids).attr,
                               refined.attr)
    later = layer_conductance(net, "output_layer.hook_post.0", obs, baseline, 1, on_grids).attr
    assert (completeness_error(net, obs, baseline, later, 1) < 1e-3).all()
    # the ½·e residual bypasses hook_combined: it is not a cut, its sum misses the ego's path
    combined = layer_conductance(net, "attention_layer.hook_combined", obs, baseline, 1, on_grids).attr
    assert (completeness_error(net, obs, baseline, combined, 1) > 0.01).any()
