"""The rows and facts neurons are read against: one row per recorded step (ego embedding `[N, 1, U]`,
output MLP `[N, U]`) or per (step, present other vehicle) (the others' embedding `[N, E-1, U]` after
`vehicle_rows`, in the row order of `egolens.rollout.vehicles_table`: step-major, then observation row).
A facts DataFrame is aligned row by row with the activations it describes. Activations are read from
recordings (`egolens.rollout.rollout_arrays`) or through `egolens.hooks`; nothing here re-implements the net.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from egolens.config import EnvConfig
from egolens.scene import denormalize
from egolens.vocabulary import ACTIONS, present

TTC_CAP = 20.0
"""Seconds; times to collision above it (inf included) are set to it before rank correlations."""

TTC_COLUMNS = ("ttc", "min_ttc")

VEHICLE_FACTS = ("distance", "ttc", "closing_speed", "bearing_deg", "crossing", "ahead")
"""Per-vehicle facts correlated with the others' embedding neurons."""




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


