"""What every figure shares: seaborn's style without global rcParams, the colours of models and
reference policies, intervals over seeds, and small array helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ParamSpec

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from egolens import stats

ENTITIES = ["ego", "others"]
MODEL_COLOURS = {"trained": "#4C72B0", "untrained": "#A5A5A5"}
REFERENCE_STYLES = {"constant_slower": ("constant SLOWER", "#8C8C8C", ":"),
                    "constant_idle": ("constant IDLE", "#DD8452", "--"),
                    "constant_faster": ("constant FASTER", "#C44E52", ":"),
                    "rule_based": ("rule-based driver", "#8172B3", "-."),
                    "clairvoyant": ("clairvoyant planner (ceiling)", "#55A868", "-")}

"""Label, colour and line style of each reference policy (results/reference)."""
DIVERGING = "RdBu_r"
EGO_COLOUR, OTHER_COLOUR, ROAD_COLOUR = "#2CA02C", "#7F7F7F", "#E6E6E6"
LANE_WIDTH = 4.0

"""m; intersection-v0's roads have one lane each way, so they are drawn 2·LANE_WIDTH wide."""
P = ParamSpec("P")


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% Student-t interval (low, high) of the mean of `values` (NaNs dropped; seaborn's
    `errorbar` callable); a point at the mean if n < 2. The interval of `egolens.aggregate`."""
    mean, low, high, _ = stats.t_interval(np.asarray(values, dtype=np.float64))
    return (mean, mean) if np.isnan(low) else (low, high)


def styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw under seaborn's whitegrid style and notebook context without touching global rcParams."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with mpl.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}):
            return draw(*args, **kwargs)
    return wrapper


def as_matrix(table: pd.DataFrame, rows: Sequence | None = None, cols: Sequence | None = None) -> np.ndarray:
    """A (row, col, value) table as a 2-d array, rows and columns in the given (else appearance) order."""
    pivot = table.pivot(index="row", columns="col", values="value")
    return pivot.reindex(index=pd.unique(table["row"]) if rows is None else rows,
                         columns=pd.unique(table["col"]) if cols is None else cols).to_numpy(dtype=np.float64)


def symmetric_limit(*arrays: np.ndarray) -> float:
    return max(float(np.nanmax(np.abs(a))) for a in arrays) or 1.0


def seed_palette(seeds: Sequence) -> dict:
    return dict(zip(seeds, sns.color_palette("colorblind", len(seeds))))
