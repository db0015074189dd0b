"""This study beside another recipe's study: how each drives, and which findings hold under both.

Pure functions over what the aggregate stage writes (`headline.json`, `holds.csv`) and a recipe
description (the settings that differ between studies). `results/paper/` keeps the reference
recipe's 3-seed study for this comparison; the report stage reads it.

A finding "holds" in a study when it holds in a majority of the seeds where it could be checked
(more than half), so one seed in three does not make a finding hold and one in three does not
refute it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from egolens.names import FINDING, of_kind

RECIPE_KEYS = ("train.episodes", "agent.gamma", "agent.n_steps", "agent.target_update", "agent.epsilon.tau",
               "agent.loss", "agent.timeout_terminal")
"""The settings a recipe is described by (the ones the recipe sweep varied)."""

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

VERDICTS = ("holds under both", "holds under neither", "holds only in this study", "holds only under the other")


def dotted(tree: Mapping[str, object], path: str) -> object:
    """tree["a"]["b"] for path "a.b"; None where a key is missing."""
    node: object = tree
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def recipe_of(params: Mapping[str, object]) -> dict[str, object]:
    """The recipe settings (`RECIPE_KEYS`) and seeds of a params.yaml dict, as a recipe description."""
    return {"seeds": dotted(params, "seeds"), **{key: dotted(params, key) for key in RECIPE_KEYS}}


def recipe_text(recipe: Mapping[str, object]) -> str:
    """'3 seeds x 6000 episodes, gamma 0.95, n_steps 1, ...' from a recipe description."""
    seeds = recipe.get("seeds")
    count = len(seeds) if isinstance(seeds, list | tuple) else seeds
    def shown(value: object) -> object:
        return int(value) if isinstance(value, float) and value.is_integer() else value

    settings = ", ".join(f"{key.split('.')[-1]} {shown(recipe[key])}" for key in RECIPE_KEYS[1:] if key in recipe)
    return f"{count} seeds × {recipe.get('train.episodes')} episodes, {settings}"


def _lookup(tree: Mapping[str, object], path: str) -> float:
    node = dotted(tree, path)
    if isinstance(node, list | tuple):
        return float(len(node))
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else math.nan


def driving_table(this: Mapping[str, object], other: Mapping[str, object]) -> pd.DataFrame:
    """How the two studies' agents drive: one row per `DRIVING` label, columns this / other
    (means over seeds from each headline.json; NaN where a study lacks the number)."""
    return pd.DataFrame([{"measure": label, "this": _lookup(this, key), "other": _lookup(other, key)}
                         for label, key in DRIVING])


def majority(n_holds: float, n_seeds: float) -> bool | None:
    """A finding holds in a study when it holds in more than half of its checked seeds (None: unchecked)."""
    if not (math.isfinite(n_seeds) and n_seeds > 0):
        return None
    return 2 * n_holds > n_seeds


def holds_comparison(this: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Each finding of `this` study beside the other study's count.

    this, other: holds.csv tables (finding, n_seeds, n_holds, holds); only their findings are compared,
    not their sanity checks (`names.of_kind`). Returns finding, this ("k/n"),
    other ("k/n", or "not run" when the other study lacks the finding) and verdict (one of
    `VERDICTS`, or "not comparable" when either study could not check it).
    """
    other_rows = of_kind(other, FINDING).set_index("finding")
    rows = []
    for row in of_kind(this, FINDING).itertuples(index=False):
        here = majority(float(row.n_holds), float(row.n_seeds))
        if row.finding in other_rows.index:
            theirs_row = other_rows.loc[row.finding]
            theirs = majority(float(theirs_row["n_holds"]), float(theirs_row["n_seeds"]))
            other_text = f"{int(theirs_row['n_holds'])}/{int(theirs_row['n_seeds'])}"
        else:
            theirs, other_text = None, "not run"
        if here is None or theirs is None:
            verdict = "not comparable"
        else:
            verdict = VERDICTS[{(True, True): 0, (False, False): 1, (True, False): 2, (False, True): 3}[here, theirs]]
        rows.append({"finding": row.finding, "this": f"{int(row.n_holds)}/{int(row.n_seeds)}", "other": other_text,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=["finding", "this", "other", "verdict"])
