"""The recipe sweep: exact -S overrides and the table read back from `dvc exp show --json`."""

from __future__ import annotations

import pandas as pd
import pytest

from egolens import plots
from egolens.sweep import overrides, recipe_table, with_episode_classes

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
    assert out.loc[("paper", 1), ["success_go", "success_timing"]].isna().all()       # its episodes were not read
