"""Integrated gradients of Q(s, a) (or the advantage) w.r.t. the observation, by any integration
scheme (`egolens.analysis.attribution.schemes`): captum's over a fixed grid, or piecewise between the ReLU
kinks of each path, refined per step until complete.

Path methods move along baseline -> obs; the absent mask of the real observation is held fixed
along the path (`fix_mask=True`), because a mask recomputed from an interpolated presence flips
at presence 0.5 and breaks completeness. Shapes: B steps, E entities, F features.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from torch import nn

from egolens.analysis.attribution import paths, schemes
from egolens.analysis.attribution.quantity import Target


def integrated_gradients(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, target: Target,
                         scheme: schemes.Scheme = schemes.KINK_CUT, *, advantage: bool = False,
                         fix_mask: bool = True, kinks: paths.PathKinks | None = None) -> paths.PathAttribution:
    """Integrated gradients of Q(s, a) (or the advantage Q(s, a) − mean_a Q(s, ·)) w.r.t. obs.

    obs, baseline: [B, E, F]; target: action index or [B] indices; scheme: a `schemes.FixedGrid`
    (captum's `IntegratedGradients`) or a `schemes.KinkCut`; kinks: a `paths.PathKinks` of these
    paths to share with other jobs on them (KinkCut only).
    Returns attr [B, E, F], delta [B] = Σ attr − (f(obs) − f(baseline)), grid and points per step.

    `fix_mask=True` passes obs's absent mask to `net(x, mask)` at every point of the path, so
    interpolating presence cannot flip it. `fix_mask=False` (FixedGrid only) lets the network
    recompute the mask from the interpolated input: only to show the error it causes.
    """
    return schemes.attribute(net, obs, baseline, target, scheme, captum=IntegratedGradients, integrand=_on_pieces,
                             advantage=advantage, fix_mask=fix_mask, kinks=kinks)


def _on_pieces(pieces: schemes.Pieces, points: int, rows: int) -> torch.Tensor:
    """IG of each piece (baseline = its start, input = its end) by captum with `points`
    Gauss-Legendre points, added up per step ([b, E, F]): IG is additive along a straight path."""
    obs, baseline, segments = pieces.obs, pieces.baseline, pieces.segments
    attr = torch.zeros_like(obs)
    per_call = max(1, rows // points)
    ig = IntegratedGradients(pieces.forward)
    for first in range(0, len(segments.step), per_call):
        step = segments.step[first:first + per_call]
        start = paths.path_points(obs[step], baseline[step], segments.start[first:first + per_call])
        end = paths.path_points(obs[step], baseline[step], segments.end[first:first + per_call])
        part = ig.attribute(end, baselines=start, target=pieces.targets[step],
                            additional_forward_args=(pieces.mask[step],), n_steps=points, method="gausslegendre",
                            internal_batch_size=len(step) * points)
        attr.index_add_(0, step, part.detach())
    return attr
