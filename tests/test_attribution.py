"""Attribution methods checked against quantities computed independently on tiny hand-made networks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from egolens.analysis.attribution import (
    attention_attribution_agreement,
    attention_vs_fact,
    attribution_order,
    attribution_table,
    changed_entries,
    chosen,
    completeness_error,
    completeness_stats,
    completeness_table,
    conductance_table,
    curve_auc,
    deletion_insertion_curves,
    ego_alone,
    feature_summary,
    integrated_gradients,
    kink_aware_integrated_gradients,
    kink_aware_layer_conductance,
    layer_conductance,
    layer_conductance_on_grids,
    neuron_conductance,
    neuron_conductance_by_rows,
    neuron_totals,
    others_zeroed,
    piecewise_integrated_gradients,
    piecewise_layer_conductance,
    random_order,
    randomisation_check,
    select_steps,
    shapley_vehicles,
    step_summary,
    top_neurons,
    typical_scene,
    vehicle_attribution,
    vehicle_table,
    with_episode_steps,
    with_randomisation_flags,
)
from egolens.stats import spearman
from egolens.vocabulary import REFERENCE_FEATURES, absent_mask, present_others
from tests.conftest import random_obs, tiny_net

VX = REFERENCE_FEATURES.index("vx")


class LinearQ(nn.Module):
    """Q(s) = Σ_ef W[a, e, f]·s[e, f] + b[a]; ignores the mask."""

    def __init__(self, entities: int = 15, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, entities, 7, generator=g))
        self.bias = nn.Parameter(torch.randn(3, generator=g))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bef,aef->ba", obs, self.weight) + self.bias


class PlantedVx3(nn.Module):
    """Q depends only on vehicle 3's vx: Q = w·tanh(2·vx₃) + b (SLOWER rises with vx₃)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor([1.0, 0.2, -0.5]))
        self.register_buffer("b", torch.tensor([0.0, 0.1, 0.05]))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(2 * obs[:, 3, VX])[:, None] * self.w + self.b


def planted_obs(batch: int = 6, seed: int = 0) -> torch.Tensor:
    """random_obs with vehicle 3 present and driving with vx in [0.3, 0.9] (so SLOWER is greedy)."""
    obs = random_obs(batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    obs[:, 3] = torch.rand(batch, 7, generator=g) * 2 - 1
    obs[:, 3, 0] = 1.0
    obs[:, 3, VX] = 0.3 + 0.6 * torch.rand(batch, generator=g)
    return obs


# ------------------------------------------------------------------------ integrated gradients

def test_ig_of_a_linear_net_is_input_minus_baseline_times_weight():
    net = LinearQ()
    obs = random_obs(5, seed=1)
    target = torch.tensor([0, 1, 2, 1, 0])
    for baseline in (others_zeroed(obs), typical_scene(obs, random_obs(20, seed=2), replace_ego=True)):
        attr, delta = integrated_gradients(net, obs, target, baseline, n_steps=4)
        expected = (obs - baseline) * net.weight.detach()[target]
        torch.testing.assert_close(attr, expected, rtol=1e-5, atol=1e-6)
        assert delta.abs().max() < 1e-4
        adv, _ = integrated_gradients(net, obs, target, baseline, n_steps=4, advantage=True)
        centred = net.weight.detach() - net.weight.detach().mean(0)
        torch.testing.assert_close(adv, (obs - baseline) * centred[target], rtol=1e-5, atol=1e-6)


def test_ig_completeness_holds_with_the_fixed_mask_and_breaks_when_the_mask_is_recomputed():
    net = tiny_net()
    obs = random_obs(4, seed=1)
    baseline = ego_alone(obs)          # presence goes 0 -> 1 along the path: a recomputed mask flips at 0.5
    fixed, delta = integrated_gradients(net, obs, 0, baseline, n_steps=128)
    err_fixed = completeness_error(net, obs, baseline, fixed, 0)
    assert err_fixed.max() < 0.01
    # captum's delta is the same gap, computed its own way
    mask = absent_mask(obs)
    delta_q = net(obs, mask)[:, 0] - net(baseline, mask)[:, 0]
    torch.testing.assert_close(delta.abs() / delta_q.abs().detach(), err_fixed, rtol=1e-3, atol=1e-4)

    flipping, _ = integrated_gradients(net, obs, 0, baseline, n_steps=128, fix_mask=False)
    err_flipping = completeness_error(net, obs, baseline, flipping, 0, fix_mask=False)
    assert err_flipping.mean() > 0.05
    assert err_flipping.mean() > 10 * err_fixed.mean()


def test_ig_of_the_advantage_is_the_q_attribution_minus_its_mean_over_actions_and_batching_changes_nothing():
    net = tiny_net(seed=1)
    obs = random_obs(3, seed=3)
    baseline = others_zeroed(obs)
    per_action = torch.stack([integrated_gradients(net, obs, a, baseline, n_steps=64)[0] for a in range(3)])
    adv, _ = integrated_gradients(net, obs, 2, baseline, n_steps=64, advantage=True)
    torch.testing.assert_close(adv, per_action[2] - per_action.mean(0), rtol=1e-4, atol=1e-6)
    small_batches, _ = integrated_gradients(net, obs, 2, baseline, n_steps=64, advantage=True, internal_batch_size=6)
    torch.testing.assert_close(small_batches, adv, rtol=1e-5, atol=1e-7)
    assert (completeness_error(net, obs, baseline, adv, 2, advantage=True) < 0.01).all()
    # others_zeroed keeps presence and the ego row: nothing to attribute there
    assert (adv[:, 0] == 0).all() and (adv[..., 0] == 0).all()


# -------------------------------------------------------------------------------- baselines, tables

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


def test_attribution_tables_drop_absent_vehicles_and_vehicle_rows_sum_the_features():
    obs = random_obs(3, seed=6)
    attr = torch.randn(3, 15, 7, generator=torch.Generator().manual_seed(0))
    features, vehicles = attribution_table(attr, obs, [10, 11, 12], ["SLOWER", "IDLE", "FASTER"],
                                           "others_zeroed", "trained", vehicle_ids=torch.arange(45).view(3, 15))
    present = [(b, j) for b in range(3) for j in range(15) if j == 0 or obs[b, j, 0] >= 0.5]
    assert len(vehicles) == len(present) and len(features) == 7 * len(present)
    assert set(vehicles["baseline"]) == {"others_zeroed"} and set(features["model"]) == {"trained"}
    for b, j in present:
        row = vehicles[(vehicles.step == 10 + b) & (vehicles.entity == j)].iloc[0]
        assert row.attribution == pytest.approx(float(attr[b, j].sum()), rel=1e-5, abs=1e-6)
        assert row.vehicle_id == 15 * b + j and row.is_ego == (j == 0)
        assert row.action == ["SLOWER", "IDLE", "FASTER"][b]
    vx = features[(features.step == 11) & (features.feature == "vx")].set_index("entity")
    for _, j in (p for p in present if p[0] == 1):
        assert vx.loc[j, "value"] == pytest.approx(float(obs[1, j, VX]))
        assert vx.loc[j, "attribution"] == pytest.approx(float(attr[1, j, VX]))


# ------------------------------------------------------------------------------ planted vehicle

def test_ig_shapley_and_row_patching_all_point_at_the_planted_vehicle_3():
    net = PlantedVx3()
    obs = planted_obs()
    attr, _ = integrated_gradients(net, obs, 0, others_zeroed(obs), n_steps=32)
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


def test_deleting_the_planted_vehicle_first_drops_q_at_once_and_random_orders_later_on_average():
    net = PlantedVx3()
    obs = planted_obs(8)
    present = present_others(obs)
    attr, _ = integrated_gradients(net, obs, 0, others_zeroed(obs), n_steps=8)
    order = attribution_order(vehicle_attribution(attr), present)
    assert (order[:, 0] == 3).all()
    curves = deletion_insertion_curves(net, obs, order, order_name="ig", labels={"model": "planted",
                                                                                  "baseline": "others_zeroed"})
    q_alone = float(net.b[0])
    deletion = curves[curves.curve == "deletion"]
    assert (deletion[deletion.k == 0].q > 0.5).all() and deletion[deletion.k == 0].agrees.all()
    assert np.allclose(deletion[deletion.k >= 1].q, q_alone) and not deletion[deletion.k >= 1].agrees.any()
    insertion = curves[curves.curve == "insertion"]
    assert np.allclose(insertion[insertion.k == 0].q, q_alone) and (insertion[insertion.k >= 1].q > 0.5).all()

    first_drop, auc_random = [], []
    for seed in range(10):
        rand = deletion_insertion_curves(net, obs, random_order(present, seed), order_name="random")
        rand_del = rand[(rand.curve == "deletion") & (rand.q < 0.5 * rand.groupby("step").q.transform("max"))]
        first_drop.append(rand_del.groupby("step").k.min().mean())
        auc_random.append(curve_auc(rand).query("curve == 'deletion'").auc_q.mean())
    assert deletion[deletion.q < 0.5].groupby("step").k.min().eq(1).all()
    assert np.mean(first_drop) > 2
    auc = curve_auc(curves).query("curve == 'deletion'")
    assert set(auc.model) == {"planted"} and set(auc.baseline) == {"others_zeroed"} and len(auc) == len(obs)
    assert auc.auc_q.mean() < np.mean(auc_random)
    n = obs[:, 1:, 0].sum(1)         # attribution order: full q on [0, 1/n], then q_alone
    q_full = net(obs)[:, 0].detach()
    expected = (q_full + q_alone) / 2 / n + q_alone * (1 - 1 / n)
    np.testing.assert_allclose(auc.sort_values("step").auc_q, expected.numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------------- conductance

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


# ------------------------------------------------------------------------------ Shapley values

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


# -------------------------------------------------------------------- attention vs attribution

def test_agreement_reports_known_spearman_and_top1_over_present_vehicles_only():
    present = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 0, 0]], dtype=bool)
    attr = np.array([[7.0, 4, -3, 2, 1, 99], [7.0, -1, 0, 2, 0, 0]])        # |attr| ranks 4 > 3 > 2 > 1
    attention = np.zeros((2, 3, 6))
    attention[0, 0] = [0.5, 0.4, 0.3, 0.2, 0.1, 0.9]      # same order: rho 1, top-1 match
    attention[0, 1] = [0.5, 0.1, 0.2, 0.3, 0.4, 0.9]      # reversed: rho −1, no match
    attention[0, 2] = [0.5, 0.4, 0.3, 0.1, 0.2, 0.9]      # two swapped: rho = 1 − 6·2/60 = 0.8
    attention[1] = [[0.5, 0.1, 0.0, 0.4, 0.0, 0.0]] * 3    # two vehicles: no rho; vehicle 3 wins both
    table = attention_attribution_agreement(attention, attr, present).set_index(["step", "head"])
    assert table.loc[(0, 0), "spearman"] == pytest.approx(1.0)
    assert table.loc[(0, 1), "spearman"] == pytest.approx(-1.0)
    assert table.loc[(0, 2), "spearman"] == pytest.approx(0.8)
    assert list(table.loc[0, "top1_match"]) == [1.0, 0.0, 1.0]
    assert table.loc[1, "spearman"].isna().all() and (table.loc[1, "top1_match"] == 1.0).all()
    assert (table.loc[0, "n_vehicles"] == 4).all() and (table.loc[1, "n_vehicles"] == 2).all()
    # the cached pattern [B, H, 1, E] is accepted as is
    same = attention_attribution_agreement(torch.tensor(attention)[:, :, None], attr, present)
    assert same.equals(table.reset_index())


def test_attention_vs_fact_ranks_attention_against_distance_ignoring_nan_entries():
    attention = np.array([[[0.4, 0.3, 0.2, 0.1, 0.0]], [[0.1, 0.2, 0.3, 0.4, 0.0]]])   # [B=2, H=1, E=5]
    distance = np.array([[np.nan, 1.0, 2.0, 3.0, np.nan], [np.nan, 5.0, 4.0, 6.0, np.nan]])
    per_step = attention_vs_fact(attention, {"distance": distance})
    assert list(per_step.spearman) == pytest.approx([-1.0, 0.5])
    assert list(per_step.n) == [3, 3]
    pooled = attention_vs_fact(attention, {"distance": distance}, level="pooled")
    expected = spearman([0.3, 0.2, 0.1, 0.2, 0.3, 0.4], [1, 2, 3, 5, 4, 6])
    assert pooled.spearman.iloc[0] == pytest.approx(expected) and pooled.n.iloc[0] == 6


# ------------------------------------------------------------------------------------ sanity

def test_randomisation_check_flags_identical_attributions_and_not_independent_ones():
    g = torch.Generator().manual_seed(0)
    trained = torch.randn(40, 15, 7, generator=g)
    _, summary = randomisation_check(trained, trained.clone())
    assert summary.flagged.all() and np.allclose(summary["median"], 1.0)
    _, summary = randomisation_check(trained, torch.randn(40, 15, 7, generator=g))
    assert not summary.flagged.any() and (summary["median"].abs() < 0.2).all()


def test_randomisation_check_needs_keep_to_ignore_zeros_shared_by_construction():
    g = torch.Generator().manual_seed(1)
    present = torch.rand(40, 15, generator=g) > 0.6
    trained = torch.randn(40, 15, generator=g) * present
    untrained = torch.randn(40, 15, generator=g) * present      # independent where present, 0 elsewhere
    per_step, summary = randomisation_check(trained, untrained)
    assert summary.set_index("measure").loc["spearman_abs", "flagged"]
    per_step, summary = randomisation_check(trained, untrained, keep=present)
    assert not summary.flagged.any()
    assert (per_step.n == present.sum(1).numpy()).all()


def test_ranking_orders_put_present_vehicles_first_and_pad_the_rest():
    obs = random_obs(2, seed=9)
    present = present_others(obs)
    scores = torch.arange(15.0).expand(2, 15) * torch.tensor([1.0, -1.0])[:, None]
    order = attribution_order(scores, present, absolute=False)
    for b in range(2):
        expected = sorted((j for j in range(1, 15) if present[b, j]), key=lambda j: -float(scores[b, j]))
        assert order[b, :len(expected)].tolist() == expected and (order[b, len(expected):] == -1).all()
        shuffled = random_order(present, seed=3)[b]
        assert sorted(shuffled[shuffled >= 0].tolist()) == sorted(expected)


# ---------------------------------------------------------------- step selection, tables, summaries

def test_select_steps_spreads_distinct_increasing_indices_over_the_whole_recording():
    assert select_steps(10, 4).tolist() == [0, 3, 6, 9]
    assert select_steps(7, 3).tolist() == [0, 3, 6]
    assert select_steps(5, 8).tolist() == [0, 1, 2, 3, 4] and select_steps(9, 1).tolist() == [0]
    for n in range(2, 60):
        for k in range(2, n + 1):
            idx = select_steps(n, k)
            assert len(idx) == k and idx[0] == 0 and idx[-1] == n - 1 and (np.diff(idx) > 0).all()
            gaps = np.diff(idx)
            assert gaps.max() - gaps.min() <= 1              # as even as integers allow
    with pytest.raises(ValueError):
        select_steps(5, 0)


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
    attr, _ = integrated_gradients(net, obs, 0, baseline, n_steps=4)
    assert (attr[~moved] == 0).all()


def test_feature_summary_averages_the_ego_row_and_the_sum_over_present_others_per_feature():
    obs = torch.zeros(2, 4, 7)
    obs[:, 0, 0] = 1
    obs[0, 1, 0] = obs[0, 2, 0] = obs[1, 3, 0] = 1                  # step 0: rows 1, 2; step 1: row 3
    attr = torch.zeros(2, 4, 7)
    attr[:, 0, 1] = torch.tensor([1.0, -3.0])                       # ego x
    attr[0, 1, 3], attr[0, 2, 3], attr[1, 3, 3] = 2.0, -5.0, 4.0     # others vx
    attr[1, 1, 3] = 100.0                                           # an absent row: left out
    table = feature_summary(attr, obs, labels={"model": "m"}).set_index(["entity", "feature"])
    assert list(table.columns[:1]) == ["model"] and len(table) == 14 and (table.n_steps == 2).all()
    assert table.loc[("ego", "x"), "mean_attribution"] == pytest.approx(-1.0)
    assert table.loc[("ego", "x"), "mean_abs_attribution"] == pytest.approx(2.0)
    assert table.loc[("others", "vx"), "mean_attribution"] == pytest.approx((-3.0 + 4.0) / 2)
    assert table.loc[("others", "vx"), "mean_abs_attribution"] == pytest.approx((7.0 + 4.0) / 2)
    assert table.drop(index=[("ego", "x"), ("others", "vx")]).mean_abs_attribution.eq(0).all()
    named = feature_summary(attr, obs, value_name="conductance")
    assert {"mean_conductance", "mean_abs_conductance"} <= set(named.columns)


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
    assert top_neurons(cond, 3) == [1, 3, 0]
    assert top_neurons(torch.ones(2, 5), 2) == [0, 1]                 # ties: lower index first


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


def test_completeness_table_flags_tiny_changes_and_measures_errors_relative_to_delta_q():
    net = LinearQ()
    obs = random_obs(3, seed=4)
    baseline = others_zeroed(obs)
    baseline[2] = obs[2]                                            # nothing changes at step 2
    attr, delta = integrated_gradients(net, obs, 1, baseline, n_steps=4)
    table = completeness_table(net, obs, baseline, attr, 1, convergence_delta=delta, step_ids=[7, 8, 9],
                               labels={"model": "m"})
    assert list(table.columns[:2]) == ["model", "step"] and list(table.step) == [7, 8, 9]
    assert table.tiny.tolist() == [False, False, True] and table.within.tolist() == [True, True, False]
    assert math.isnan(table.rel_error.iloc[2]) and (table.rel_error.iloc[:2] < 1e-4).all()
    np.testing.assert_allclose(table.attr_sum, attr.sum((1, 2)).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(table.convergence_delta, delta.double().numpy())
    wrong = completeness_table(net, obs, baseline, attr * 1.1, 1)
    np.testing.assert_allclose(wrong.rel_error.iloc[:2], 0.1, rtol=1e-3)
    assert not wrong.within.any()
    stats = completeness_stats(wrong)
    assert stats["n_steps"] == 3 and stats["n_tiny"] == 1 and stats["fraction_within"] == 0.0
    assert stats["max_rel_error"] == pytest.approx(0.1, rel=1e-3)
    assert stats["max_abs_error"] == pytest.approx(float(wrong.abs_error.max()))
    assert math.isnan(completeness_stats(wrong.iloc[2:])["median_rel_error"])


def test_vehicle_table_keeps_present_vehicles_and_repeats_per_step_columns():
    obs = random_obs(2, seed=6)
    values = torch.arange(30.0).view(2, 15)
    table = vehicle_table(values, obs, value_name="shapley", step_ids=[5, 6], vehicle_ids=100 + values.long(),
                          step_columns={"error": [0.5, 0.25]}, labels={"model": "m"})
    present = present_others(obs)
    assert len(table) == int(present.sum()) and (table.entity > 0).all()
    assert list(table.columns) == ["model", "step", "entity", "vehicle_id", "error", "shapley"]
    for row in table.itertuples():
        b = row.step - 5
        assert present[b, row.entity] and row.shapley == 15 * b + row.entity
        assert row.vehicle_id == 100 + row.shapley and row.error == [0.5, 0.25][b]
    with_ego = vehicle_table(values, obs, include_ego=True)
    assert len(with_ego) == len(table) + 2 and (with_ego.entity == 0).sum() == 2


def test_episode_steps_replace_record_indices_and_randomisation_flags_become_columns():
    frame = pd.DataFrame({"model": ["m", "m"], "step": [2, 0], "value": [1.0, 2.0]})
    named = with_episode_steps(frame, episode=np.array([0, 0, 1]), step=np.array([0, 1, 0]))
    assert list(named.columns) == ["model", "record", "episode", "step", "value"]
    assert named.record.tolist() == [2, 0] and named.episode.tolist() == [1, 0] and named.step.tolist() == [0, 0]
    g = torch.Generator().manual_seed(2)
    trained = torch.randn(6, 5, generator=g)
    per_step, summary = randomisation_check(trained, trained + 0.01 * torch.randn(6, 5, generator=g),
                                            labels={"explanation": "x"}, threshold=0.7)
    table = with_randomisation_flags(per_step, summary)
    assert len(table) == 6 and table.flagged.all() and table.flagged_abs.all() and (table.threshold == 0.7).all()
    assert table.median_spearman.iloc[0] == pytest.approx(per_step.spearman.median())


def test_step_summary_counts_finite_steps():
    frame = pd.DataFrame({"head": [0, 0, 0, 1, 1], "rho": [0.1, 0.5, np.nan, np.nan, np.nan]})
    table = step_summary(frame, ["head"], "rho").set_index(["head", "statistic"])
    assert table.loc[(0, "step_mean"), "rho"] == pytest.approx(0.3)
    assert table.loc[(0, "step_median"), "rho"] == pytest.approx(0.3) and table.loc[(0, "step_mean"), "n"] == 2
    assert math.isnan(table.loc[(1, "step_mean"), "rho"]) and table.loc[(1, "step_mean"), "n"] == 0


# ----------------------------------------------------------------- kink-aware path integration

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


def test_kink_aware_ig_is_exact_on_a_kinked_net_that_a_fixed_grid_misses():
    net = KinkedQ()
    obs = planted_obs(6, seed=2)
    baseline = others_zeroed(obs)                     # vx₃ goes 0 -> [0.3, 0.9]: every path crosses the kink
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    exact = net.w[target] * (torch.relu(obs[:, 3, VX] - net.c) - torch.relu(baseline[:, 3, VX] - net.c))

    coarse, _ = integrated_gradients(net, obs, target, baseline, n_steps=8)
    assert (completeness_error(net, obs, baseline, coarse, target) > 0.01).any()

    refined = kink_aware_integrated_gradients(net, obs, target, baseline, grid=16, max_grid=256)
    torch.testing.assert_close(refined.attr[:, 3, VX], exact, rtol=1e-5, atol=1e-6)
    assert (refined.grid == 16).all()                 # the kink was found at once: nothing refined
    assert (completeness_error(net, obs, baseline, refined.attr, target) < 1e-5).all()
    others = refined.attr.clone()
    others[:, 3, VX] = 0
    assert others.abs().max() == 0


def test_piecewise_ig_equals_captum_ig_on_a_fine_grid_and_is_complete():
    net = tiny_net(seed=5)
    obs = random_obs(4, seed=11)
    baseline = typical_scene(obs, random_obs(20, seed=12), replace_ego=True)
    attr, delta, points = piecewise_integrated_gradients(net, obs, 2, baseline, grid=256, segment_points=2)
    fine, _ = integrated_gradients(net, obs, 2, baseline, n_steps=20000, method="riemann_middle")
    torch.testing.assert_close(attr, fine, rtol=1e-3, atol=2e-5)
    assert (delta.abs() < 1e-4).all()
    assert (points >= 2 * 16).all()                   # at least the 16 uniform pieces, 2 points each


def test_piecewise_ig_pieces_add_up_whatever_the_grid():
    # IG is additive along a straight path: cutting it anywhere (any grid) changes only the
    # quadrature error, which stays small because each piece is smooth
    net = tiny_net(seed=6)
    obs = random_obs(3, seed=13)
    baseline = others_zeroed(obs)
    a, _, _ = piecewise_integrated_gradients(net, obs, 0, baseline, grid=64, segment_points=4)
    b, _, _ = piecewise_integrated_gradients(net, obs, 0, baseline, grid=1024, segment_points=4)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_kink_aware_advantage_ig_explains_the_advantage():
    net = tiny_net(seed=7)
    obs = random_obs(5, seed=14)
    baseline = others_zeroed(obs)
    refined = kink_aware_integrated_gradients(net, obs, 1, baseline, grid=64, advantage=True)
    assert (completeness_error(net, obs, baseline, refined.attr, 1, advantage=True) < 1e-3).all()


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


def test_completeness_table_records_the_points_of_each_step():
    net = LinearQ()
    obs = random_obs(3, seed=4)
    baseline = others_zeroed(obs)
    attr, _ = integrated_gradients(net, obs, 1, baseline, n_steps=4)
    table = completeness_table(net, obs, baseline, attr, 1, points=torch.tensor([4, 16, 64]))
    assert table.points.tolist() == [4, 16, 64]
    stats = completeness_stats(table)
    assert stats["max_points"] == 64 and stats["mean_points"] == pytest.approx(28.0)
    assert "points" not in completeness_table(net, obs, baseline, attr, 1).columns
