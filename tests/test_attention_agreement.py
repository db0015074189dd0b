"""Attention vs attributions and vs scene facts: known rank correlations on hand-made patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.reading.attention_agreement import attention_attribution_agreement, attention_vs_fact
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
