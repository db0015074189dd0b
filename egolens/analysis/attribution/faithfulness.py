"""Do the attributions mean something? Completeness (the attributions add up to the change of Q they
explain), deletion and insertion curves (removing the vehicles ranked most important first
changes Q soonest) and the model-parameter randomisation check (the explanation depends on the
trained weights, not only on the input).

Deletion and insertion evaluate real states only (each vehicle row is either the observed one or
zero), so the network recomputes the absent mask: a zeroed row is absent.
Shapes: B steps, E entities (row 0 the ego), F features, A actions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.attribution.attribution_tables import as_numpy, labelled
from egolens.analysis.attribution.baselines import ego_alone
from egolens.analysis.attribution.quantity import Target, target_change
from egolens.stats import spearman
from egolens.vocabulary import ACTIONS


def completeness_error(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, attr: torch.Tensor,
                       target: Target, *, advantage: bool = False, fix_mask: bool = True) -> torch.Tensor:
    """|Σ attr − (f(obs) − f(baseline))| / |f(obs) − f(baseline)| per step: -> [B].

    attr: [B, ...] (input attributions [B, E, F], layer conductances [B, D], Shapley values
    [B, E]); summed over all but the batch axis. f is evaluated as the attribution saw it:
    with obs's mask for both ends if `fix_mask`, else each end with its own recomputed mask
    (use that for `shapley_vehicles` with baseline `ego_alone(obs)`: the efficiency check).
    0/0 gives NaN and x/0 gives inf (no change of f to explain).
    """
    return _relative_error(attr, target_change(net, obs, baseline, target, advantage=advantage, fix_mask=fix_mask))


def _relative_error(attr: torch.Tensor, delta_f: torch.Tensor) -> torch.Tensor:
    total = attr.detach().reshape(attr.shape[0], -1).sum(dim=1).to(delta_f.dtype)
    return (total - delta_f).abs() / delta_f.abs()


def completeness_table(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, attr: torch.Tensor,
                       target: Target, *, advantage: bool = False, fix_mask: bool = True,
                       convergence_delta: torch.Tensor | None = None, min_delta: float = 1e-3,
                       tolerance: float = 0.01, step_ids: Sequence[int] | np.ndarray | None = None,
                       labels: Mapping[str, object] | None = None,
                       points: int | torch.Tensor | None = None) -> pd.DataFrame:
    """Per step: does Σ attr account for f(obs) − f(baseline)? (`completeness_error`, same f.)

    Columns [labels], step, [points: gradient evaluations along the path per step (int or [B]), if given], delta_f,
    attr_sum, convergence_delta (captum's, NaN if not given),
    abs_error = |Σ attr − delta_f|, rel_error = abs_error / |delta_f|, tiny = |delta_f| < min_delta
    (too small a change to divide by: rel_error NaN, not counted), within = rel_error < tolerance
    (False when tiny).
    """
    change = target_change(net, obs, baseline, target, advantage=advantage, fix_mask=fix_mask)
    delta_f = change.double()
    total = attr.detach().reshape(attr.shape[0], -1).double().sum(dim=1)
    rel = _relative_error(attr, change).double()
    tiny = delta_f.abs() < min_delta
    rel = torch.where(tiny, torch.full_like(rel, math.nan), rel)
    batch = obs.shape[0]
    frame = pd.DataFrame({
        "step": np.arange(batch) if step_ids is None else np.asarray(step_ids),
        **({} if points is None else {"points": (np.full(batch, points) if isinstance(points, int)
                                                 else points.detach().long().reshape(-1).numpy())}),
        "delta_f": delta_f.numpy(),
        "attr_sum": total.numpy(),
        "convergence_delta": (np.full(batch, math.nan) if convergence_delta is None
                              else convergence_delta.detach().double().reshape(-1).numpy()),
        "abs_error": (total - delta_f).abs().numpy(),
        "rel_error": rel.numpy(),
        "tiny": tiny.numpy(),
        "within": (~tiny & (rel < tolerance)).numpy(),
    })
    return labelled(frame, labels)


def completeness_stats(table: pd.DataFrame) -> dict[str, int | float]:
    """Summary of a `completeness_table`: n_steps, n_tiny, max abs_error over every step; median
    and max rel_error and the fraction within the tolerance over the steps that are not tiny
    (NaN when none counts); max_points and mean_points if the table has a `points` column."""
    counted = table[~table["tiny"].astype(bool)]
    n = len(counted)
    return {"n_steps": len(table), "n_tiny": len(table) - n,
            "max_abs_error": float(table["abs_error"].max()) if len(table) else math.nan,
            "median_rel_error": float(counted["rel_error"].median()) if n else math.nan,
            "max_rel_error": float(counted["rel_error"].max()) if n else math.nan,
            "fraction_within": float(counted["within"].astype(bool).mean()) if n else math.nan,
            **({"max_points": int(table["points"].max()), "mean_points": float(table["points"].mean())}
               if "points" in table.columns and len(table) else {})}


def _order_rows(order: torch.Tensor | Sequence[Sequence[int]], batch: int) -> list[list[int]]:
    if isinstance(order, torch.Tensor):
        order = order.tolist()
    rows = [[int(j) for j in row if int(j) >= 0] for row in order]
    if len(rows) != batch:
        raise ValueError(f"order has {len(rows)} rows for {batch} steps")
    return rows


def attribution_order(vehicle_attr: torch.Tensor, present: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Entities ranked by attribution, most important first: [B, E] -> [B, E−1] long.

    Only present non-ego vehicles are ranked (by |attr| if `absolute`, else by signed attr,
    largest first); the rest of each row is −1 padding.
    """
    score = vehicle_attr.detach().abs() if absolute else vehicle_attr.detach()
    present = present.clone()
    present[:, 0] = False
    score = torch.where(present, score.double(), torch.full_like(score, -math.inf, dtype=torch.float64))
    ranked = torch.argsort(score, dim=1, descending=True, stable=True)[:, :-1]
    keep = torch.gather(present, 1, ranked)
    return torch.where(keep, ranked, torch.full_like(ranked, -1))


def random_order(present: torch.Tensor, seed: int) -> torch.Tensor:
    """Present non-ego vehicles in a random order per step: [B, E] bool -> [B, E−1] long (−1 pad)."""
    g = torch.Generator().manual_seed(seed)
    return attribution_order(torch.rand(present.shape, generator=g, dtype=torch.float64), present)


def deletion_insertion_curves(net: nn.Module, obs: torch.Tensor, order: torch.Tensor | Sequence[Sequence[int]], *,
                              order_name: str = "attribution", step_ids: Sequence[int] | None = None,
                              labels: Mapping[str, object] | None = None, batch_size: int = 4096) -> pd.DataFrame:
    """Deletion and insertion curves of vehicles (Petsiuk et al. 2018) on real states.

    obs [B, E, F]; order: per step the entity indices (1..E−1) of the present vehicles, most
    important first ([B, K] padded with −1, e.g. `attribution_order` or `random_order`).
    a* = the greedy action on the full obs. Deletion: zero the rows of the first k vehicles
    (k = 0..n); insertion: from the ego alone, restore the first k vehicles. The network
    recomputes the mask (a zeroed row is absent). labels: constant columns put first (name the
    model and the attribution method and baseline behind `order`). batch_size: states per forward.

    Returns one row per (step, curve, k): [labels], order, step, curve ("deletion"/"insertion"),
    k, n_vehicles, fraction = k/n (0 when n = 0), action (a*), q = Q(s_k, a*),
    agrees = (argmax Q(s_k) == a*).
    """
    obs = obs.detach()
    batch = obs.shape[0]
    rows = _order_rows(order, batch)
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    alone = ego_alone(obs)
    variants, meta = [], []
    for b, row in enumerate(rows):
        for curve in ("deletion", "insertion"):
            for k in range(len(row) + 1):
                state = obs[b].clone() if curve == "deletion" else alone[b].clone()
                chosen = row[:k]
                if chosen:
                    state[chosen] = 0.0 if curve == "deletion" else obs[b, chosen]
                variants.append(state)
                meta.append((b, curve, k, len(row)))
    with torch.no_grad():
        greedy = net(obs).argmax(dim=1)
        states = torch.stack(variants)
        q = torch.cat([net(states[i:i + batch_size]) for i in range(0, len(states), batch_size)])
    b_idx = torch.tensor([m[0] for m in meta])
    star = greedy[b_idx]
    frame = pd.DataFrame({
        "order": order_name,
        "step": [steps[m[0]] for m in meta],
        "curve": [m[1] for m in meta],
        "k": [m[2] for m in meta],
        "n_vehicles": [m[3] for m in meta],
        "fraction": [m[2] / m[3] if m[3] else 0.0 for m in meta],
        "action": [ACTIONS[int(a)] if int(a) < len(ACTIONS) else int(a) for a in star],
        "q": q.gather(1, star[:, None]).squeeze(1).double().numpy(),
        "agrees": (q.argmax(dim=1) == star).numpy(),
    })
    return labelled(frame, labels)


def curve_auc(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each curve of `deletion_insertion_curves` over fraction ∈ [0, 1] (trapezoid).

    Returns one row per ([labels], order, step, curve): n_vehicles, auc_q (of Q(s_k, a*)),
    auc_agrees (of the action agreement); NaN when the step has no other vehicle.
    Deletion: lower = the order finds what matters sooner; insertion: higher.
    """
    keys = [c for c in curves.columns if c not in {"k", "n_vehicles", "fraction", "action", "q", "agrees"}]
    out = []
    for key, group in curves.sort_values("k").groupby(keys, sort=True):
        n = int(group["n_vehicles"].iloc[0])
        x = group["fraction"].to_numpy(dtype=float)
        auc_q = float(np.trapezoid(group["q"].to_numpy(dtype=float), x)) if n else math.nan
        auc_a = float(np.trapezoid(group["agrees"].to_numpy(dtype=float), x)) if n else math.nan
        out.append({**dict(zip(keys, key)), "n_vehicles": n, "auc_q": auc_q, "auc_agrees": auc_a})
    return pd.DataFrame(out)


def randomisation_check(attr_trained: np.ndarray | torch.Tensor, attr_untrained: np.ndarray | torch.Tensor, *,
                        keep: np.ndarray | torch.Tensor | None = None, threshold: float = 0.5,
                        step_ids: Sequence[int] | None = None,
                        labels: Mapping[str, object] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model-parameter randomisation test (Adebayo et al. 2018): trained vs untrained explanations.

    attr_trained, attr_untrained: [B, ...] attributions of the same steps by the trained and a
    randomly initialised network. keep: optional bool [B, ...] (broadcastable) of the entries to
    compare. Use it: entries that are 0 for both nets by construction (absent vehicles, presence
    and the ego row under `others_zeroed`) tie in rank and inflate the correlation.

    labels: constant columns put first in both tables (name the method, baseline, target).

    Returns
    - per_step: step, n, spearman (signed), spearman_abs (of |attr|);
    - summary: one row per measure ("spearman", "spearman_abs"): median over steps, threshold,
      flagged = median > threshold (the explanation hardly depends on the weights: it explains
      the input, not the policy).
    """
    trained = as_numpy(attr_trained).astype(np.float64)
    untrained = as_numpy(attr_untrained).astype(np.float64)
    if trained.shape != untrained.shape:
        raise ValueError(f"shapes differ: {trained.shape} vs {untrained.shape}")
    batch = trained.shape[0]
    mask = np.ones_like(trained, dtype=bool) if keep is None else np.broadcast_to(as_numpy(keep).astype(bool),
                                                                                  trained.shape)
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    per_step = []
    for b in range(batch):
        sel = mask[b]
        t, u = trained[b][sel], untrained[b][sel]
        per_step.append({"step": steps[b], "n": int(sel.sum()), "spearman": spearman(t, u),
                         "spearman_abs": spearman(np.abs(t), np.abs(u))})
    per_step_df = pd.DataFrame(per_step)
    summary = []
    for measure in ("spearman", "spearman_abs"):
        median = float(per_step_df[measure].median()) if per_step_df[measure].notna().any() else math.nan
        summary.append({"measure": measure, "median": median, "threshold": threshold,
                        "flagged": bool(median > threshold)})
    return labelled(per_step_df, labels), labelled(pd.DataFrame(summary), labels)


def with_randomisation_flags(per_step: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The two tables of one `randomisation_check` as one: the per-step rows with the summary as
    constant columns median_spearman, median_spearman_abs, threshold, flagged, flagged_abs."""
    row = summary.set_index("measure")
    out = per_step.copy()
    out["median_spearman"] = float(row.loc["spearman", "median"])
    out["median_spearman_abs"] = float(row.loc["spearman_abs", "median"])
    out["threshold"] = float(row.loc["spearman", "threshold"])
    out["flagged"] = bool(row.loc["spearman", "flagged"])
    out["flagged_abs"] = bool(row.loc["spearman_abs", "flagged"])
    return out
