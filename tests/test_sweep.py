"""The recipe sweep: exact -S overrides and the table read back from `dvc exp show --json`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from egolens import plots
from egolens.sweep import (
    CLONING_COLUMNS,
    cloning_columns,
    env_overrides,
    overrides,
    recipe_table,
    same_episodes,
    versus_idle,
    with_episode_classes,
)

COMMON = {"seeds": "[0,1]", "train.episodes": 2000}
SEED_DIR = "results/seeds/seed{}".format
RECIPES = {"paper": {"agent.gamma": 0.99, "agent.timeout_terminal": True}, "other": {"agent.n_steps": 3}}


def evaluate(success: float) -> dict:
    rates = {"success_rate": success, "collision_rate": 1 - success, "timeout_rate": 0.0, "mean_return": 5.0}
    return {"trained": {k: {"mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1} for k, v in rates.items()}}


def shown() -> list[dict]:
    """A `dvc exp show --json` payload: one baseline with two experiments, one seed of `other` missing."""
    def exp(name, per_seed, state=None):
        metrics = {f"results/seeds/seed{s}/evaluate.json": {"data": evaluate(v)} for s, v in per_seed.items()}
        executor = {"state": state} if state else None
        return {"name": name, "executor": executor,
                "revs": [{"rev": "abc", "name": name, "data": {"metrics": metrics, "params": {}}}]}
    running = exp("other", {1: 0.99}, state="running")      # shows its base commit's metrics: not counted
    return [{"rev": "workspace", "experiments": None},
            {"rev": "123", "experiments": [exp("paper", {0: 0.8, 1: 0.6}), exp("other", {0: 0.5}),
                                           exp("not-a-recipe", {0: 0.1}), running]}]


def test_recipes_run_after_driving_json_became_the_metric_are_read_from_it():
    metrics = {"results/seeds/seed0/driving.json": {"data": {"success_rate": 0.7, "collision_rate": 0.1,
                                                             "timeout_rate": 0.2, "mean_return": 6.0}}}
    shown = [{"rev": "1", "experiments": [{"name": "other", "revs": [{"data": {"metrics": metrics}}]}]}]
    table = recipe_table(shown, RECIPES, COMMON, [0, 1], SEED_DIR)
    assert table[["seed", "success_rate", "mean_return"]].values.tolist() == [[0, 0.7, 6.0]]


def test_overrides_are_the_common_keys_then_the_recipes_own_in_dvc_syntax():
    assert overrides(COMMON, RECIPES["paper"]) == ["seeds=[0,1]", "train.episodes=2000", "agent.gamma=0.99",
                                                   "agent.timeout_terminal=true"]


def test_recipe_table_has_one_row_per_finished_recipe_and_seed():
    table = recipe_table(shown(), RECIPES, COMMON, [0, 1], SEED_DIR)
    assert list(zip(table["recipe"], table["seed"])) == [("paper", 0), ("paper", 1), ("other", 0)]
    assert table.loc[1, "success_rate"] == pytest.approx(0.6) and table.loc[1, "success_rate_ci_low"] == 0.5
    assert table.loc[0, "overrides"] == ("-S 'seeds=[0,1]' -S 'train.episodes=2000' -S 'agent.gamma=0.99' "
                                         "-S 'agent.timeout_terminal=true'")


def test_a_cloned_recipe_reports_its_own_agent_not_the_evaluate_metrics_its_workspace_inherits():
    own = {0: evaluate(0.3)["trained"]}                    # seed 1 has no imitation metrics: no row
    seen = []

    def driving_of(rev, seed):
        seen.append((rev, seed))
        return own.get(seed)
    table = recipe_table(shown(), RECIPES, COMMON, [0, 1], SEED_DIR, {"paper": driving_of})
    paper = table[table["recipe"] == "paper"]
    assert paper[["seed", "success_rate"]].values.tolist() == [[0, 0.3]] and seen == [("abc", 0), ("abc", 1)]
    assert table[table["recipe"] == "other"]["success_rate"].tolist() == [0.5]


def test_sweep_figure_shows_each_seed_and_the_reference_lines():
    table = recipe_table(shown(), RECIPES, COMMON, [0, 1], SEED_DIR)
    reference = {"clairvoyant": {"success_rate": {"mean": 0.9}}, "constant_idle": {"success_rate": {"mean": 0.55}}}
    fig = plots.recipe_sweep(table, reference)
    success = fig.axes[0]
    assert sorted(success.collections[0].get_offsets()[:, 0].tolist()) == pytest.approx([0.5, 0.6, 0.8])
    assert {li.get_label(): li.get_xdata()[0] for li in success.lines} == {
        "constant IDLE": 0.55, "clairvoyant planner (ceiling)": 0.9}


def test_each_recipe_seed_gets_its_success_in_each_episode_class():
    table = recipe_table(shown(), {"paper": {}, "other": {}}, {}, [0, 1], SEED_DIR)
    assert set(table["rev"]) == {"abc"}
    classes = pd.Series(["go", "go", "timing", "unsolved"], index=[10, 11, 12, 13], name="episode_class")
    played = pd.DataFrame({"model": ["trained"] * 4 + ["untrained"], "env_seed": [10, 11, 12, 13, 10],
                           "outcome": ["arrived", "collision", "arrived", "timeout", "collision"]})
    out = with_episode_classes(table, {("paper", 0): played}, classes).set_index(["recipe", "seed"])
    assert out.loc[("paper", 0), ["success_go", "success_timing", "success_unsolved"]].tolist() == [0.5, 1.0, 0.0]
    assert out.loc[("paper", 0), "success_wait"] == 0.5                        # timing and unsolved together
    assert out.loc[("paper", 1), ["success_go", "success_timing"]].isna().all()       # its episodes were not read


def test_a_recipe_on_another_simulation_is_classed_on_its_own_env_into_go_and_wait():
    table = recipe_table(shown(), {"paper": {}, "other": {}}, {}, [0, 1], SEED_DIR)
    study = pd.Series(["go", "go", "timing", "unsolved"], index=[10, 11, 12, 13], name="episode_class")
    own = pd.Series(["go", "wait", "wait", "wait"], index=[10, 11, 12, 13], name="episode_class")
    played = pd.DataFrame({"model": ["trained"] * 4, "env_seed": [10, 11, 12, 13],
                           "outcome": ["arrived", "collision", "arrived", "timeout"]})
    out = with_episode_classes(table, {("paper", 0): played, ("other", 0): played},
                               {"paper": study, "other": own}).set_index(["recipe", "seed"])
    assert out.loc[("other", 0), ["success_go", "success_wait"]].tolist() == [1.0, 1 / 3]
    assert out.loc[("other", 0), ["success_timing", "success_unsolved"]].isna().all()   # no planner on its env
    assert out.loc[("paper", 0), ["success_go", "success_wait", "success_timing"]].tolist() == [0.5, 0.5, 1.0]


def test_env_overrides_are_parsed_as_dvc_parses_them():
    recipe = {"env.features": "[presence,x,y,vx,vy,cos_h,sin_h,cos_d,sin_d]", "env.observe_intentions": True,
              "agent.gamma": 0.9}
    changes = env_overrides({"seeds": "[0,1]"}, recipe)
    assert changes == {"features": ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "cos_d", "sin_d"],
                       "observe_intentions": True}
    assert same_episodes(changes)
    assert not same_episodes(env_overrides({}, {"env.policy_frequency": 2}))
    assert not same_episodes({"id": "intersection-v2"})


def test_versus_idle_pairs_episodes_by_env_seed_not_by_row_order():
    table = pd.DataFrame([{"recipe": "r", "seed": 0}])
    agent = pd.DataFrame({"model": ["trained"] * 4 + ["untrained"] * 4, "env_seed": [10, 11, 12, 13] * 2,
                          "return": [1.0] * 8,
                          "outcome": ["arrived", "arrived", "collision", "arrived"] + ["timeout"] * 4})
    idle = pd.DataFrame({"env_seed": [13, 12, 11, 10], "return": [0.0] * 4,
                         "outcome": ["collision", "arrived", "arrived", "collision"]})
    row = versus_idle(table, {("r", 0): agent}, {"r": idle}, resamples=200).iloc[0]
    # per seed 10..13: agent 1,1,0,1 against IDLE 0,1,1,0 -> differences +1, 0, -1, +1
    assert row["idle_success"] == 0.5 and row["success_vs_idle"] == 0.25
    assert row["success_vs_idle_ci_low"] <= 0.25 <= row["success_vs_idle_ci_high"]


def test_a_recipe_without_episodes_gets_no_comparison():
    table = pd.DataFrame([{"recipe": "r", "seed": 0}])
    row = versus_idle(table, {("r", 0): None}, {"r": pd.DataFrame()}, resamples=200).iloc[0]
    assert np.isnan(row["success_vs_idle"])


def test_sweep_figure_marks_constant_idle_on_each_recipes_own_env():
    table = recipe_table(shown(), RECIPES, COMMON, [0, 1], SEED_DIR)
    table["idle_success"] = table["recipe"].map({"paper": 0.55, "other": 0.4})
    fig = plots.recipe_sweep(table, {})
    crosses = [c for c in fig.axes[0].collections if c.get_label() == "constant IDLE on the recipe's env"]
    recipes = list(dict.fromkeys(table["recipe"]))
    assert len(crosses) == 1
    assert sorted(map(tuple, crosses[0].get_offsets().tolist())) == sorted(
        (0.55 if r == "paper" else 0.4, float(i)) for i, r in enumerate(recipes))


def test_a_cloning_rung_reports_its_fit_and_its_driving_on_its_own_demonstrations():
    metrics = {"train": {"accuracy": 0.93, "accuracy_by_action": {"action0": 0.74, "action1": None, "action2": 0.97}},
               "driving": {}, "driving_on_demonstrations": {"success_rate": {"mean": 0.59},
                                                            "collision_rate": {"mean": 0.375}}}
    assert cloning_columns(metrics) == {"bc_accuracy": 0.93, "bc_accuracy_slower": 0.74,
                                        "bc_success_on_demonstrations": 0.59, "bc_collision_on_demonstrations": 0.375}
    older = cloning_columns({"train": {"accuracy": 0.9, "accuracy_by_action": {}}})   # before the closed-loop replay
    assert older["bc_accuracy"] == 0.9 and all(math.isnan(older[k]) for k in CLONING_COLUMNS[1:])
    assert all(math.isnan(v) for v in cloning_columns(None).values())
