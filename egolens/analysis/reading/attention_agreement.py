"""Does the ego attend to what matters? Attention compared, by rank correlation, with the vehicles'
attributions (`attention_attribution_agreement`) and with facts about the scene such as distance
and time-to-collision (`attention_vs_fact`).

Attention is the ego query's pattern over the entities, [B, H, E] (or the cached [B, H, 1, E]);
only present other vehicles are compared. Pure functions, tidy DataFrames out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from egolens.analysis.attribution.attribution_tables import as_numpy, labelled
from egolens.stats import spearman


def _heads_last_entity(attention: np.ndarray | torch.Tensor) -> np.ndarray:
    """[B, H, E] or the cached pattern [B, H, 1, E] -> [B, H, E] float64."""
    att = as_numpy(attention).astype(np.float64)
    if att.ndim == 4:
        att = att[:, :, 0]
    if att.ndim != 3:
        raise ValueError(f"attention must be [B, H, E] or [B, H, 1, E], got {att.shape}")
    return att


def attention_attribution_agreement(attention: np.ndarray | torch.Tensor, vehicle_attr: np.ndarray | torch.Tensor,
                                    present: np.ndarray | torch.Tensor, *, min_vehicles: int = 3,
                                    step_ids: Sequence[int] | None = None,
                                    labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Does the ego look at the vehicles that matter? Per step and head.

    attention [B, H, E] (or [B, H, 1, E]); vehicle_attr [B, E]; present [B, E] bool. Over the
    present non-ego vehicles (the ego column is ignored even if marked present):
    - spearman: rank correlation of attention with |attr| (NaN with fewer than `min_vehicles`
      vehicles or a constant side);
    - top1_match: 1.0 if the most-attended vehicle has the largest |attr| (ties count as a
      match), 0.0 if not, NaN without vehicles.
    labels: constant columns put first (name the model, attribution method and baseline).
    Returns columns [labels], step, head, n_vehicles, spearman, top1_match.
    """
    att = _heads_last_entity(attention)
    importance = np.abs(as_numpy(vehicle_attr).astype(np.float64))
    keep = as_numpy(present).astype(bool).copy()
    keep[:, 0] = False
    batch, heads, _ = att.shape
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    out = []
    for b in range(batch):
        idx = np.nonzero(keep[b])[0]
        imp = importance[b, idx]
        for h in range(heads):
            a = att[b, h, idx]
            rho = spearman(a, imp) if idx.size >= min_vehicles else math.nan
            top1 = float(imp[int(np.argmax(a))] == imp.max()) if idx.size else math.nan
            out.append({"step": steps[b], "head": h, "n_vehicles": int(idx.size), "spearman": rho,
                        "top1_match": top1})
    return labelled(pd.DataFrame(out), labels)


def attention_vs_fact(attention: np.ndarray | torch.Tensor, facts: Mapping[str, np.ndarray | torch.Tensor], *,
                      level: Literal["step", "pooled"] = "step", min_vehicles: int = 3,
                      step_ids: Sequence[int] | None = None,
                      labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Rank correlation of attention with facts about the vehicles (e.g. time-to-collision, distance).

    attention [B, H, E] (or [B, H, 1, E]); facts: {name: [B, E]} with NaN where undefined
    (absent vehicles, the ego, no collision course...): those entries are left out.
    level "step": one Spearman per (step, head, fact) over that step's vehicles (NaN with fewer
    than `min_vehicles`); "pooled": one per (head, fact) over every (step, vehicle).
    Returns columns [labels], [step,] head, fact, n, spearman.
    """
    if level not in ("step", "pooled"):
        raise ValueError(f"level must be 'step' or 'pooled', got {level!r}")
    att = _heads_last_entity(attention)
    batch, heads, _ = att.shape
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    out = []
    for name, fact in facts.items():
        values = as_numpy(fact).astype(np.float64)
        valid = np.isfinite(values)
        for h in range(heads):
            if level == "pooled":
                n = int(valid.sum())
                rho = spearman(att[:, h][valid], values[valid]) if n >= min_vehicles else math.nan
                out.append({"head": h, "fact": name, "n": n, "spearman": rho})
                continue
            for b in range(batch):
                sel = valid[b]
                n = int(sel.sum())
                rho = spearman(att[b, h, sel], values[b, sel]) if n >= min_vehicles else math.nan
                out.append({"step": steps[b], "head": h, "fact": name, "n": n, "spearman": rho})
    return labelled(pd.DataFrame(out), labels)
