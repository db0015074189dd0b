"""What a report sentence is made of: the `Context` it reads (summary.csv, holds.csv, params), the
placeholders of its template and `fill`, which renders them from the tables (a missing number is
"n/a" and listed)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from egolens.names import (
    head_role,
    head_zero,
)
from egolens.recipes import dotted

PLACEHOLDER = re.compile(r"\{(m|v|pct|max|h|fig):([^}]+)\}")
LITTLE_ATTENTION = 0.2
"""Below this share of attention off the ego, the report does not say a head "points" at vehicles."""


@dataclass
class Context:
    """What a finding may read: the aggregate tables and params.yaml (as a dict)."""

    summary: pd.DataFrame
    holds: pd.DataFrame
    params: Mapping[str, object]
    table: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.table = self.summary.set_index("metric")

    def param(self, path: str) -> object:
        return dotted(self.params, path)

    def value(self, metric: str, column: str = "mean") -> float:
        """A number of summary.csv (NaN when the metric or column is missing)."""
        if metric not in self.table.index or column not in self.table.columns:
            return math.nan
        return float(self.table.loc[metric, column])

    def has(self, metric: str) -> bool:
        return math.isfinite(self.value(metric))

    def seeds_with(self, metric: str) -> str:
        """"k/n seeds": in how many of the seeds with a value the 0/1 `metric` is 1 ("n/a" without one)."""
        if metric not in self.table.index:
            return "n/a"
        finite = list(self.seed_values(metric).values())
        return f"{sum(v == 1 for v in finite)}/{len(finite)} seeds" if finite else "n/a"

    def seed_values(self, metric: str) -> dict[int, float]:
        """`metric`'s finite value in each seed that has one ({} when the metric is missing)."""
        if metric not in self.table.index:
            return {}
        values = {int(str(c)[4:]): float(self.table.loc[metric, c]) for c in self.table.columns
                  if re.fullmatch(r"seed\d+", str(c))}
        return {seed: v for seed, v in values.items() if math.isfinite(v)}

    def holds_in_most(self, finding: str) -> bool | None:
        """Whether `finding` holds in more than half of the seeds it could be checked in (None: in none)."""
        rows = self.holds[self.holds["finding"] == finding]
        if rows.empty or int(rows["n_seeds"].iloc[0]) == 0:
            return None
        return int(rows["n_holds"].iloc[0]) > int(rows["n_seeds"].iloc[0]) / 2

    def heads(self) -> list[str]:
        """The head names (head_rank1, ...) this run has, from the closed-loop head ablations."""
        return [head_role(r) for r in range(1, 17) if self.has(head_zero(r, "success_diff"))]

    def ci_side(self, metric: str) -> int | None:
        """Where `metric`'s CI lies: 1 above 0, -1 below 0, 0 across it, None without a CI."""
        low, high = self.value(metric, "ci_low"), self.value(metric, "ci_high")
        if not (math.isfinite(low) and math.isfinite(high)):
            return None
        return 1 if low > 0 else -1 if high < 0 else 0


Sentence = Callable[[Context], str | None]


@dataclass(frozen=True)
class Section:
    """A findings section: a title and its sentences (one finding each)."""

    title: str
    sentences: tuple[Sentence, ...]



def join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]




def format_number(value: float) -> str:
    """3 significant digits, plain notation for ordinary sizes, scientific below 1e-3."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def fill(template: str, summary: pd.DataFrame, holds: pd.DataFrame, figures: Mapping[str, str],
         missing: list[str] | None = None) -> str:
    """Replace every placeholder of `template` (see the module docstring).

    summary: summary.csv (metric, mean, ci_low, ci_high, ...); holds: holds.csv (finding, holds,
    n_seeds, n_holds); figures: figure name -> caption. Unknown names render "n/a" and are appended
    to `missing`.
    """
    table = summary.set_index("metric")
    found = holds.set_index("finding")

    def value(name: str, column: str) -> float:
        return float(table.loc[name, column]) if name in table.index else math.nan

    def replace(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        known = (name in figures if kind == "fig" else name in found.index if kind == "h" else name in table.index)
        if not known:
            if missing is not None:
                missing.append(f"{kind}:{name}")
            return "n/a"
        if kind == "fig":
            return f"[figure `{name}`](figures/{name}.png)"
        if kind == "h":
            return f"{found.loc[name, 'holds']} seeds"
        mean = value(name, "mean")
        if kind == "v":
            return format_number(mean)
        if kind == "max":
            return format_number(value(name, "max") if "max" in table.columns else mean)
        if kind == "pct":
            return "n/a" if not math.isfinite(mean) else f"{100 * mean:.0f}%"
        low, high = value(name, "ci_low"), value(name, "ci_high")
        if not (math.isfinite(low) and math.isfinite(high)):
            return format_number(mean)
        return f"{format_number(mean)} [{format_number(low)}, {format_number(high)}]"

    return PLACEHOLDER.sub(replace, template)


