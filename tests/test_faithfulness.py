"""Faithfulness checks: completeness tables, deletion/insertion curves and the randomisation check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egolens.analysis.attribution.attribution_tables import vehicle_attribution
from egolens.analysis.attribution.baselines import others_zeroed
from egolens.analysis.attribution.faithfulness import (
    attribution_order,
    completeness_stats,
    completeness_table,
    curve_auc,
    deletion_insertion_curves,
    random_order,
    randomisation_check,
)
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.schemes import FixedGrid
from egolens.vocabulary import present_others
from tests.attribution_nets import LinearQ, PlantedVx3, planted_obs
from tests.conftest import random_obs


def test_deleting_the_planted_vehicle_first_drops_q_at_once_and_random_orders_later_on_average():
    net = PlantedVx3()
    obs = planted_obs(8)
    present = present_others(obs)
    attr = integrated_gradients(net, obs, others_zeroed(obs), 0, FixedGrid(8)).attr
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


def test_completeness_table_flags_tiny_changes_and_measures_errors_relative_to_delta_q():
    net = LinearQ()
    obs = random_obs(3, seed=4)
    baseline = others_zeroed(obs)
    baseline[2] = obs[2]                                            # nothing changes at step 2
    ig = integrated_gradients(net, obs, baseline, 1, FixedGrid(4))
    attr, delta = ig.attr, ig.delta
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


def test_completeness_table_records_the_points_of_each_step():
    net = LinearQ()
    obs = random_obs(3, seed=4)
    baseline = others_zeroed(obs)
    attr = integrated_gradients(net, obs, baseline, 1, FixedGrid(4)).attr
    table = completeness_table(net, obs, baseline, attr, 1, points=torch.tensor([4, 16, 64]))
    assert table.points.tolist() == [4, 16, 64]
    stats = completeness_stats(table)
    assert stats["max_points"] == 64 and stats["mean_points"] == pytest.approx(28.0)
    assert "points" not in completeness_table(net, obs, baseline, attr, 1).columns
