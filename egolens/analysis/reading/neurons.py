"""Neurons of the ego-attention network: statistics, fact correlations, a semantic dictionary and
feature visualisation (optimised observations, drawn as a top-down scene).

Conventions. Step-level layers (the ego embedding `[N, 1, U]`, the output MLP `[N, U]`) give one
row per recorded step; the others' embedding `[N, E-1, U]` gives one row per (step, present other
vehicle) after `vehicle_rows`, in the row order of `egolens.rollout.vehicles_table` (step-major,
then observation row). A facts DataFrame is aligned row by row with the activations it describes
(`vehicle_facts_frame`, `step_facts_frame`). Activations are read from recordings
(`egolens.rollout.rollout_arrays`) or through `egolens.hooks`; nothing here re-implements the net.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrow, Patch
from torch import nn

from egolens.config import EnvConfig, FeaturesRange
from egolens.figures import draw_vehicle, scene_axes
from egolens.hooks import run_with_cache
from egolens.numbers import significant as significant_digits
from egolens.scene import denormalize
from egolens.sites import PATTERN, json_key
from egolens.stats import spearman_columns
from egolens.vocabulary import ACTIONS, PRESENT_AT, REFERENCE_FEATURES, present

TTC_CAP = 20.0
"""Seconds; times to collision above it (inf included) are set to it before rank correlations."""

TTC_COLUMNS = ("ttc", "min_ttc")

VEHICLE_FACTS = ("distance", "ttc", "closing_speed", "bearing_deg", "crossing", "ahead")
"""Per-vehicle facts correlated with the others' embedding neurons."""

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


# --------------------------------------------------------------------------------------------
# Rows and facts


def vehicle_rows(acts: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-vehicle activations with absent vehicles dropped.

    acts: [N, E-1, U] (entry j-1 is observation row j, as `others_embedding` sees them);
    obs: [N, E, F] (presence from feature 0, present when >= 0.5).
    Returns (acts [M, U], step_index [M], row [M]) for the M present (step, other vehicle) pairs,
    step-major then row (1 … E-1): the order of `egolens.rollout.vehicles_table`.
    """
    acts, obs = np.asarray(acts), np.asarray(obs)
    if acts.ndim != 3 or acts.shape[:2] != (obs.shape[0], obs.shape[1] - 1):
        raise ValueError(f"acts {acts.shape} must be [N, E-1, U] for obs {obs.shape}")
    step_index, other = np.nonzero(present(obs)[:, 1:])
    return acts[step_index, other], step_index, other + 1


def step_activations(acts: np.ndarray) -> np.ndarray:
    """A step-level layer as [N, U]: the ego embedding [N, 1, U] squeezed, [N, U] unchanged."""
    acts = np.asarray(acts)
    if acts.ndim == 3 and acts.shape[1] == 1:
        return acts[:, 0]
    if acts.ndim != 2:
        raise ValueError(f"expected [N, U] or [N, 1, U] activations, got {acts.shape}")
    return acts


def vehicle_facts_frame(obs: np.ndarray, facts: dict[str, np.ndarray],
                        action: np.ndarray | None = None) -> pd.DataFrame:
    """One row per present other vehicle (the order of `vehicle_rows`): step_index, row, its
    `egolens.scene.scene_facts` (facts: {name: [N, E]}) and, if given, the step's action name.

    obs: [N, E, F]; action: [N] action indices.
    """
    step_index, other = np.nonzero(present(np.asarray(obs))[:, 1:])
    row = other + 1
    columns: dict[str, np.ndarray] = {"step_index": step_index, "row": row}
    columns |= {name: np.asarray(value)[step_index, row] for name, value in facts.items()}
    if action is not None:
        columns["action"] = np.asarray(ACTIONS, dtype=object)[np.asarray(action)[step_index]]
    return pd.DataFrame(columns)


def step_facts_frame(obs: np.ndarray, facts: dict[str, np.ndarray], action: np.ndarray, q: np.ndarray,
                     cfg: EnvConfig) -> pd.DataFrame:
    """One row per step: ego_speed (m/s), action (name) and its one-hot `action_<name>` (bool),
    `q_<name>` per action, nearest_distance (m, NaN without other vehicles) and min_ttc
    (s, inf when nothing is on a collision course).

    obs: [N, E, F]; facts: `scene_facts(obs)` {name: [N, E]}; action: [N]; q: [N, A].
    """
    kin = denormalize(np.asarray(obs), cfg)
    action, q = np.asarray(action), np.asarray(q)
    names = [a.lower() for a in ACTIONS]
    columns: dict[str, np.ndarray] = {
        "ego_speed": np.hypot(kin.vx[:, 0], kin.vy[:, 0]),
        "action": np.asarray(ACTIONS, dtype=object)[action],
    }
    columns |= {f"action_{name}": action == i for i, name in enumerate(names)}
    columns |= {f"q_{name}": q[:, i] for i, name in enumerate(names)}
    distance, ttc = np.asarray(facts["distance"], dtype=float), np.asarray(facts["ttc"], dtype=float)
    nearest = np.where(np.isnan(distance), np.inf, distance).min(axis=1)
    columns["nearest_distance"] = np.where(np.isinf(nearest), np.nan, nearest)
    columns["min_ttc"] = np.where(np.isnan(ttc), np.inf, ttc).min(axis=1)
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------------------------
# Statistics


def activation_stats(acts: np.ndarray, layer: str) -> pd.DataFrame:
    """Per neuron of acts [N, units]: layer, neuron, mean, std, frac_active (> 0), dead (never
    active), max. Flatten per-vehicle layers first with `vehicle_rows`."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"expected non-empty [N, units] activations, got {acts.shape}")
    active = acts > 0
    return pd.DataFrame({
        "layer": layer, "neuron": np.arange(acts.shape[1]), "mean": acts.mean(axis=0), "std": acts.std(axis=0),
        "frac_active": active.mean(axis=0), "dead": ~active.any(axis=0), "max": acts.max(axis=0),
    })


def activations_over_time(acts: np.ndarray, episode: np.ndarray, step: np.ndarray, which_episode: int,
                          top_k: int) -> pd.DataFrame:
    """Tidy (step, neuron, activation) over one episode for its `top_k` most variable neurons.

    acts: [N, units] (step-level); episode, step: [N]. Neurons are ranked by their standard
    deviation within the episode (ties: lower index first); rows sorted by neuron then step.
    """
    acts, episode, step = np.asarray(acts), np.asarray(episode), np.asarray(step)
    rows = np.nonzero(episode == which_episode)[0]
    if rows.size == 0:
        raise ValueError(f"no recorded step of episode {which_episode}")
    rows = rows[np.argsort(step[rows], kind="stable")]
    chosen = np.argsort(-acts[rows].std(axis=0), kind="stable")[:top_k]
    neurons = np.sort(chosen)
    return pd.DataFrame({
        "step": np.tile(step[rows], neurons.size),
        "neuron": np.repeat(neurons, rows.size),
        "activation": acts[rows][:, neurons].T.reshape(-1),
    })


def _numeric_facts(facts: pd.DataFrame, ttc_cap: float) -> dict[str, np.ndarray]:
    """Numeric and boolean columns as float arrays. Times to collision (`TTC_COLUMNS`) are capped
    at ttc_cap (inf included: "no collision within the cap"); other infinities become NaN."""
    out = {}
    for name in facts.columns:
        column = facts[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            if name in TTC_COLUMNS:
                values = np.minimum(values, ttc_cap)
            out[name] = np.where(np.isinf(values), np.nan, values)
    return out


def neuron_fact_correlations(acts: np.ndarray, facts: pd.DataFrame, ttc_cap: float = TTC_CAP,
                             columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Spearman correlation of every neuron with every fact: tidy (neuron, fact, spearman, n).

    acts: [M, units], aligned row by row with `facts` (M rows): per-vehicle activations with
    `vehicle_facts_frame` (distance, ttc, closing_speed, bearing_deg, crossing, ahead), step-level
    ones with `step_facts_frame` (ego speed, action one-hot, Q-values, nearest distance, min ttc).
    Numeric and boolean columns are used (or `columns`); ttc and min_ttc are capped at
    `ttc_cap` (inf -> cap); rows where a fact is NaN are left out of that fact's correlation (n counts the
    rest). A constant neuron or fact gives NaN.
    """
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or len(acts) != len(facts):
        raise ValueError(f"acts {acts.shape} must be [M, units] with M = len(facts) = {len(facts)}")
    numeric = _numeric_facts(facts if columns is None else facts[list(columns)], ttc_cap)
    parts = []
    for name, values in numeric.items():
        valid = ~np.isnan(values)
        rho = spearman_columns(acts[valid], values[valid]) if valid.sum() > 1 else np.full(acts.shape[1], np.nan)
        parts.append(pd.DataFrame({"neuron": np.arange(acts.shape[1]), "fact": name, "spearman": rho,
                                   "n": int(valid.sum())}))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Semantic dictionary


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


# --------------------------------------------------------------------------------------------
# Feature visualisation


Cache = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """A differentiable quantity to maximise: fn(q [R, A], cache) -> [R].

    `names`: the activations fn reads; the cache holds them with their gradients (shapes as in
    `egolens.hooks.run_with_cache`) plus 'obs', the observations [R, E, F] being optimised.
    """

    fn: Callable[[torch.Tensor, Cache], torch.Tensor]
    names: tuple[str, ...] = field(default=())
    label: str = ""

    def __call__(self, q: torch.Tensor, cache: Cache) -> torch.Tensor:
        return self.fn(q, cache)


def neuron_objective(name: str, index: int | tuple[int, ...]) -> Objective:
    """The activation `name` at `index`: an int indexes the activation flattened per sample
    (e.g. unit u of `output_layer.hook_post.0` [R, U] or `ego_embedding.hook_post.1` [R, 1, U]);
    a tuple indexes its trailing dimensions (e.g. (j - 1, u) for unit u of observation row j in
    `others_embedding.hook_post.1` [R, E-1, U])."""
    def fn(q: torch.Tensor, cache: Cache) -> torch.Tensor:
        act = cache[name]
        if isinstance(index, tuple):
            return act[(slice(None), *index)]
        return act.reshape(act.shape[0], -1)[:, index]
    return Objective(fn, (name,), f"{name}[{index}]")


def advantage_objective(action: int) -> Objective:
    """The advantage Q(s, a) − mean_a' Q(s, a') of `action`."""
    return Objective(lambda q, cache: q[:, action] - q.mean(dim=1), (), f"advantage[{action}]")


def attention_objective(head: int, entity: int) -> Objective:
    """The attention weight of the ego's query in `head` on observation row `entity`."""
    return Objective(lambda q, cache: cache[PATTERN][:, head, 0, entity], (PATTERN,), f"attention[h{head}, {entity}]")


def advantage(q: np.ndarray) -> np.ndarray:
    """Recorded advantages Q(s, a) − mean_a' Q(s, a') [N, A] of q [N, A] (as `advantage_objective`)."""
    q = np.asarray(q, dtype=np.float64)
    return q - q.mean(axis=1, keepdims=True)


def typical_step(obs: np.ndarray) -> int:
    """Index of a typical recorded step of obs [N, E, F]: the first whose number of present vehicles
    is the (lower) median over steps; its presence pattern suits `optimise_observation`."""
    count = present(np.asarray(obs)).sum(axis=1)
    if count.size == 0:
        raise ValueError("no recorded step")
    return int(np.nonzero(count == np.quantile(count, 0.5, method="lower"))[0][0])


def neurons_to_visualise(acts: np.ndarray, correlations: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to `n` neurons of acts [N, U] worth a feature visualisation, never-active ones excluded:
    alternately the most active (highest mean activation) and the most fact-correlated (largest
    |Spearman| with any fact of `correlations`, a `neuron_fact_correlations` table of the same
    neurons, NaN ignored) not chosen yet; ties go to the lower neuron index.

    Columns: neuron, reason ("most active" / "most correlated"), mean_activation, and its strongest
    fact and spearman (NaN / None without a finite correlation), in the order chosen.
    """
    acts = np.asarray(acts, dtype=np.float64)
    units = acts.shape[1]
    mean = acts.mean(axis=0)
    alive = (acts > 0).any(axis=0)
    finite = correlations[np.isfinite(correlations["spearman"].to_numpy(dtype=np.float64))]
    strongest = finite.loc[finite["spearman"].abs().groupby(finite["neuron"]).idxmax()].set_index("neuron")
    strength = np.full(units, -np.inf)
    strength[strongest.index.to_numpy()] = strongest["spearman"].abs().to_numpy()
    queues = ([int(u) for u in np.argsort(-mean, kind="stable") if alive[u]],
              [int(u) for u in np.argsort(-strength, kind="stable") if alive[u] and np.isfinite(strength[u])])
    reasons = ("most active", "most correlated")
    chosen: list[tuple[int, str]] = []
    turn = 0
    while len(chosen) < n and any(queues):
        queue = queues[turn % 2]
        taken = {u for u, _ in chosen}
        while queue and queue[0] in taken:
            queue.pop(0)
        if queue:
            chosen.append((queue.pop(0), reasons[turn % 2]))
        turn += 1
    neurons = [u for u, _ in chosen]
    return pd.DataFrame({
        "neuron": np.asarray(neurons, dtype=int), "reason": [r for _, r in chosen],
        "mean_activation": mean[neurons],
        "fact": [strongest["fact"].get(u) for u in neurons],
        "spearman": [float(strongest["spearman"].get(u, np.nan)) for u in neurons],
    })


def _prior_mean(prior_obs: torch.Tensor) -> torch.Tensor:
    """Mean recorded state [E, F] from prior_obs [N, E, F]: row 0 is the mean ego row; every other
    row is the mean of all present other vehicles (rows are shuffled, so no row is a fixed vehicle)."""
    others = prior_obs[:, 1:].reshape(-1, prior_obs.shape[-1])
    others = others[present(others)]
    other_mean = others.mean(dim=0) if len(others) else torch.zeros(prior_obs.shape[-1])
    return torch.cat([prior_obs[:, 0].mean(dim=0)[None], other_mean.expand(prior_obs.shape[1] - 1, -1)])


def optimise_observation(net: nn.Module, objective: Callable[[torch.Tensor, Cache], torch.Tensor],
                         presence: np.ndarray | torch.Tensor, n_restarts: int = 4, steps: int = 200, lr: float = 0.05,
                         prior_obs: np.ndarray | torch.Tensor | None = None, prior_weight: float = 0.1,
                         diversity: float = 0.0, seed: int = 0,
                         features: Sequence[str] = REFERENCE_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Observations that maximise `objective`, by gradient ascent (Adam) from `n_restarts` seeds.

    presence: [E] (1 present, 0 absent; the ego, row 0, must be present), fixed: absent rows stay
    all zeros and the absent mask is passed to the net. Present rows are parameterised as
    x, y, vx, vy = tanh(u) ∈ [−1, 1] and (cos_h, sin_h) = (cos θ, sin θ); u ~ N(0, 0.5²) and
    θ ~ U(−π, π) from a torch.Generator seeded by `seed`, so results are deterministic.
    Loss summed over restarts: −objective + prior_weight · ‖obs − prior‖² over present rows, the
    prior being the mean recorded state (prior_obs [N, E, F], optional; `_prior_mean`),
    − diversity · Σ_{r<s} rms(obs_r − obs_s) (present rows, non-presence features).
    `objective`: an `Objective` (or any fn(q, cache) returning [R]; then every activation is
    cached). Only u and θ receive gradients; the net's parameters are left untouched.

    Returns (observations [R, E, F], objective values [R]) at the last step, as float32 numpy.
    """
    if tuple(features) != REFERENCE_FEATURES:
        raise ValueError(f"features must be {list(REFERENCE_FEATURES)}, got {list(features)}")
    occupied = torch.as_tensor(np.asarray(presence), dtype=torch.float32) >= PRESENT_AT
    if occupied.ndim != 1 or not bool(occupied[0]):
        raise ValueError("presence must be [E] with the ego (row 0) present")
    entities = occupied.shape[0]
    names = getattr(objective, "names", None)
    g = torch.Generator().manual_seed(seed)
    u = (torch.randn(n_restarts, entities, 4, generator=g) * 0.5).requires_grad_()
    theta = ((torch.rand(n_restarts, entities, generator=g) * 2 - 1) * torch.pi).requires_grad_()
    keep = occupied.float()[None, :, None]                                       # [1, E, 1]
    mask = (~occupied)[None].expand(n_restarts, entities).clone()
    prior = None if prior_obs is None else _prior_mean(torch.as_tensor(np.asarray(prior_obs), dtype=torch.float32))

    def build() -> torch.Tensor:
        rows = torch.cat([torch.ones(n_restarts, entities, 1), torch.tanh(u),
                          torch.cos(theta)[..., None], torch.sin(theta)[..., None]], dim=-1)
        return rows * keep                                                      # [R, E, F]

    def value(obs: torch.Tensor) -> torch.Tensor:
        q, cache = run_with_cache(net, obs, names, mask, grad=True)
        return objective(q, cache | {"obs": obs})

    optimiser = torch.optim.Adam([u, theta], lr=lr)
    pairs = torch.triu_indices(n_restarts, n_restarts, offset=1)
    for _ in range(steps):
        obs = build()
        loss = -value(obs).sum()
        if prior is not None and prior_weight:
            loss = loss + prior_weight * (((obs - prior) * keep) ** 2).sum()
        if diversity and n_restarts > 1:
            diff = (obs[pairs[0]] - obs[pairs[1]])[..., 1:] * keep
            rms = torch.sqrt((diff ** 2).sum(dim=(1, 2)) / (keep.sum() * (obs.shape[-1] - 1)) + 1e-12)
            loss = loss - diversity * rms.sum()
        grads = torch.autograd.grad(loss, [u, theta])
        u.grad, theta.grad = grads
        optimiser.step()
    with torch.no_grad():
        obs = build()
        values = value(obs)
    return obs.numpy().astype(np.float32), values.numpy().astype(np.float32)


def scene_picture(obs: np.ndarray, features_range: FeaturesRange, title: str = "", seconds: float = 1.0,
                  length: float = 5.0, width: float = 2.0, ax: Axes | None = None) -> Figure:
    """A top-down drawing of one observation [E, F] (reference features, normalised).

    Each present vehicle is a `length` × `width` m rectangle at its de-normalised position, turned
    by its heading, with an arrow of its velocity × `seconds`; the ego (row 0) in red, the others
    in blue, labelled by row. Axes in metres, y pointing down as on the simulator's screen.
    Drawn on `ax` if given (its figure is returned), else on a new 4.5 × 4.5 in figure.
    """
    kin = denormalize(np.asarray(obs, dtype=np.float64)[None], EnvConfig(features_range=features_range))
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = np.nonzero(kin.present[0])[0]
    for row in shown:
        x, y, vx, vy = kin.x[0, row], kin.y[0, row], kin.vx[0, row], kin.vy[0, row]
        color = "tab:red" if row == 0 else "tab:blue"
        draw_vehicle(ax, x, y, kin.cos_h[0, row], kin.sin_h[0, row], color, (length, width), alpha=0.8,
                     label="ego" if row == 0 else None)
        if np.hypot(vx, vy) > 1e-6:
            ax.add_patch(FancyArrow(x, y, vx * seconds, vy * seconds, width=0.3, head_width=1.2, color=color,
                                    length_includes_head=True))
        ax.annotate(str(row), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    xs = np.concatenate([kin.x[0, shown], kin.x[0, shown] + kin.vx[0, shown] * seconds])
    ys = np.concatenate([kin.y[0, shown], kin.y[0, shown] + kin.vy[0, shown] * seconds])
    half = max(np.ptp(xs), np.ptp(ys), 20.0) / 2 + length
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    scene_axes(ax, cx, cy, half, title)
    return fig


def scene_pair(left: np.ndarray, right: np.ndarray, features_range: FeaturesRange, left_title: str = "",
               right_title: str = "", title: str = "", seconds: float = 1.0) -> Figure:
    """Two observations [E, F] drawn side by side by `scene_picture` on the same square axis limits
    (the smallest square holding both views, so distances compare), e.g. an optimised observation
    beside the top real activating step; with a legend of the colours and arrows and an overall
    `title`."""
    fig = Figure(figsize=(10.0, 6.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, obs, name in ((axes[0], left, left_title), (axes[1], right, right_title)):
        scene_picture(obs, features_range, name, seconds=seconds, ax=ax)
    x_low = min(ax.get_xlim()[0] for ax in axes)
    x_high = max(ax.get_xlim()[1] for ax in axes)
    y_low = max(ax.get_ylim()[0] for ax in axes)         # y is inverted: the bottom limit is the larger
    y_high = min(ax.get_ylim()[1] for ax in axes)
    half = max(x_high - x_low, y_low - y_high) / 2
    cx, cy = (x_low + x_high) / 2, (y_low + y_high) / 2
    for ax in axes:
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
    handles = [Patch(facecolor="tab:red", edgecolor="black", label="ego (row 0)"),
               Patch(facecolor="tab:blue", edgecolor="black", label="other vehicle (number = observation row)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8,
               title=f"arrows: distance covered in {seconds:g} s at the current velocity", title_fontsize=8)
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Summary


def summarize(tables: dict[str, pd.DataFrame]) -> dict:
    """The neurons stage's summary.json from its tables (each with a `model` column, models in order
    of first appearance in `stats`): per model, per layer (dots as underscores) the dead fraction,
    the mean sparsity (1 − mean fraction active) and the described neurons (`significant`
    dictionary entries); the model's described neurons; the logit-lens agreement and the tuned
    lens's held-out agreement per site without k.

    tables: "stats" (`activation_stats` rows), "dictionary" (`semantic_dictionary` rows with a
    layer and a boolean `significant` column), "lens_summary" (`lens.lens_summary`), "tuned_lens"
    (`lens.tuned_lens`). Numbers are rounded to 6 significant digits; a missing one is None (null).
    """
    out: dict = {}
    stats, dictionary = tables["stats"], tables["dictionary"]
    lens_summary, tuned = tables["lens_summary"], tables["tuned_lens"]
    for model in pd.unique(stats["model"]):
        layers = {}
        for layer, group in stats[stats["model"] == model].groupby("layer", sort=False):
            entries = dictionary[(dictionary["model"] == model) & (dictionary["layer"] == layer)]
            layers[json_key(layer)] = {"dead_fraction": float(group["dead"].mean()),
                                       "mean_sparsity": float(1.0 - group["frac_active"].mean()),
                                       "described_neurons": int(entries["significant"].sum())}
        logit = lens_summary[(lens_summary["model"] == model) & lens_summary["k"].isna()]
        held = tuned[(tuned["model"] == model) & tuned["k"].isna() & (tuned["split"] == "held_out")]
        out[model] = {
            "layers": layers,
            "described_neurons": int(dictionary[dictionary["model"] == model]["significant"].sum()),
            "logit_lens_agreement": dict(zip(logit["site"], logit["agreement"].astype(float))),
            "tuned_lens_held_out_agreement": dict(zip(held["site"], held["agreement"].astype(float))),
        }
    return _rounded(out)


def _rounded(value: object) -> object:
    """Plain numbers rounded to 6 significant digits; a missing one (NaN) None (`egolens.numbers`)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, bool | int | np.integer):
        return int(value)
    return significant_digits(float(value))
