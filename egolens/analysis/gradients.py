"""Integrated gradients of Q(s, a) (or the advantage) w.r.t. the observation: captum's over a fixed
grid, and piecewise between the ReLU kinks of each path (`egolens.analysis.paths`), refined per
step until complete.

Path methods move along baseline -> obs; the absent mask of the real observation is held fixed
along the path (`fix_mask=True`), because a mask recomputed from an interpolated presence flips
at presence 0.5 and breaks completeness. Shapes: B steps, E entities, F features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from captum.attr import IntegratedGradients
from torch import nn

from egolens.analysis import paths
from egolens.analysis.quantity import Target, captum_target, path_delta_f, piecewise_paths, quantity_fn, target_indices
from egolens.vocabulary import absent_mask


def integrated_gradients(net: nn.Module, obs: torch.Tensor, target: Target, baseline: torch.Tensor,
                         n_steps: int = 64, internal_batch_size: int | None = 4096, *,
                         advantage: bool = False, method: str = "gausslegendre",
                         fix_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of Q(s, a) (or the advantage Q(s, a) − mean_a Q(s, ·)) w.r.t. obs.

    obs, baseline: [B, E, F]; target: action index or [B] indices.
    Returns (attributions [B, E, F], captum's convergence delta [B] = Σ attr − (f(x) − f(b))).

    `fix_mask=True` passes obs's absent mask to `net(x, mask)` at every point of the path
    (captum `additional_forward_args`), so interpolating presence cannot flip it. `fix_mask=False`
    lets the network recompute the mask from the interpolated input: only to show the error it
    causes. `internal_batch_size` (rows per forward, >= B) bounds memory; results are identical.
    """
    obs = obs.detach()
    forward = quantity_fn(net, advantage)
    extra = (absent_mask(obs),) if fix_mask else None
    attr, delta = IntegratedGradients(forward).attribute(
        obs, baselines=baseline.detach().to(obs.dtype), target=captum_target(target, obs.shape[0]),
        additional_forward_args=extra, n_steps=n_steps, method=method,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attr.detach(), delta.detach()


def piecewise_integrated_gradients(net: nn.Module, obs: torch.Tensor, target: Target, baseline: torch.Tensor,
                                   grid: int = 512, segment_points: int = 2, rows: int = 4096, *,
                                   advantage: bool = False, kinks: Sequence[torch.Tensor] | None = None,
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrated gradients (mask fixed) with every path cut at the ReLU kinks found on a grid of
    `grid` points (`paths.path_kinks`), each piece integrated by captum with `segment_points`
    Gauss-Legendre points (IG of the piece: baseline = its start, input = its end; the pieces'
    attributions add up to the step's, since IG is additive along a straight path).

    obs, baseline: [B, E, F]; rows: path points per forward pass; kinks: these paths' kinks on
    `grid` if already located (`paths.PathKinks`).
    Returns (attributions [B, E, F], delta [B] float64 = Σ attr − (f(obs) − f(baseline)),
    gradient evaluations per step [B] long).
    """
    cut = piecewise_paths(net, obs, target, baseline, advantage, grid, rows, kinks)
    obs, baseline, targets, mask, forward, segments = (cut.obs, cut.baseline, cut.targets, cut.mask, cut.forward,
                                                       cut.segments)
    attr = torch.zeros_like(obs)
    per_call = max(1, rows // segment_points)
    ig = IntegratedGradients(forward)
    for first in range(0, len(segments.step), per_call):
        step = segments.step[first:first + per_call]
        start = paths.path_points(obs[step], baseline[step], segments.start[first:first + per_call])
        end = paths.path_points(obs[step], baseline[step], segments.end[first:first + per_call])
        part = ig.attribute(end, baselines=start, target=targets[step], additional_forward_args=(mask[step],),
                            n_steps=segment_points, method="gausslegendre",
                            internal_batch_size=len(step) * segment_points)
        attr.index_add_(0, step, part.detach())
    delta = attr.double().reshape(len(obs), -1).sum(1) - path_delta_f(net, obs, baseline, targets, advantage).double()
    return attr, delta, segments.count(len(obs)) * segment_points


def kink_aware_integrated_gradients(net: nn.Module, obs: torch.Tensor, target: Target, baseline: torch.Tensor,
                                    grid: int = 512, max_grid: int = 32768, segment_points: int = 2,
                                    rows: int = 4096, *, advantage: bool = False, tolerance: float = 0.01,
                                    min_delta: float = 1e-3, kinks: paths.PathKinks | None = None,
                                    ) -> paths.Refined:
    """`piecewise_integrated_gradients` of every step, redone on a 4× finer kink grid (up to
    `max_grid`) for the steps still incomplete by `tolerance` of |ΔQ| (`paths.refine_until_complete`).
    obs, baseline: [B, E, F]; kinks: a `paths.PathKinks` of these paths to share with other jobs."""
    targets = target_indices(target, obs.shape[0])

    def piecewise(idx: torch.Tensor, n: int,
                  known: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return piecewise_integrated_gradients(net, obs[idx], targets[idx], baseline[idx], n, segment_points, rows,
                                              advantage=advantage, kinks=known)

    shared = paths.PathKinks.of(kinks, net, obs, baseline, rows)
    return paths.refine_on_kink_grids(piecewise, shared, path_delta_f(net, obs, baseline, targets, advantage),
                                      grid, max_grid, tolerance=tolerance, min_delta=min_delta)
