"""The study's one number policy for every table and JSON file it writes.

- Missing: a number that is not finite (NaN, ±inf) is missing. JSON writes it as `null`
  (`artifacts.json_text`; DVC metrics hold plain numbers only), a CSV as an empty cell (pandas).
- CSV floats: `FLOAT_FORMAT`, 6 significant digits, in every analysis table. The episode and
  step tables (evaluate, reference, rollout) are written `EXACT` (the shortest repr that reads
  back the same value): their returns and shares are rounded to 6 decimals where they are made,
  their recorded observations and Q-values are float32 and keep every digit they have.
- JSON numbers are rounded where they are made: `decimals` for rates and returns of episodes,
  `significant` for analysis summaries; `HEADLINE_DECIMALS` for results/headline.json.
- Rates: an interval of a rate (a fraction of episodes, steps or units) never leaves [0, 1]
  (`rate_interval`); a bootstrap of 0/1 values stays inside by itself, a normal or Student-t
  interval is clipped.
"""

from __future__ import annotations

import math

import pandas as pd

SIGNIFICANT = 6
FLOAT_FORMAT = f"%.{SIGNIFICANT}g"
"""The float format of every analysis table (pandas `float_format`)."""
EXACT = None
"""`csv_text`'s float format for the episode and step tables (values rounded where made, or float32)."""
HEADLINE_DECIMALS = 4
"""Decimals of results/headline.json (the few numbers `dvc exp show` lists)."""


def csv_text(table: pd.DataFrame, float_format: str | None = FLOAT_FORMAT) -> str:
    """A table as the study writes it: no index, floats in `float_format`, missing cells empty."""
    return table.to_csv(index=False, float_format=float_format)


def finite(value: object) -> bool:
    """True for a number that is not missing (a finite int or float)."""
    return value is not None and math.isfinite(float(value))      # type: ignore[arg-type]


def decimals(value: float | None, places: int) -> float | None:
    """`value` rounded to `places` decimals; None (null) when it is missing."""
    return round(float(value), places) if finite(value) else None


def significant(value: float | None, digits: int = SIGNIFICANT) -> float | None:
    """`value` rounded to `digits` significant digits (as `FLOAT_FORMAT` prints it); None when missing."""
    return float(f"{float(value):.{digits}g}") if finite(value) else None


def rate_interval(low: float, high: float) -> tuple[float, float]:
    """An interval of a rate clipped to [0, 1]; a missing bound stays missing."""
    return (max(0.0, low) if math.isfinite(low) else low, min(1.0, high) if math.isfinite(high) else high)
