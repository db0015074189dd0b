"""This study beside another recipe's: driving side by side, findings judged by majority of seeds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from egolens.recipes import driving_table, holds_comparison, majority, recipe_of, recipe_text


def holds(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"finding": f, "statement": f"{f}.", "n_seeds": n, "n_holds": k, "holds": f"{k}/{n}"}
                         for f, k, n in rows])


@pytest.mark.parametrize("n_holds, n_seeds, expected", [(3, 5, True), (2, 5, False), (2, 3, True), (1, 2, False),
                                                         (1, 1, True), (0, 0, None)])
def test_a_finding_holds_in_a_study_when_it_holds_in_more_than_half_of_its_seeds(n_holds, n_seeds, expected):
    assert majority(n_holds, n_seeds) is expected


def test_every_finding_gets_a_verdict_from_both_counts():
    this = holds([("both", 5, 5), ("neither", 1, 5), ("ours", 4, 5), ("theirs", 2, 5), ("new", 5, 5),
                  ("unchecked", 0, 0)])
    other = holds([("both", 2, 3), ("neither", 0, 3), ("ours", 1, 3), ("theirs", 3, 3), ("unchecked", 2, 3)])
    table = holds_comparison(this, other).set_index("finding")
    assert table["verdict"].to_dict() == {
        "both": "holds under both", "neither": "holds under neither", "ours": "holds only in this study",
        "theirs": "holds only under the other", "new": "not comparable", "unchecked": "not comparable"}
    assert table.loc["ours", "this"] == "4/5" and table.loc["ours", "other"] == "1/3"
    assert table.loc["new", "other"] == "not run"


def test_the_driving_table_reads_both_headlines_and_marks_what_one_lacks():
    this = {"seeds": 5, "trained": {"success_rate": 0.6, "collision_rate": 0.1}, "success_on_go_episodes": 0.9}
    other = {"seeds": 3, "trained": {"success_rate": 0.55, "collision_rate": None}}
    table = driving_table(this, other).set_index("measure")
    assert table.loc["seeds"].tolist() == [5, 3]
    assert table.loc["success rate"].tolist() == [0.6, 0.55]
    assert table.loc["collision rate", "this"] == 0.1 and math.isnan(table.loc["collision rate", "other"])
    assert math.isnan(table.loc["success on go episodes", "other"])


def test_a_recipe_is_described_by_its_seeds_and_the_swept_settings():
    params = {"seeds": [0, 1, 2, 3, 4], "train": {"episodes": 2000, "num_envs": 2},
              "agent": {"gamma": 0.9, "n_steps": 3, "target_update": 50, "epsilon": {"tau": 5000.0}, "loss": "l2",
                        "timeout_terminal": False, "lr": 0.0005}}
    recipe = recipe_of(params)
    assert recipe["agent.epsilon.tau"] == 5000.0 and "agent.lr" not in recipe
    assert recipe_text(recipe) == ("5 seeds × 2000 episodes, gamma 0.9, n_steps 3, target_update 50, tau 5000, "
                                   "loss l2, timeout_terminal False")
