"""A semantic dictionary of neurons: each neuron's top activations and the scene facts that set them
apart from the rest, as a sentence that states only what passed a significance test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def top_activations(acts: np.ndarray, facts: pd.DataFrame | None, top_k: int) -> pd.DataFrame:
    """Each neuron's `top_k` highest-activating rows: tidy (neuron, rank, index, activation, and
    the facts of that row). acts: [M, units]; index is the row of acts / facts; ties go to the
    earlier row."""
    acts = np.asarray(acts)
    order = np.argsort(-acts, axis=0, kind="stable")[:top_k]        # [k, units]
    k = order.shape[0]
    neuron = np.tile(np.arange(acts.shape[1]), (k, 1))
    table = pd.DataFrame({
        "neuron": neuron.T.reshape(-1), "rank": np.tile(np.arange(k), acts.shape[1]),
        "index": order.T.reshape(-1), "activation": acts[order, neuron].T.reshape(-1),
    })
    if facts is not None:
        table = pd.concat([table, facts.iloc[table["index"]].reset_index(drop=True)], axis=1)
    return table

LABELS = {
    "distance": ("distance", "m"), "ttc": ("time to collision", "s"), "closing_speed": ("closing speed", "m/s"),
    "bearing_deg": ("bearing", "deg"), "ego_speed": ("ego speed", "m/s"),
    "nearest_distance": ("nearest-vehicle distance", "m"), "min_ttc": ("min time to collision", "s"),
    "longitudinal": ("longitudinal offset", "m"), "lateral": ("lateral offset", "m"),
}
"""Readable name and unit of numeric facts, for generated descriptions."""

BOOL_LABELS = {"crossing": ("crossing the ego's path", "not crossing the ego's path"),
               "ahead": ("ahead of the ego", "behind the ego")}

DESCRIBED = ("distance", "ttc", "closing_speed", "bearing_deg", "crossing", "ahead", "ego_speed",
             "nearest_distance", "min_ttc", "action")
"""Facts `semantic_dictionary` summarises by default (those present in the facts frame)."""

SIDES = ("ahead", "right", "behind", "left")

FIRES_FOR = "fires for "
"""Prefix of a description with at least one statement that passed the significance test."""
NEVER_ACTIVE = "never active"
NO_FACT = "no scene fact distinguishes its top rows"


def side_of(bearing_deg: np.ndarray) -> np.ndarray:
    """Bearing (deg, positive = the ego's right) -> 'ahead' (|b| < 45), 'right', 'behind', 'left'."""
    b = np.asarray(bearing_deg, dtype=np.float64)
    sector = np.floor(((b + 45.0) % 360.0) / 90.0)
    out = np.asarray(SIDES, dtype=object)[np.nan_to_num(sector).astype(int) % 4]
    return np.where(np.isnan(b), None, out)


@dataclass
class _Clause:
    fact: str
    text: str
    hits: int
    valid: int
    base: float

    @property
    def lift(self) -> float:
        return self.hits / self.valid - self.base if self.valid else 0.0

    @property
    def p_value(self) -> float:
        """One-sided binomial tail P(X >= hits), X ~ Binomial(valid, base): chance of this many
        top rows satisfying the statement if they were drawn at random."""
        return float(sum(math.comb(self.valid, i) * self.base ** i * (1 - self.base) ** (self.valid - i)
                         for i in range(self.hits, self.valid + 1)))

    def words(self) -> str:
        return f"{self.text} ({self.hits}/{self.valid} top vs {self.base:.0%} overall)"


def _number(x: float) -> str:
    return "inf" if np.isinf(x) else f"{x:.1f}"


def _clauses(name: str, values: pd.Series, top: np.ndarray) -> list[_Clause]:
    """Candidate statements about fact `name` for the top rows (positions `top`)."""
    valid = values.notna().to_numpy()
    top_valid = top[valid[top]]
    if top_valid.size == 0:
        return []
    clauses = []

    def add(text: str, condition: np.ndarray) -> None:
        clauses.append(_Clause(name, text, int(condition[top_valid].sum()), int(top_valid.size),
                               float(condition[valid].mean())))

    if pd.api.types.is_bool_dtype(values):
        flag = values.to_numpy(dtype=bool)
        yes, no = BOOL_LABELS.get(name, (name, f"not {name}"))
        add(yes, flag)
        add(no, ~flag)
    elif pd.api.types.is_numeric_dtype(values) and name == "bearing_deg":
        sides = side_of(values.to_numpy(dtype=np.float64))
        for side in SIDES:
            add(f"bearing on the {side}" if side in ("right", "left") else f"bearing {side}", sides == side)
    elif pd.api.types.is_numeric_dtype(values):
        x = values.to_numpy(dtype=np.float64)
        label, unit = LABELS.get(name, (name, ""))
        unit = f" {unit}" if unit else ""
        low = float(np.quantile(x[top_valid], 0.8, method="higher"))
        high = float(np.quantile(x[top_valid], 0.2, method="lower"))
        with np.errstate(invalid="ignore"):
            add(f"{label} ≤ {_number(low)}{unit}", x <= low)
            add(f"{label} infinite" if np.isinf(high) else f"{label} ≥ {_number(high)}{unit}", x >= high)
    else:
        labels = values.to_numpy(dtype=object)
        for value in pd.unique(values[valid]):
            add(f"{name} = {value}", labels == value)
    return clauses


def _summaries(name: str, values: pd.Series, top: np.ndarray) -> dict[str, object]:
    chosen = values.iloc[top]
    if pd.api.types.is_bool_dtype(values):
        return {f"frac_{name}": float(chosen.mean()) if len(chosen) else np.nan}
    if pd.api.types.is_numeric_dtype(values):
        x = chosen.to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        out: dict[str, object] = {f"median_{name}": float(np.median(x)) if x.size else np.nan}
        if name == "bearing_deg":
            sides = pd.Series(side_of(x), dtype=object).value_counts()
            out |= {"dominant_side": sides.index[0] if len(sides) else None,
                    "dominant_side_frac": float(sides.iloc[0] / x.size) if len(sides) else np.nan}
        return out
    counts = chosen.dropna().value_counts()
    return {f"dominant_{name}": counts.index[0] if len(counts) else None,
            f"dominant_{name}_frac": float(counts.iloc[0] / counts.sum()) if len(counts) else np.nan}


def semantic_dictionary(acts: np.ndarray, facts: pd.DataFrame, top_k: int, columns: Sequence[str] | None = None,
                        min_lift: float = 0.25, alpha: float = 0.05, max_clauses: int = 3) -> pd.DataFrame:
    """One entry per neuron summarising the scene facts of its `top_k` highest-activating rows.

    acts: [M, units] aligned with facts (M rows; steps or (step, vehicle) pairs). Summarised
    `columns` (default: those of `DESCRIBED` present): numeric -> median_<fact> (bearing also
    dominant_side and its fraction), boolean -> frac_<fact>, categorical (action) ->
    dominant_<fact> and its fraction. `description` is generated from the numbers: every
    candidate statement (a numeric fact below the top rows' 80th or above their 20th
    percentile, a flag true or false, a side, a category) is scored by its lift, the fraction of
    top rows where it holds minus the fraction of all rows. A statement is kept when its lift is
    >= `min_lift` and its binomial tail p-value (as many hits among random rows) is <= `alpha`
    divided by the number of statements tried for that neuron (Bonferroni); up to `max_clauses`
    of distinct facts are kept, best lift first, e.g.
    "fires for distance ≤ 4.2 m (10/10 top vs 9% overall); bearing on the right (8/10 top vs 30% overall)".
    Columns: neuron, max_activation, top_k_min_activation, <summaries>, description. The top
    rows themselves: `top_activations`.
    """
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or len(acts) != len(facts):
        raise ValueError(f"acts {acts.shape} must be [M, units] with M = len(facts) = {len(facts)}")
    facts = facts.reset_index(drop=True)
    names = [c for c in DESCRIBED if c in facts.columns] if columns is None else list(columns)
    order = np.argsort(-acts, axis=0, kind="stable")[:top_k]
    entries = []
    for neuron in range(acts.shape[1]):
        top = order[:, neuron]
        entry: dict[str, object] = {"neuron": neuron, "max_activation": float(acts[top[0], neuron]),
                                    "top_k_min_activation": float(acts[top[-1], neuron])}
        tried: list[list[_Clause]] = []
        for name in names:
            entry |= _summaries(name, facts[name], top)
            tried.append(_clauses(name, facts[name], top))
        threshold = alpha / max(1, sum(len(c) for c in tried))
        candidates = [max(kept, key=lambda c: c.lift) for kept in
                      ([c for c in clauses if c.lift >= min_lift and c.p_value <= threshold] for clauses in tried)
                      if kept]
        candidates.sort(key=lambda c: -c.lift)
        if acts[top[0], neuron] <= 0:
            entry["description"] = NEVER_ACTIVE
        elif candidates:
            entry["description"] = FIRES_FOR + "; ".join(c.words() for c in candidates[:max_clauses])
        else:
            entry["description"] = NO_FACT
        entries.append(entry)
    return pd.DataFrame(entries)


def significant(descriptions: pd.Series | Sequence[str]) -> np.ndarray:
    """Whether each `semantic_dictionary` description kept at least one statement that passed the
    significance test (it starts with `FIRES_FOR`) -> bool [n]."""
    return np.asarray([isinstance(d, str) and d.startswith(FIRES_FOR) for d in descriptions], dtype=bool)


