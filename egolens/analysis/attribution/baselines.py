"""Baselines of the attributions: what an observation is compared with.

All take obs [B, E, F] (E entities, row 0 the ego; F features presence, x, y, vx, vy, cos_h,
sin_h) and return a baseline of the same shape; name the one used in every table.
Removing a vehicle = zeroing its row (presence 0), so the network masks it; the ego row is never
removed.

- `others_zeroed`: others' kinematics 0, presence kept. Every present vehicle becomes a vehicle
  at (0, 0) in the normalised absolute frame (the middle of the map), at rest, with the
  impossible heading (0, 0). Attributions to presence and to the ego row are exactly 0.
- `typical_scene`: others' kinematics replaced by the pooled mean over recorded present
  vehicles (heading renormalised to a unit vector), presence and ego kept (or the ego replaced
  too with `replace_ego=True`). "Which departures from an average vehicle matter".
- `ego_alone`: every other row zeroed, presence included. With the fixed mask of the path
  methods the path keeps the vehicles attended (a zero row that is still "present"): f(baseline)
  is then NOT Q(ego alone). It is the removal baseline of `shapley.shapley_vehicles` (mask
  recomputed).
"""

from __future__ import annotations

import torch

from egolens.vocabulary import present_others

KINEMATICS = slice(1, None)
"""Features x, y, vx, vy, cos_h, sin_h (everything but presence)."""
HEADING = slice(5, 7)
"""Features cos_h, sin_h."""


def others_zeroed(obs: torch.Tensor) -> torch.Tensor:
    """Baseline [B, E, F]: other vehicles' kinematics (x, y, vx, vy, cos_h, sin_h) set to 0.

    Presence and the ego row are kept, so the mask is the observation's own and only the
    others' kinematics receive attribution.
    """
    baseline = obs.detach().clone()
    baseline[:, 1:, KINEMATICS] = 0.0
    return baseline


def ego_alone(obs: torch.Tensor) -> torch.Tensor:
    """Baseline [B, E, F]: every other row zeroed (presence too), the ego row kept."""
    baseline = torch.zeros_like(obs.detach())
    baseline[:, 0] = obs.detach()[:, 0]
    return baseline


def _typical_kinematics(rows: torch.Tensor, unit_heading: bool) -> torch.Tensor:
    """rows [N, F] -> [F - 1] mean kinematics; heading renormalised to a unit vector if asked."""
    if rows.shape[0] == 0:
        raise ValueError("no present rows in reference_obs to average")
    mean = rows[:, KINEMATICS].mean(dim=0)
    if unit_heading:
        heading = mean[HEADING.start - 1:HEADING.stop - 1]
        norm = heading.norm()
        if norm > 1e-6:
            mean[HEADING.start - 1:HEADING.stop - 1] = heading / norm
    return mean


def typical_scene(obs: torch.Tensor, reference_obs: torch.Tensor, *, replace_ego: bool = False,
                  unit_heading: bool = True) -> torch.Tensor:
    """Baseline [B, E, F]: each present other vehicle replaced by the typical recorded vehicle.

    reference_obs: [N, E, F] recorded observations. The typical vehicle is the mean of the
    kinematics of all present non-ego rows of reference_obs, pooled over rows (with
    `order: shuffled`, row j is not a fixed vehicle, so a per-row mean means nothing). A mean
    heading (cos, sin) is shorter than 1 (not a possible heading); `unit_heading` rescales it
    to the circular mean direction. Each step keeps its own presence column (same mask as the
    observation, absent rows stay zero) and, unless `replace_ego`, its own ego row; with
    `replace_ego` the ego kinematics become the mean recorded ego's (presence stays 1).
    """
    ref = reference_obs.detach().to(obs.dtype)
    ref_others = ref[:, 1:][present_others(ref)[:, 1:]]                 # [N_present, F]
    baseline = obs.detach().clone()
    present = present_others(obs)
    baseline[..., KINEMATICS] = torch.where(present[..., None], _typical_kinematics(ref_others, unit_heading),
                                            baseline[..., KINEMATICS])
    if replace_ego:
        baseline[:, 0, KINEMATICS] = _typical_kinematics(ref[:, 0], unit_heading)
    return baseline


def changed_entries(obs: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """[B, E, F] bool: entries where obs differs from the baseline.

    Path attributions (integrated gradients, conductance) are (x − b)·(...) and so exactly 0
    elsewhere, for any network: those entries tie and must be left out of rank comparisons
    (`faithfulness.randomisation_check(keep=...)`; `.any(-1)` for per-vehicle attributions).
    """
    return obs.detach() != baseline.detach().to(obs.dtype)
