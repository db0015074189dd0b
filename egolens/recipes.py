"""This study beside the kept studies of other recipes: how each drives, and which findings hold in which.

Pure functions over what the aggregate stage writes (`headline.json`, `holds.csv`) and a recipe
description (the settings that differ between studies). `results/<name>/` keeps another study's
aggregate for this comparison (`python -m presets keep NAME`); the report stage reads them.

A finding "holds" in a study when it holds in a majority of the seeds where it could be checked
(more than half), so one seed in three does not make a finding hold and one in three does not
refute it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from egolens.names import FINDING, of_kind

RECIPE_KEYS = ("train.episodes", "env.id", "env.policy_frequency", "env.duration", "env.observe_intentions",
               "agent.gamma", "agent.n_steps", "agent.target_update", "agent.epsilon.start", "agent.epsilon.tau",
               "agent.loss", "agent.timeout_terminal", "agent.memory_capacity", "agent.exploration.duration",
               "agent.dqfd.enabled")
"""The settings a recipe is described by (the ones the recipe sweep and the studies since varied), in
the order `recipe_text` names them."""

DRIVING = (("seeds", "seeds"),
           ("success rate", "trained.success_rate"),
           ("collision rate", "trained.collision_rate"),
           ("timeout rate", "trained.timeout_rate"),
           ("mean return", "trained.mean_return"),
           ("fraction of the clairvoyant's success", "ceiling_fraction"),
           ("success on go episodes", "success_on_go_episodes"),
           ("success on timing episodes", "success_on_timing_episodes"),
           ("constant IDLE's success", "idle_success"),
           ("clairvoyant planner's success", "clairvoyant_success"))
"""(row label, dotted key of headline.json) of the driving comparison."""

HOLDS_IN_ALL, HOLDS_IN_NONE, HOLDS_ONLY_IN, NOT_COMPARABLE = ("holds in all", "holds in none", "holds only in: ",
                                                              "not comparable")
"""The verdicts of a finding across studies; `HOLDS_ONLY_IN` is followed by the names of the studies
where it holds."""
NOT_RUN = "not run"
"""The count shown for a study whose holds.csv lacks the finding."""


def dotted(tree: Mapping[str, object], path: str) -> object:
    """tree["a"]["b"] for path "a.b"; None where a key is missing."""
    node: object = tree
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def recipe_of(params: Mapping[str, object]) -> dict[str, object]:
    """The recipe description of a params.yaml dict: "seeds" and each `RECIPE_KEYS` setting params has
    (a key params lacks is left out, as a kept recipe.json from before the setting existed lacks it)."""
    settings = {key: dotted(params, key) for key in ("seeds", *RECIPE_KEYS)}
    return {key: value for key, value in settings.items() if value is not None}


def _shown(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def setting_text(key: str, value: object) -> str:
    """One `RECIPE_KEYS` setting in words: "at 1 Hz", "13 s", "gamma 0.9", "DQfD off", ...
    (a setting with no wording of its own: the last part of its key and its value)."""
    value = _shown(value)
    words = {"env.id": f"{value}", "env.policy_frequency": f"at {value} Hz", "env.duration": f"{value} s",
             "env.observe_intentions": f"intentions {'observed' if value else 'not observed'}",
             "agent.epsilon.start": f"epsilon start {value}", "agent.memory_capacity": f"memory {value}",
             "agent.exploration.duration": f"exploration {value}",
             "agent.dqfd.enabled": f"DQfD {'on' if value else 'off'}"}
    return words.get(key, f"{key.split('.')[-1]} {value}")


def recipe_text(recipe: Mapping[str, object]) -> str:
    """'5 seeds × 2000 episodes, intersection-v0 at 1 Hz, 13 s, gamma 0.9, ...' from a recipe description
    (`recipe_of`, or a kept study's recipe.json). A setting the description lacks (or holds as None) is
    left out, not guessed: a recipe.json kept before `RECIPE_KEYS` named it says nothing of it."""
    seeds = recipe.get("seeds")
    count = len(seeds) if isinstance(seeds, list | tuple) else seeds
    parts: list[str] = []
    for key in RECIPE_KEYS[1:]:
        if recipe.get(key) is None:
            continue
        text = setting_text(key, recipe[key])
        if key == "env.policy_frequency" and recipe.get("env.id") is not None:
            parts[-1] += f" {text}"                      # "intersection-v0 at 1 Hz"
        else:
            parts.append(text)
    return ", ".join([f"{count} seeds × {_shown(recipe.get('train.episodes'))} episodes", *parts])


def _lookup(tree: Mapping[str, object], path: str) -> float:
    node = dotted(tree, path)
    if isinstance(node, list | tuple):
        return float(len(node))
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else math.nan


def driving_table(headlines: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """How the studies' agents drive: one row per `DRIVING` label, column "measure" then one column per
    study (`headlines`: study name -> its headline.json, in column order; means over seeds; NaN where a
    study lacks the number)."""
    return pd.DataFrame([{"measure": label, **{name: _lookup(headline, key) for name, headline in headlines.items()}}
                         for label, key in DRIVING], columns=["measure", *headlines])


def majority(n_holds: float, n_seeds: float) -> bool | None:
    """A finding holds in a study when it holds in more than half of its checked seeds (None: unchecked)."""
    if not (math.isfinite(n_seeds) and n_seeds > 0):
        return None
    return 2 * n_holds > n_seeds


def verdict(holds: Mapping[str, bool | None]) -> str:
    """A finding's verdict across studies from whether it holds in each (study name -> `majority`, None
    where the study did not run or could not check it): `HOLDS_IN_ALL`, `HOLDS_IN_NONE`, `HOLDS_ONLY_IN`
    with the names where it holds ("holds only in: this study, faithful"), or `NOT_COMPARABLE` when any
    study is None."""
    if any(held is None for held in holds.values()):
        return NOT_COMPARABLE
    if all(holds.values()):
        return HOLDS_IN_ALL
    if not any(holds.values()):
        return HOLDS_IN_NONE
    return HOLDS_ONLY_IN + ", ".join(name for name, held in holds.items() if held)


def holds_across(studies: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each finding of the first study beside its count in every study.

    studies: study name -> its holds.csv table (finding, n_seeds, n_holds, ...), the first being this
    study, whose findings (not its sanity checks: `names.of_kind`; a table without a kind column holds
    findings only) are the rows. Returns column "finding", one column per study with "k/n" (k of n
    seeds hold; `NOT_RUN` when that study lacks the finding) and "verdict" (`verdict`).
    """
    tables = {name: of_kind(table, FINDING).set_index("finding") for name, table in studies.items()}
    rows = []
    for finding in next(iter(tables.values())).index:
        row: dict[str, object] = {"finding": finding}
        held: dict[str, bool | None] = {}
        for name, table in tables.items():
            if finding in table.index:
                n_holds, n_seeds = float(table.loc[finding, "n_holds"]), float(table.loc[finding, "n_seeds"])
                row[name], held[name] = f"{int(n_holds)}/{int(n_seeds)}", majority(n_holds, n_seeds)
            else:
                row[name], held[name] = NOT_RUN, None
        rows.append({**row, "verdict": verdict(held)})
    return pd.DataFrame(rows, columns=["finding", *studies, "verdict"])
