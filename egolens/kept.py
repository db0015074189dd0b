"""A study kept for comparison (`python -m presets keep NAME`): what its recipe.json and README say.

Pure functions of a study's params.yaml dict, its name and the git revisions it came from; the
command reads git and writes `results/<name>/` (the aggregate's `KEPT_FILES`, recipe.json, README.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from egolens.recipes import recipe_of, recipe_text

KEPT_FILES = ("headline.json", "holds.csv", "summary.csv")
"""The aggregate stage's outputs a kept study holds (copied from the revision's results/)."""


def kept_recipe(name: str, params: Mapping[str, object], code: str, preset: str | None) -> dict[str, object]:
    """recipe.json of a kept study: its name, the preset that re-runs it (None: no preset of that
    name), the commit of the code that made its aggregate, then `recipes.recipe_of(params)` (seeds and
    each `recipes.RECIPE_KEYS` setting params has; a setting params lacks is left out)."""
    return {"name": name, "preset": preset, "code": code, **recipe_of(params)}


def recipe_json(recipe: Mapping[str, object]) -> str:
    """The text of recipe.json: `kept_recipe`'s dict as indented JSON, booleans kept as true / false (a
    setting, not a metric) and a final newline."""
    return json.dumps(dict(recipe), indent=2) + "\n"


def kept_readme(recipe: Mapping[str, object], ref: str, commit: str) -> str:
    """README.md of a kept study from its recipe.json (`kept_recipe`), the git revision it was taken
    from as given (`ref`: a branch, a commit or an experiment ref) and that revision's commit."""
    name, preset, code = recipe["name"], recipe.get("preset"), recipe["code"]
    taken = f"`{ref}` (commit {commit})" if ref != commit else f"commit {commit}"
    rerun = (f"`python -m presets {preset}` re-runs the recipe with today's code as the DVC experiment "
             f'"{preset}" (`presets/{preset}.yaml` lists its settings).' if preset else
             f"No preset is named {name}: to re-run the recipe, set params.yaml to the settings recipe.json names.")
    return "\n".join([
        f"# {name}: a study kept for comparison", "",
        f"`{'`, `'.join(KEPT_FILES)}` are the aggregate of the study at git revision {taken}: "
        f"results/ as the aggregate stage wrote it there, made by the code of commit {code} (the last commit "
        "that changed `results/headline.json` at that revision). Only the aggregate is kept: no per-seed "
        "tables, checkpoints or figures.", "",
        f"Its recipe: {recipe_text(recipe)}. `recipe.json` names it: the seeds and the settings of "
        "`egolens.recipes.RECIPE_KEYS` that the revision's params.yaml has, the preset and the code commit.", "",
        rerun, "",
        f"Written by `python -m presets keep {name} --ref {ref}`. The report reads `headline.json`, `holds.csv` "
        "and `recipe.json` to set this study beside the current one (section \"Beside the kept studies\"); "
        "numbers made by other code are comparable in kind, not to the last digit.", ""])
