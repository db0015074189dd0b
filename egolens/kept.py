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
CODE_FOLDERS = ("egolens/", "stages/")
"""Where a study's code lives: the dependencies of its stages under these folders are its code files."""


def kept_recipe(name: str, params: Mapping[str, object], code: str, preset: str | None,
                code_files: Mapping[str, str] | None = None) -> dict[str, object]:
    """recipe.json of a kept study: its name, the preset that re-runs it (None: no preset of that
    name), the commit of the code that made its aggregate, then `recipes.recipe_of(params)` (seeds and
    each `recipes.RECIPE_KEYS` setting params has; a setting params lacks is left out), and last, when
    given, `code_files` ({path: md5} of the code its stages ran, from `code_files`)."""
    recipe = {"name": name, "preset": preset, "code": code, **recipe_of(params)}
    return recipe if code_files is None else {**recipe, "code_files": dict(code_files)}


def code_files(lock: Mapping[str, object]) -> dict[str, str]:
    """{path: md5} of every code file (under `CODE_FOLDERS`) that a study's stages depended on, from
    its parsed dvc.lock, sorted by path. Raises ValueError when two stages recorded different md5s
    for one file: their outputs were made by different code, so the study is not one code's (`dvc
    status` would list the older stage); reproduce it before keeping it."""
    files: dict[str, str] = {}
    stages = lock.get("stages") or {}
    for name, stage in stages.items():  # type: ignore[union-attr]
        for dep in stage.get("deps", []):
            path, md5 = dep.get("path", ""), dep.get("md5")
            if md5 is None or not path.startswith(CODE_FOLDERS):
                continue
            if files.setdefault(path, md5) != md5:
                raise ValueError(f"{path}: the study's stages ran different versions of it (stage {name} recorded "
                                 f"md5 {md5}, an earlier stage {files[path]}); reproduce the study before keeping it")
    return dict(sorted(files.items()))


def same_code(kept: Mapping[str, str], current: Mapping[str, str]) -> bool:
    """Whether a kept study was made by the code of this checkout: it recorded its code files (`kept`,
    {path: md5}; empty for a study kept without them) and every one has the same md5 in `current`
    ({path: md5} of this checkout's files; a file missing here is absent)."""
    return bool(kept) and all(current.get(path) == md5 for path, md5 in kept.items())


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
        "`egolens.recipes.RECIPE_KEYS` that the revision's params.yaml has, the preset, the code commit and, "
        "when the revision has a dvc.lock, `code_files`: the md5 of every code file its stages ran (the report "
        "says the study was made by the same code as the current one when each of them is byte-identical "
        "there).", "",
        rerun, "",
        f"Written by `python -m presets keep {name} --ref {ref}`. The report reads `headline.json`, `holds.csv` "
        "and `recipe.json` to set this study beside the current one (section \"Beside the kept studies\"); "
        "numbers made by other code are comparable in kind, not to the last digit.", ""])
