"""Attribution tables and step selection: rows kept, sums, labels and per-step summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.attribution.attribution_tables import (
    attribution_table,
    feature_summary,
    select_steps,
    step_summary,
    vehicle_table,
    with_episode_steps,
)
from egolens.analysis.attribution.faithfulness import randomisation_check, with_randomisation_flags
from egolens.vocabulary import present_others
from tests.attribution_nets import VX
from tests.conftest import random_obs


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
