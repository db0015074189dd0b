"""Greedy evaluation's comparisons: paired differences against a reference policy, and what each
held-out episode asks of a driver."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from egolens.evaluation import episode_classes, paired_versus, success_by_class
from tests.test_aggregate import episodes


def test_paired_versus_differences_are_per_episode_means_with_a_paired_interval():
    agent, idle = episodes("aaaat"), episodes("aacct")
    out = paired_versus(agent, idle, resamples=500, seed=0)
    assert out["success"]["diff"] == pytest.approx(0.4) and out["collision"]["diff"] == pytest.approx(-0.4)
    assert out["timeout"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}        # identical in every pair
    assert out["return"]["diff"] == pytest.approx((14 + 14) / 5)
    assert out["success"]["ci_low"] <= 0.4 <= out["success"]["ci_high"]
    with pytest.raises(ValueError):
        paired_versus(episodes("aa", start=0), idle, resamples=100, seed=0)


def test_episodes_are_classed_by_which_reference_policies_arrive():
    outcomes = {"constant_faster": "acttc", "constant_idle": "tacct", "clairvoyant": "aaaat"}
    reference = pd.concat([episodes(o).assign(policy=p) for p, o in outcomes.items()])
    classes = episode_classes(reference)
    assert list(classes) == ["go", "go", "timing", "timing", "unsolved"]
    agent = episodes("aatat")
    assert success_by_class(agent, classes) == {"go": 1.0, "timing": 0.5, "unsolved": 0.0}
    only_go = success_by_class(agent.iloc[:2], classes)
    assert only_go["go"] == 1.0 and math.isnan(only_go["timing"])


def test_without_the_clairvoyant_planner_the_episodes_that_are_not_go_are_wait():
    outcomes = {"constant_faster": "acttc", "constant_idle": "tacct"}
    reference = pd.concat([episodes(o).assign(policy=p) for p, o in outcomes.items()])
    classes = episode_classes(reference)
    assert list(classes) == ["go", "go", "wait", "wait", "wait"]
    assert success_by_class(episodes("aatat"), classes, ("go", "wait")) == {"go": 1.0, "wait": 1 / 3}
