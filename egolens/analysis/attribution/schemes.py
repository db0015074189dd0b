"""How a path method (integrated gradients, layer conductance) integrates along its paths
baseline -> obs, obs's absent mask held fixed: its scheme, a parameter of every path method.

- `FixedGrid`: captum's rule over the whole path (Gauss-Legendre or Riemann, `n_steps` points);
- `KinkCut`: every path cut where a ReLU switches, each piece integrated with a few
  Gauss-Legendre points, refined per step until complete (`egolens.analysis.attribution.paths`).

A method gives `attribute` its captum class (FixedGrid) and its rule on cut paths (`Integrand`,
KinkCut) and gets a `PathAttribution` either way. Shapes: B steps, E entities, F features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from captum.attr import GradientAttribution
from torch import nn

from egolens.analysis.attribution.paths import (
    PathAttribution,
    PathKinks,
    Segments,
    integrate_on_grids,
    path_segments,
    point_schedule,
    refine_until_complete,
)
from egolens.analysis.attribution.quantity import Target, captum_target, quantity_fn, target_change, target_indices
from egolens.vocabulary import absent_mask

CAPTUM_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
"""captum's quadrature rules over a whole path (its `method`)."""


@dataclass(frozen=True)
class FixedGrid:
    """captum's integration: `n_steps` points of rule `method` (`CAPTUM_RULES`) over every whole
    path, no kinks located. internal_batch_size: path points per forward pass (results identical)."""

    n_steps: int = 64
    method: str = "gausslegendre"
    internal_batch_size: int | None = 4096

    def __post_init__(self) -> None:
        if self.n_steps < 1 or self.method not in CAPTUM_RULES:
            raise ValueError(f"FixedGrid needs n_steps >= 1 and method in {CAPTUM_RULES}, got {self.n_steps}, "
                             f"{self.method!r}")


@dataclass(frozen=True, eq=False)
class KinkCut:
    """Every path cut at the ReLU kinks located on a `grid`-point sampling of it (`path_kinks`) and
    into pieces of at most `MAX_SEGMENT`, each piece integrated with `segment_points`
    Gauss-Legendre points.

    grid: G for every step, or [B] long, each step's own grid (e.g. `PathAttribution.grid` of a
    cut layer, so that every layer of a step shares one set of pieces; `on_grids`). max_grid: the
    steps still incomplete by `tolerance` of |Δf| (and |Δf| >= `min_delta`) are redone on 4× finer
    grids up to it (`refine_until_complete`); None: `grid` only. internal_batch_size: path points
    per forward pass.
    """

    grid: int | torch.Tensor = 512
    max_grid: int | None = 32768
    segment_points: int = 2
    internal_batch_size: int = 4096
    tolerance: float = 0.01
    min_delta: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.grid, torch.Tensor):
            if self.max_grid is not None or bool((self.grid < 1).any()):
                raise ValueError("per-step kink grids are >= 1 and never refined (max_grid None)")
        elif self.grid < 1 or (self.max_grid is not None and self.max_grid < self.grid):
            raise ValueError(f"KinkCut needs 1 <= grid <= max_grid, got {self.grid}, {self.max_grid}")
        if self.segment_points < 1 or self.internal_batch_size < 1:
            raise ValueError(f"KinkCut needs segment_points and internal_batch_size >= 1, got "
                             f"{self.segment_points}, {self.internal_batch_size}")

    def on_grids(self, grids: torch.Tensor) -> KinkCut:
        """The same rule with each step's kinks on its own grid ([B] long), not refined."""
        return replace(self, grid=grids, max_grid=None)


Scheme = FixedGrid | KinkCut
"""How a path method integrates along its paths."""
KINK_CUT = KinkCut()
"""The path methods' default scheme: kinks on 512 points, refined up to 32768, 2 points a piece."""


@dataclass(frozen=True)
class Pieces:
    """b straight paths baseline -> obs of a path method, cut at the network's kinks."""

    obs: torch.Tensor            # [b, E, F], detached
    baseline: torch.Tensor       # [b, E, F], detached, obs's dtype
    targets: torch.Tensor        # [b] long
    mask: torch.Tensor           # [b, E] obs's absent mask, fixed along every path
    forward: Callable[..., torch.Tensor]   # the quantity attributed, f(x, mask) -> [N, A]
    segments: Segments


Integrand = Callable[[Pieces, int, int], torch.Tensor]
"""A path method's rule on cut paths: (pieces, Gauss-Legendre points per piece, path points per
forward pass) -> attribution [b, ...] of the b paths (any float dtype)."""


def kink_cut(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, target: Target, integrand: Integrand,
             scheme: KinkCut, *, advantage: bool = False, kinks: PathKinks | None = None) -> PathAttribution:
    """A path method (`integrand`) on every path cut at its kinks, by `scheme` (one grid, per-step
    grids, or refined until complete). obs, baseline: [B, E, F]; target: action index or [B];
    kinks: a `PathKinks` of these paths to share with other jobs on them.
    Returns the attribution in obs's dtype, delta [B] float64."""
    targets = target_indices(target, obs.shape[0])
    shared = PathKinks.of(kinks, net, obs, baseline, scheme.internal_batch_size)
    forward = quantity_fn(net, advantage)

    def attribute(idx: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, b = obs[idx].detach(), baseline[idx].detach().to(obs.dtype)
        pieces = Pieces(x, b, targets[idx], absent_mask(x), forward, path_segments(shared.on_grid(idx, grid)))
        attr = integrand(pieces, scheme.segment_points, scheme.internal_batch_size)
        delta = (attr.double().reshape(len(idx), -1).sum(1)
                 - target_change(net, x, b, pieces.targets, advantage=advantage).double())
        return attr.to(x.dtype), delta, pieces.segments.count(len(idx)) * scheme.segment_points

    if isinstance(scheme.grid, torch.Tensor):
        return integrate_on_grids(attribute, scheme.grid)
    if scheme.max_grid is None:
        return integrate_on_grids(attribute, torch.full((obs.shape[0],), scheme.grid, dtype=torch.long))
    return refine_until_complete(attribute, target_change(net, obs, baseline, targets, advantage=advantage),
                                 point_schedule(scheme.grid, scheme.max_grid), tolerance=scheme.tolerance,
                                 min_delta=scheme.min_delta)


def captum_attribute(method: GradientAttribution, obs: torch.Tensor, baseline: torch.Tensor, target: Target,
                     scheme: FixedGrid, *, fix_mask: bool = True, **kwargs: object) -> object:
    """captum's `method.attribute` of obs [B, E, F] from baseline [B, E, F] on the `scheme` grid,
    obs's absent mask passed to the network at every path point if `fix_mask` (else the network
    recomputes it from the interpolated presence: only to show the error that causes).
    kwargs: the method's own (e.g. `neuron_selector`, `return_convergence_delta`)."""
    obs = obs.detach()
    return method.attribute(obs, baselines=baseline.detach().to(obs.dtype), target=captum_target(target, obs.shape[0]),
                            additional_forward_args=(absent_mask(obs),) if fix_mask else None,
                            n_steps=scheme.n_steps, method=scheme.method,
                            internal_batch_size=scheme.internal_batch_size, **kwargs)


def attribute(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, target: Target, scheme: Scheme, *,
              captum: Callable[[Callable[..., torch.Tensor]], GradientAttribution], integrand: Integrand,
              advantage: bool = False, fix_mask: bool = True, kinks: PathKinks | None = None) -> PathAttribution:
    """A path method of Q(s, a) (or the advantage) integrated by `scheme`: captum's class
    (`captum(f)`, f the quantity) on a `FixedGrid`, the method's `integrand` on a `KinkCut`.

    obs, baseline: [B, E, F]; target: action index or [B]. fix_mask=False (the network recomputes
    the mask along the path) only on a FixedGrid; kinks (`PathKinks` of these paths) only with a KinkCut.
    """
    if isinstance(scheme, KinkCut):
        if not fix_mask:
            raise ValueError("a KinkCut holds obs's absent mask fixed along every path: fix_mask must be True")
        return kink_cut(net, obs, baseline, target, integrand, scheme, advantage=advantage, kinks=kinks)
    if kinks is not None:
        raise ValueError("kinks go with a KinkCut scheme; a FixedGrid locates none")
    attr, delta = captum_attribute(captum(quantity_fn(net, advantage)), obs, baseline, target, scheme,
                                   fix_mask=fix_mask, return_convergence_delta=True)
    batch = obs.shape[0]
    return PathAttribution(attr.detach(), delta.detach(), torch.zeros(batch, dtype=torch.long),
                           torch.full((batch,), scheme.n_steps, dtype=torch.long))
