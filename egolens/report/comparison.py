"""This study beside another recipe's study: driving side by side and each finding's verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from egolens.recipes import VERDICTS, driving_table, holds_comparison, recipe_of, recipe_text
from egolens.report.context import format_number, join


@dataclass(frozen=True)
class OtherStudy:
    """Another recipe's study, for the comparison section: its recipe description (name, preset,
    code, seeds and the `recipes.RECIPE_KEYS` settings), its headline.json and its holds.csv."""

    recipe: Mapping[str, object]
    headline: Mapping[str, object]
    holds: pd.DataFrame
    folder: str = "results/paper"


def comparison_lines(params: Mapping[str, object], headline: Mapping[str, object], holds: pd.DataFrame,
                     other: OtherStudy) -> list[str]:
    """The "Under both recipes" section: how the two studies' agents drive, side by side, and each
    finding's verdict (holds under both / neither / one recipe only, by majority of seeds)."""
    name = str(other.recipe.get("name", "other recipe"))
    lines = [f"This study: {recipe_text(recipe_of(params))}. Beside it, the {name} "
             f"(`python -m presets {other.recipe.get('preset')}`: {recipe_text(other.recipe)}), whose aggregate "
             f"is kept in `{other.folder}/`; it was made by earlier code (commit {other.recipe.get('code')}), so "
             "its numbers are comparable in kind, not to the last digit. A finding holds in a study when it holds "
             "in more than half of its seeds.", "",
             f"| held-out episodes (mean over seeds) | this study | {name} |", "| --- | --- | --- |"]
    driving = driving_table(headline, other.headline)
    lines += [f"| {row.measure} | {format_number(row.this)} | {format_number(row.other)} |"
              for row in driving.itertuples(index=False)]
    compared = holds_comparison(holds, other.holds)
    counts = compared["verdict"].value_counts()
    depends = compared[compared["verdict"].isin(VERDICTS[2:])]
    summary = (f"{counts.get(VERDICTS[0], 0)} of {len(compared)} findings hold under both recipes and "
               f"{counts.get(VERDICTS[1], 0)} under neither.")
    if len(depends):
        summary += " These depend on the recipe (this study, the other): " + join(
            [f"`{row.finding}` ({row.this}, {row.other})" for row in depends.itertuples(index=False)]) + "."
    else:
        summary += " No finding depends on the recipe."
    lines += ["", summary, "", f"| finding | this study | {name} | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| `{row.finding}` | {row.this} | {row.other} | {row.verdict} |"
              for row in compared.itertuples(index=False)]
    return lines


