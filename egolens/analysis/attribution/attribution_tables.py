"""Attributions as tidy tables (one row per observation of a quantity), and the choice of the
recorded steps they are computed on.

Pure functions: tensors or arrays in, pandas DataFrames out; no file I/O. Label columns (model,
method, baseline, ...) name where each row comes from and are put first (`labelled`).
Shapes: B steps, E entities (row 0 the ego), F features, A actions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from egolens.analysis.attribution.quantity import Target, target_indices
from egolens.vocabulary import REFERENCE_FEATURES, absent_mask, present_others


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (detached, on the CPU) or an array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def labelled(frame: pd.DataFrame, labels: Mapping[str, object] | None) -> pd.DataFrame:
    """Constant label columns (e.g. {"model": "trained", "baseline": "others_zeroed"}) put first."""
    for i, (name, value) in enumerate((labels or {}).items()):
        frame.insert(i, name, value)
    return frame


def select_steps(n_recorded: int, max_steps: int) -> np.ndarray:
    """Indices of at most `max_steps` of `n_recorded` steps, evenly spaced, first and last included.

    Index i of k is round(i·(n−1)/(k−1)) (halves rounded up, in integers: no float ties); distinct
    and increasing; every step when n ≤ max_steps. Returns int64 [min(n, max_steps)].
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if n_recorded <= max_steps:
        return np.arange(max(n_recorded, 0), dtype=np.int64)
    if max_steps == 1:
        return np.zeros(1, dtype=np.int64)
    i = np.arange(max_steps, dtype=np.int64)
    return (2 * i * (n_recorded - 1) + (max_steps - 1)) // (2 * (max_steps - 1))


def chosen(per_action: torch.Tensor, action: Target) -> torch.Tensor:
    """per_action [A, B, ...] (one result per attributed action) -> [B, ...] of each step's action."""
    index = target_indices(action, per_action.shape[1])
    return per_action[index, torch.arange(per_action.shape[1])]


def vehicle_attribution(attr: torch.Tensor) -> torch.Tensor:
    """attr [B, E, F] -> [B, E]: the attribution of each entity (sum over its features)."""
    return attr.sum(dim=-1)


def attribution_table(attr: torch.Tensor, obs: torch.Tensor, step_ids: Sequence[int] | np.ndarray | None,
                      action_names: str | Sequence[str], baseline_name: str, model_name: str, *,
                      quantity: str = "q", vehicle_ids: np.ndarray | torch.Tensor | None = None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy tables of input attributions, absent vehicles dropped (the ego row always kept).

    attr, obs: [B, E, F]; step_ids: [B] (None: 0..B−1); action_names: the attributed action of
    each step ([B] names) or one name for all; quantity: what was attributed ("q", "advantage");
    vehicle_ids: optional [B, E] simulator ids (row j is not a fixed vehicle: `order: shuffled`).

    Returns
    - features: one row per (step, entity, feature): model, baseline, quantity, step, action,
      entity, [vehicle_id], is_ego, feature, value (the observed feature), attribution;
    - vehicles: one row per (step, entity): same keys, attribution = sum over the F features.
    """
    attr_np = attr.detach().cpu().numpy()
    obs_np = obs.detach().cpu().numpy()
    batch, entities, n_features = attr_np.shape
    steps = np.arange(batch) if step_ids is None else np.asarray(step_ids)
    actions = np.full(batch, action_names, dtype=object) if isinstance(action_names, str) \
        else np.asarray(list(action_names), dtype=object)
    if steps.shape[0] != batch or actions.shape[0] != batch:
        raise ValueError(f"step_ids and action_names need {batch} entries")
    keep = (~absent_mask(obs.detach().cpu())).numpy()                   # [B, E], ego kept
    b_idx, e_idx = np.nonzero(keep)
    keys = {"model": model_name, "baseline": baseline_name, "quantity": quantity,
            "step": steps[b_idx], "action": actions[b_idx], "entity": e_idx}
    if vehicle_ids is not None:
        ids = vehicle_ids.detach().cpu().numpy() if isinstance(vehicle_ids, torch.Tensor) else np.asarray(vehicle_ids)
        keys["vehicle_id"] = ids[b_idx, e_idx]
    keys["is_ego"] = e_idx == 0
    vehicles = pd.DataFrame({**keys, "attribution": attr_np[b_idx, e_idx].sum(axis=-1)})
    features = pd.DataFrame({k: np.repeat(v, n_features) if isinstance(v, np.ndarray) else v
                             for k, v in keys.items()})
    features["feature"] = np.tile(np.asarray(REFERENCE_FEATURES[:n_features], dtype=object), len(b_idx))
    features["value"] = obs_np[b_idx, e_idx].reshape(-1)
    features["attribution"] = attr_np[b_idx, e_idx].reshape(-1)
    return features, vehicles


def feature_summary(attr: torch.Tensor, obs: torch.Tensor, *, value_name: str = "attribution",
                    labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Input attributions [B, E, F] aggregated over steps per (entity ∈ {ego, others}, feature).

    Per step, `ego` is row 0 and `others` adds up the present other vehicles (absent rows left
    out). mean_<value_name>: mean over steps of that per-step value (over entities and features
    these add up to the mean Σ attr); mean_abs_<value_name>: mean over steps of Σ_vehicles |attr|
    (its size, without cancellation between vehicles). Returns [labels], entity, feature,
    n_steps, mean_<value_name>, mean_abs_<value_name>.
    """
    values = attr.detach().double()
    others = present_others(obs.detach().cpu())[..., None]                # [B, E, 1]
    per_step = {"ego": (values[:, 0], values[:, 0].abs()),
                "others": ((values * others).sum(1), (values.abs() * others).sum(1))}
    n_features = values.shape[-1]
    names = REFERENCE_FEATURES
    out = [{"entity": entity, "feature": names[f] if f < len(names) else f, "n_steps": values.shape[0],
            f"mean_{value_name}": float(signed[:, f].mean()), f"mean_abs_{value_name}": float(size[:, f].mean())}
           for entity, (signed, size) in per_step.items() for f in range(n_features)]
    return labelled(pd.DataFrame(out), labels)


def vehicle_table(values: np.ndarray | torch.Tensor, obs: torch.Tensor, *, value_name: str = "value",
                  step_ids: Sequence[int] | np.ndarray | None = None,
                  vehicle_ids: np.ndarray | torch.Tensor | None = None, include_ego: bool = False,
                  step_columns: Mapping[str, np.ndarray | torch.Tensor | Sequence[object]] | None = None,
                  labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Tidy per-vehicle values [B, E] (e.g. Shapley values): one row per present (step, entity).

    Absent rows dropped; the ego row kept only with `include_ego`. step_columns: {name: [B]}
    per-step values repeated on each of the step's rows (e.g. the efficiency error).
    Returns [labels], step, entity, [vehicle_id], [step_columns], <value_name>.
    """
    vals = as_numpy(values).astype(np.float64)
    keep = as_numpy(present_others(obs.detach().cpu())).copy()
    keep[:, 0] = include_ego
    b_idx, e_idx = np.nonzero(keep)
    steps = np.arange(vals.shape[0]) if step_ids is None else np.asarray(step_ids)
    columns: dict[str, object] = {"step": steps[b_idx], "entity": e_idx}
    if vehicle_ids is not None:
        columns["vehicle_id"] = as_numpy(vehicle_ids)[b_idx, e_idx]
    for name, column in (step_columns or {}).items():
        columns[name] = np.asarray(as_numpy(column) if isinstance(column, torch.Tensor) else column)[b_idx]
    columns[value_name] = vals[b_idx, e_idx]
    return labelled(pd.DataFrame(columns), labels)


def with_episode_steps(frame: pd.DataFrame, episode: np.ndarray, step: np.ndarray,
                       column: str = "step") -> pd.DataFrame:
    """Replace `column`, holding record indices (rows of the rollouts), by three columns in its
    place: record, episode and step (within the episode) of that record."""
    out = frame.copy()
    records = out[column].to_numpy(dtype=np.int64)
    at = out.columns.get_loc(column)
    out = out.drop(columns=column)
    for i, (name, values) in enumerate((("record", records), ("episode", np.asarray(episode)[records]),
                                        ("step", np.asarray(step)[records]))):
        out.insert(at + i, name, values)
    return out


def step_summary(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and median of `value` over the rows (steps) of each group of `by`, NaN left out.

    Returns by..., statistic ("step_mean" | "step_median"), n (rows with a value), <value>.
    """
    out = []
    for key, group in frame.groupby(list(by), sort=True, dropna=False):
        values = group[value].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        base = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for statistic, fn in (("step_mean", np.mean), ("step_median", np.median)):
            out.append({**base, "statistic": statistic, "n": int(values.size),
                        value: float(fn(values)) if values.size else math.nan})
    return pd.DataFrame(out, columns=[*by, "statistic", "n", value])
