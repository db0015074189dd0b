"""Attention vs attributions and vs scene facts: known rank correlations on hand-made patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.reading.attention_agreement import (
    attention_attribution_agreement,
    attention_vs_fact,
    ranking_agreement,
    top1_chance,
)
from egolens.scene import naive_rankings
from egolens.stats import spearman


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


def test_top1_chance_is_the_share_of_present_vehicles_tied_for_the_largest_attribution():
    present = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=bool)
    attr = np.array([[9.0, 4, -3, 2, 1, 99],          # 4 vehicles, one largest: 1/4
                     [9.0, -2, 2, 0, 0, 0],           # 2 vehicles tied at |2|: a random pick always matches
                     [9.0, 0, 0, 0, 0, 0]])           # no vehicle: undefined
    chance = top1_chance(attr, present)
    assert chance[:2].tolist() == [0.25, 1.0] and np.isnan(chance[2])
    # the agreement table carries it per step, and a uniform attention (argmax = first vehicle) hits it on average
    table = attention_attribution_agreement(np.ones((3, 1, 6)), attr, present)
    assert table["top1_chance"].tolist()[:2] == [0.25, 1.0]


def test_naive_rankings_put_the_nearest_and_the_lowest_ttc_first_ties_by_distance():
    distance = np.array([[np.nan, 30.0, 10.0, 20.0, 40.0, np.nan]])
    ttc = np.array([[np.nan, 2.0, np.inf, np.inf, 1.0, np.nan]])
    rankings = naive_rankings(distance, ttc)
    nearest, urgent = rankings["nearest"][0], rankings["lowest_ttc"][0]
    assert list(np.argsort(-nearest[1:5]) + 1) == [2, 3, 1, 4]
    assert list(np.argsort(-urgent[1:5]) + 1) == [4, 1, 2, 3]           # ttc 1, 2, then inf by distance 10, 20
    assert np.isnan(urgent[[0, 5]]).all() and np.isnan(nearest[[0, 5]]).all()


def test_a_ranking_is_scored_against_attributions_exactly_as_attention_is():
    present = np.array([[1, 1, 1, 1, 1]], dtype=bool)
    attr = np.array([[0.0, 1.0, 4.0, 3.0, 2.0]])                         # |attr| order 2 > 3 > 4 > 1
    distance = np.array([[np.nan, 40.0, 10.0, 20.0, 30.0]])              # nearest order 2, 3, 4, 1: the same
    ttc = np.array([[np.nan, 1.0, np.inf, np.inf, np.inf]])              # lowest_ttc order 1, 2, 3, 4
    table = ranking_agreement(naive_rankings(distance, ttc), attr, present, labels={"attribution": "x"})
    rows = table.set_index("ranking")
    assert list(table.columns[:2]) == ["attribution", "ranking"]
    assert rows.loc["nearest", "spearman"] == pytest.approx(1.0) and rows.loc["nearest", "top1_match"] == 1.0
    assert rows.loc["lowest_ttc", "spearman"] == pytest.approx(spearman([4, 3, 2, 1], [1, 4, 3, 2]))
    assert rows.loc["lowest_ttc", "top1_match"] == 0.0 and (rows["top1_chance"] == 0.25).all()
