"""This study beside the kept studies: driving side by side, findings judged by majority of seeds."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from egolens.recipes import RECIPE_KEYS, driving_table, holds_across, majority, recipe_of, recipe_text, verdict
from tests.conftest import ROOT


def holds(rows: list[tuple[str, int, int]], kind: bool = True) -> pd.DataFrame:
    """A holds.csv of findings (finding, n_holds, n_seeds); kind=False: the old form without a kind column."""
    return pd.DataFrame([{"finding": f, **({"kind": "finding"} if kind else {}), "statement": f"{f}.",
                          "n_seeds": n, "n_holds": k, "holds": f"{k}/{n}"} for f, k, n in rows])


@pytest.mark.parametrize("n_holds, n_seeds, expected", [(3, 5, True), (2, 5, False), (2, 3, True), (1, 2, False),
                                                         (1, 1, True), (0, 0, None)])
def test_a_finding_holds_in_a_study_when_it_holds_in_more_than_half_of_its_seeds(n_holds, n_seeds, expected):
    assert majority(n_holds, n_seeds) is expected


def test_a_verdict_names_where_a_finding_holds_unless_a_study_could_not_check_it():
    assert verdict({"a": True, "b": True, "c": True}) == "holds in all"
    assert verdict({"a": False, "b": False, "c": False}) == "holds in none"
    assert verdict({"a": True, "b": False, "c": True}) == "holds only in: a, c"
    assert verdict({"a": True, "b": None, "c": True}) == "not comparable"


def test_three_studies_give_each_finding_of_this_study_a_count_per_study_and_a_verdict():
    this = pd.concat([holds([("all", 5, 5), ("none", 1, 5), ("ours", 4, 5), ("theirs", 2, 5), ("new", 5, 5),
                             ("unchecked", 0, 0)]),
                      pd.DataFrame([{"finding": "adds_up", "kind": "sanity_check", "statement": ".", "n_seeds": 5,
                                     "n_holds": 5, "holds": "5/5"}])])
    paper = holds([("all", 2, 3), ("none", 0, 3), ("ours", 1, 3), ("theirs", 3, 3), ("unchecked", 2, 3),
                   ("adds_up", 3, 3)], kind=False)          # an old holds.csv: no kind column, findings only
    faithful = holds([("all", 3, 5), ("none", 2, 5), ("ours", 2, 5), ("theirs", 5, 5), ("new", 5, 5),
                      ("unchecked", 5, 5)])
    table = holds_across({"this study": this, "paper": paper, "faithful": faithful}).set_index("finding")
    assert list(table.columns) == ["this study", "paper", "faithful", "verdict"]
    assert list(table.index) == ["all", "none", "ours", "theirs", "new", "unchecked"]   # this study's findings only
    # by hand: 5/5, 2/3, 3/5 all more than half; 1/5, 0/3, 2/5 none; 4/5 yes, 1/3 no, 2/5 no; 2/5 no, 3/3, 5/5 yes
    assert table["verdict"].to_dict() == {
        "all": "holds in all", "none": "holds in none", "ours": "holds only in: this study",
        "theirs": "holds only in: paper, faithful", "new": "not comparable", "unchecked": "not comparable"}
    assert table.loc["ours"].tolist() == ["4/5", "1/3", "2/5", "holds only in: this study"]
    assert table.loc["new", "paper"] == "not run" and table.loc["unchecked", "this study"] == "0/0"


def test_the_driving_table_has_a_column_per_study_and_marks_what_one_lacks():
    this = {"seeds": 5, "trained": {"success_rate": 0.6, "collision_rate": 0.1}, "success_on_go_episodes": 0.9}
    paper = {"seeds": [0, 1, 2], "trained": {"success_rate": 0.55, "collision_rate": None}}
    faithful = {"seeds": 5, "trained": {"success_rate": 0.58, "collision_rate": 0.166}}
    table = driving_table({"this study": this, "paper": paper, "faithful": faithful})
    assert list(table.columns) == ["measure", "this study", "paper", "faithful"]
    table = table.set_index("measure")
    assert table.loc["seeds"].tolist() == [5, 3, 5]                     # a list of seeds counts its seeds
    assert table.loc["success rate"].tolist() == [0.6, 0.55, 0.58]
    assert math.isnan(table.loc["collision rate", "paper"]) and table.loc["collision rate", "faithful"] == 0.166
    assert table.loc["success on go episodes", "this study"] == 0.9
    assert math.isnan(table.loc["success on go episodes", "paper"]) and math.isnan(
        table.loc["success on go episodes", "faithful"])


PARAMS = {"seeds": [0, 1, 2, 3, 4], "train": {"episodes": 2000, "num_envs": 2},
          "env": {"id": "intersection-v0", "policy_frequency": 1, "duration": 13, "observe_intentions": False,
                  "vehicles_count": 15},
          "agent": {"gamma": 0.9, "n_steps": 3, "target_update": 50, "memory_capacity": 15000,
                    "epsilon": {"start": 1.0, "tau": 5000.0}, "loss": "l2", "timeout_terminal": False,
                    "lr": 0.0005, "exploration": {"duration": "one"}, "dqfd": {"enabled": False}}}


def test_a_recipe_is_described_by_its_seeds_and_the_settings_studies_differ_in():
    recipe = recipe_of(PARAMS)
    assert set(recipe) == {"seeds", *RECIPE_KEYS}
    assert recipe["agent.epsilon.tau"] == 5000.0 and recipe["env.policy_frequency"] == 1
    assert "agent.lr" not in recipe and "env.vehicles_count" not in recipe
    assert recipe_text(recipe) == ("5 seeds × 2000 episodes, intersection-v0 at 1 Hz, 13 s, intentions not observed, "
                                   "gamma 0.9, n_steps 3, target_update 50, epsilon start 1, tau 5000, loss l2, "
                                   "timeout_terminal False, memory 15000, exploration one, DQfD off")


def test_a_kept_recipe_lacking_the_newer_settings_names_only_the_ones_it_has():
    old = {"name": "reference recipe", "preset": "paper", "code": "bbb9fdd", "seeds": [0, 1, 2],
           "train.episodes": 6000, "agent.gamma": 0.95, "agent.n_steps": 1, "agent.target_update": 512,
           "agent.epsilon.tau": 15000, "agent.loss": "l2", "agent.timeout_terminal": False}   # the sweep's keys only
    assert recipe_text(old) == ("3 seeds × 6000 episodes, gamma 0.95, n_steps 1, target_update 512, tau 15000, "
                                "loss l2, timeout_terminal False")
    # a params dict without the keys describes the same way (left out, not None)
    assert recipe_text(recipe_of({"seeds": [0], "train": {"episodes": 8}, "env": {"duration": 40}})) == \
        "1 seeds × 8 episodes, 40 s"


@pytest.mark.parametrize("folder", ["paper", "faithful"])
def test_a_kept_study_has_its_presets_settings(folder):
    recipe = json.loads((ROOT / "results" / folder / "recipe.json").read_text())
    preset = yaml.safe_load((ROOT / "presets" / f"{recipe['preset']}.yaml").read_text())
    shared = set(preset) & set(recipe)
    assert {"seeds", "train.episodes", "agent.gamma", "agent.epsilon.tau"} <= shared
    assert {key: recipe[key] for key in shared} == {key: preset[key] for key in shared}


def test_the_kept_faithful_study_names_every_recipe_setting_of_the_faithful_preset():
    recipe = json.loads((ROOT / "results/faithful/recipe.json").read_text())
    preset = yaml.safe_load((ROOT / "presets/faithful.yaml").read_text())
    assert recipe["preset"] == "faithful" and set(RECIPE_KEYS) <= set(recipe) and set(RECIPE_KEYS) <= set(preset)
