"""This study beside the kept studies of other recipes: driving side by side and each finding's verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from egolens.recipes import (
    HOLDS_IN_ALL,
    HOLDS_IN_NONE,
    HOLDS_ONLY_IN,
    NOT_COMPARABLE,
    driving_table,
    holds_across,
    recipe_of,
    recipe_text,
)
from egolens.report.context import format_number

THIS = "this study"
"""The column of this study in the comparison tables."""


@dataclass(frozen=True)
class KeptStudy:
    """A study kept for comparison (`python -m presets keep NAME`): its recipe description (name,
    preset, code, seeds and the `recipes.RECIPE_KEYS` settings of recipe.json), its headline.json, its
    holds.csv, the folder they are kept in and whether every code file its stages ran is byte-identical
    to this study's (`kept.same_code`)."""

    recipe: Mapping[str, object]
    headline: Mapping[str, object]
    holds: pd.DataFrame
    folder: str
    same_code: bool = False

    @property
    def name(self) -> str:
        return str(self.recipe.get("name", self.folder))


def kept_line(study: KeptStudy, code: str | None = None) -> str:
    """A bullet naming a kept study: its name, the command that re-runs its recipe (when it has a
    preset), its folder and its recipe; then that it was made by the same code as this study (its code
    files byte-identical here) or, when its code commit is not `code` (this study's, None when
    unknown), that it was made by earlier code."""
    preset = study.recipe.get("preset")
    rerun = f"`python -m presets {preset}`, " if preset else ""
    line = f"- {study.name} ({rerun}kept in `{study.folder}/`): {recipe_text(study.recipe)}"
    made_by = study.recipe.get("code")
    if study.same_code:
        files = study.recipe.get("code_files")
        count = len(files) if isinstance(files, Mapping) else 0
        line += (f"; made by the same code as this study (commit {made_by}: the {count} code files its stages ran "
                 "are byte-identical here), so each finding is defined the same way in both")
    elif made_by is not None and made_by != code:
        line += f"; made by earlier code (commit {made_by}): comparable in kind, not to the last digit"
    return line + "."


def table_lines(table: pd.DataFrame, first: str, cells: Mapping[str, str] | None = None) -> list[str]:
    """A Markdown table of `table` with the header of its first column renamed `first`; `cells`: column
    -> format of its values ("`{}`"), the others shown as they are (numbers by `format_number`)."""
    formats = cells or {}

    def shown(column: str, value: object) -> str:
        if isinstance(value, float):
            return format_number(value)
        return formats.get(column, "{}").format(value)

    lines = ["| " + " | ".join([first, *table.columns[1:]]) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(shown(column, row[column]) for column in table.columns) + " |"
              for _, row in table.iterrows()]
    return lines


def verdict_summary(compared: pd.DataFrame) -> str:
    """One sentence counting the verdicts of `holds_across`'s table and naming the findings that hold in
    some studies only, with their counts (in the table's study order)."""
    verdicts = compared["verdict"]
    only = compared[verdicts.str.startswith(HOLDS_ONLY_IN)]
    studies = list(compared.columns[1:-1])
    text = (f"Of {len(compared)} findings, {(verdicts == HOLDS_IN_ALL).sum()} hold in all {len(studies)} studies, "
            f"{(verdicts == HOLDS_IN_NONE).sum()} in none, {len(only)} in some only and "
            f"{(verdicts == NOT_COMPARABLE).sum()} cannot be compared (a study did not run or check it).")
    if len(only):
        text += f" Those that hold in some only ({', '.join(studies)}): " + "; ".join(
            f"`{row['finding']}` ({', '.join(row[s] for s in studies)})" for _, row in only.iterrows()) + "."
    return text


def comparison_lines(params: Mapping[str, object], headline: Mapping[str, object], holds: pd.DataFrame,
                     kept: Sequence[KeptStudy], code: str | None = None) -> list[str]:
    """The "Beside the kept studies" section: this study's recipe and each kept study's, how their
    agents drive (one column per study, this study first) and each finding's verdict across them (holds in
    all / in none / only in some, by majority of seeds). params: this study's params.yaml dict;
    headline, holds: its headline.json and holds.csv; code: the commit that made this study, None when
    unknown (every kept study with a code is then said to be made by earlier code)."""
    names = [THIS, *(study.name for study in kept)]
    if len(set(names)) != len(names):
        raise ValueError(f"kept studies need distinct names (and none called {THIS!r}): {names}")
    lines = [f"This study: {recipe_text(recipe_of(params))}. Beside it, the kept studies (aggregates only):", "",
             *(kept_line(study, code) for study in kept), "",
             "A finding holds in a study when it holds in more than half of its seeds.", ""]
    headlines = {THIS: headline, **{study.name: study.headline for study in kept}}
    lines += table_lines(driving_table(headlines), "held-out episodes (mean over seeds)")
    compared = holds_across({THIS: holds, **{study.name: study.holds for study in kept}})
    lines += ["", verdict_summary(compared), ""]
    lines += table_lines(compared, "finding", {"finding": "`{}`"})
    return lines
