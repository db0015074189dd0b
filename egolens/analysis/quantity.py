"""What an attribution explains: Q(s, a) of one action per step, or its advantage Q(s, a) − mean_a Q(s, ·).

The network is any `nn.Module` with `forward(obs, mask=None) -> Q [B, A]` (`EgoAttentionNetwork`
or a hand-made test net). Shapes: B steps, E entities, F features, A actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from egolens.analysis import paths
from egolens.vocabulary import absent_mask

Target = int | torch.Tensor
"""An action index for every step, or a [B] tensor of action indices (one per step)."""


def quantity_fn(net: nn.Module, advantage: bool) -> Callable[..., torch.Tensor]:
    """f(x, mask=None) -> Q [N, A], or the advantage Q − mean_a Q [N, A] if `advantage`."""

    def forward(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = net(x, mask)
        return q - q.mean(dim=-1, keepdim=True) if advantage else q

    return forward


def target_indices(target: Target, batch: int) -> torch.Tensor:
    """int or [B] -> [B] long."""
    if isinstance(target, torch.Tensor):
        target = target.reshape(-1).long()
        if target.numel() != batch:
            raise ValueError(f"target has {target.numel()} entries for {batch} steps")
        return target
    return torch.full((batch,), int(target), dtype=torch.long)


def captum_target(target: Target, batch: int) -> int | torch.Tensor:
    """The target as captum takes it: an int stays an int, a tensor becomes [B] long."""
    return int(target) if not isinstance(target, torch.Tensor) else target_indices(target, batch)


def target_output(net: nn.Module, obs: torch.Tensor, target: Target, *, advantage: bool = False,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q(s, a) (or the advantage) of action `target` for each step: obs [B, E, F] -> [B].

    mask: [B, E] bool True = absent, or None to recompute it from `obs`.
    """
    with torch.no_grad():
        out = quantity_fn(net, advantage)(obs, mask)
    return out.gather(1, target_indices(target, obs.shape[0])[:, None]).squeeze(1)


def path_delta_f(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor,
                 advantage: bool) -> torch.Tensor:
    """f(obs) − f(baseline) [B], both with obs's absent mask (as the path methods see them)."""
    mask = absent_mask(obs)
    return (target_output(net, obs, targets, advantage=advantage, mask=mask)
            - target_output(net, baseline, targets, advantage=advantage, mask=mask))


@dataclass(frozen=True)
class PiecewisePaths:
    """The straight paths baseline -> obs of a piecewise path method, cut at the network's kinks."""

    obs: torch.Tensor            # [B, E, F], detached
    baseline: torch.Tensor       # [B, E, F], detached, obs's dtype
    targets: torch.Tensor        # [B] long
    mask: torch.Tensor           # [B, E] obs's absent mask, fixed along every path
    forward: Callable[..., torch.Tensor]
    segments: paths.Segments


def piecewise_paths(net: nn.Module, obs: torch.Tensor, target: Target, baseline: torch.Tensor, advantage: bool,
                    grid: int, rows: int, kinks: Sequence[torch.Tensor] | None = None) -> PiecewisePaths:
    """The paths of `obs` from `baseline`, their targets, mask and quantity, cut at the kinks located on
    `grid` (or the `kinks` given)."""
    obs, baseline = obs.detach(), baseline.detach().to(obs.dtype)
    mask = absent_mask(obs)
    return PiecewisePaths(obs, baseline, target_indices(target, obs.shape[0]), mask, quantity_fn(net, advantage),
                          paths.path_segments(paths.located_kinks(net, obs, baseline, mask, grid, rows, kinks)))
