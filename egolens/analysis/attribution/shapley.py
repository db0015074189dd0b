"""Shapley values of the vehicles: how much each present other vehicle adds to Q(s, a) (or the
advantage), averaged over the orders in which vehicles can be added to the ego alone.

A removal method: it only evaluates real states (each vehicle row is either the observed one or
zero), so the network recomputes the absent mask and a zeroed row is absent.
Shapes: B steps, E entities (row 0 the ego), F features.
"""

from __future__ import annotations

import torch
from captum.attr import ShapleyValueSampling
from torch import nn

from egolens.analysis.attribution.baselines import ego_alone
from egolens.analysis.attribution.quantity import Target, captum_target, quantity_fn
from egolens.vocabulary import PRESENCE, present_others


def vehicle_groups(obs: torch.Tensor) -> torch.Tensor:
    """Per-step feature mask [B, E, F] for captum: present vehicle j's 7 features share group
    1..n_b (in row order); the ego and absent rows share group 0 (input = baseline there, so
    group 0 is a null player and gets exactly 0). Contiguous (captum indexes it)."""
    present = present_others(obs)
    groups = torch.cumsum(present.long(), dim=1) * present.long()       # [B, E]
    return groups[..., None].expand(*obs.shape).contiguous()


def shapley_vehicles(net: nn.Module, obs: torch.Tensor, target: Target, n_samples: int = 25, *,
                     perturbations_per_eval: int | None = None, advantage: bool = False,
                     seed: int | None = 0) -> torch.Tensor:
    """Shapley values of the vehicles for Q(s, a) (or the advantage): obs [B, E, F] -> [B, E].

    Players are the present other vehicles; removing one zeroes its row (the network masks it);
    the ego is always kept and never a player; the ego and absent vehicles get 0. captum's
    ShapleyValueSampling with `n_samples` random permutations (seeded by `seed` without touching
    the global RNG; None: the global RNG). Every permutation telescopes, so
    Σ_j φ_j = f(obs) − f(ego alone) exactly (`faithfulness.completeness_error(..., ego_alone(obs), phi, ...,
    fix_mask=False)`). perturbations_per_eval defaults to the number of groups.
    """
    obs = obs.detach()
    groups = vehicle_groups(obs)
    n_groups = int(groups.max().item()) + 1
    if n_groups == 1:
        return torch.zeros(obs.shape[:2], dtype=obs.dtype)
    sampler = ShapleyValueSampling(quantity_fn(net, advantage))

    def run() -> torch.Tensor:
        return sampler.attribute(obs, baselines=ego_alone(obs), target=captum_target(target, obs.shape[0]),
                                 feature_mask=groups, n_samples=n_samples,
                                 perturbations_per_eval=perturbations_per_eval or n_groups)

    if seed is None:
        attr = run()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            attr = run()
    phi = attr[..., PRESENCE].to(obs.dtype)            # every feature of a group carries its value
    return torch.where(present_others(obs), phi, torch.zeros_like(phi))
