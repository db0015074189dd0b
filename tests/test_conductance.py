"""Layer and neuron conductance: sums at cuts, agreement with captum, tables and neuron rankings."""

from __future__ import annotations

import pytest
import torch

from egolens.analysis.baselines import others_zeroed, typical_scene
from egolens.analysis.conductance import (
    conductance_table,
    kink_aware_layer_conductance,
    layer_conductance,
    layer_conductance_on_grids,
    neuron_conductance,
    neuron_conductance_by_rows,
    neuron_ranking,
    neuron_totals,
    piecewise_layer_conductance,
)
from egolens.analysis.faithfulness import completeness_error
from egolens.vocabulary import absent_mask, present_others
from tests.conftest import random_obs, tiny_net


def test_layer_conductance_sums_to_delta_q_at_hook_resid_but_not_at_hook_combined_when_the_ego_moves():
    net = tiny_net()
    obs = random_obs(4, seed=1)
    moving_ego = typical_scene(obs, random_obs(32, seed=5), replace_ego=True)
    fixed_ego = others_zeroed(obs)
    mask = absent_mask(obs)
    for baseline in (moving_ego, fixed_ego):
        cond, _ = layer_conductance(net, obs, "attention_layer.hook_resid", 0, baseline, n_steps=32)
        delta_q = (net(obs, mask) - net(baseline, mask))[:, 0].detach()
        torch.testing.assert_close(cond.sum(1), delta_q, rtol=0.01, atol=1e-6)
    # with the ego row fixed, the ½·e bypass carries no change and combine's output is a cut too
    cond, _ = layer_conductance(net, obs, "attention_layer.hook_combined", 0, fixed_ego, n_steps=32)
    assert (completeness_error(net, obs, fixed_ego, cond, 0) < 0.01).all()
    cond, _ = layer_conductance(net, obs, "attention_layer.hook_combined", 0, moving_ego, n_steps=32)
    assert (completeness_error(net, obs, moving_ego, cond, 0) > 0.2).all()


def test_neuron_conductances_of_every_hidden_neuron_add_up_to_their_layer_conductance():
    net = tiny_net()
    obs = random_obs(3, seed=1)
    baseline = typical_scene(obs, random_obs(32, seed=5), replace_ego=True)
    layer = "output_layer.hook_post.0"
    cond, _ = layer_conductance(net, obs, layer, 0, baseline, n_steps=128)
    per_neuron = torch.stack([neuron_conductance(net, obs, layer, i, 0, baseline, n_steps=128).sum((1, 2))
                              for i in range(8)], dim=1)
    scale = cond.abs().sum(1, keepdim=True)
    assert ((per_neuron - cond).abs() / scale).max() < 0.01
    # riemann_trapezoid (NeuronConductance's default) at 128 steps: a few per cent of a small ΔQ
    assert (completeness_error(net, obs, baseline, per_neuron, 0) < 0.03).all()
    with pytest.raises(KeyError, match="no activation named 'attention_layer'"):
        neuron_conductance(net, obs, "attention_layer", 0, 0, baseline)


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


def test_neuron_conductance_by_rows_sums_per_entity_units_and_skipping_absent_rows_changes_nothing():
    net = tiny_net(seed=3)
    obs = random_obs(4, seed=11)
    baseline = typical_scene(obs, random_obs(16, seed=12), replace_ego=True)
    layer, neuron, target = "others_embedding.hook_post.1", 2, torch.tensor([0, 2, 1, 0])
    every_row = neuron_conductance_by_rows(net, obs, layer, neuron, target, baseline,
                                           torch.ones(4, 14, dtype=torch.bool), n_steps=64)
    naive = sum(neuron_conductance(net, obs, layer, (r, neuron), target, baseline, n_steps=64) for r in range(14))
    torch.testing.assert_close(every_row, naive)
    present_only = neuron_conductance_by_rows(net, obs, layer, neuron, target, baseline,
                                              present_others(obs)[:, 1:], n_steps=64)
    torch.testing.assert_close(present_only, naive, rtol=1e-5, atol=1e-7)
    assert (present_only[absent_mask(obs)] == 0).all() and (present_only[:, 0] == 0).all()
    # summed over its inputs, it is the layer conductance of that neuron summed over the rows
    cond, _ = layer_conductance(net, obs, layer, target, baseline, n_steps=64)
    total = neuron_totals(cond)[:, neuron]
    assert ((present_only.sum((1, 2)) - total).abs() <= 0.02 * total.abs() + 1e-6).all()
    ego = neuron_conductance_by_rows(net, obs, "ego_embedding.hook_post.1", 1, target, baseline,
                                     torch.ones(4, 1, dtype=torch.bool), n_steps=16)
    torch.testing.assert_close(ego, neuron_conductance(net, obs, "ego_embedding.hook_post.1", (0, 1), target,
                                                       baseline, n_steps=16))


def test_piecewise_conductance_equals_captum_layer_conductance_on_a_fine_grid():
    net = tiny_net(seed=3)
    obs = random_obs(3, seed=7)
    baseline = typical_scene(obs, random_obs(20, seed=8), replace_ego=True)
    for layer in ("attention_layer.hook_resid", "others_embedding.hook_post.1", "output_layer.hook_post.0"):
        cond, _, _ = piecewise_layer_conductance(net, obs, layer, 1, baseline, grid=256)
        captum_cond, _ = layer_conductance(net, obs, layer, 1, baseline, n_steps=20000, method="riemann_trapezoid")
        torch.testing.assert_close(cond, captum_cond, rtol=2e-3, atol=5e-5)


def test_kink_aware_conductance_adds_up_at_a_cut_and_other_layers_share_its_grids():
    net = tiny_net(seed=3)
    obs = random_obs(5, seed=7)
    baseline = typical_scene(obs, random_obs(20, seed=8), replace_ego=True)
    refined = kink_aware_layer_conductance(net, obs, "attention_layer.hook_resid", 1, baseline, grid=32,
                                           max_grid=512)
    assert (completeness_error(net, obs, baseline, refined.attr, 1) < 1e-3).all()
    assert (refined.delta.abs() < 1e-3).all()
    on_grids = layer_conductance_on_grids(net, obs, "attention_layer.hook_resid", 1, baseline, refined.grid)
    torch.testing.assert_close(on_grids, refined.attr)
    later = layer_conductance_on_grids(net, obs, "output_layer.hook_post.0", 1, baseline, refined.grid)
    assert (completeness_error(net, obs, baseline, later, 1) < 1e-3).all()
    # the ½·e residual bypasses hook_combined: it is not a cut, its sum misses the ego's path
    combined = layer_conductance_on_grids(net, obs, "attention_layer.hook_combined", 1, baseline, refined.grid)
    assert (completeness_error(net, obs, baseline, combined, 1) > 0.01).any()
