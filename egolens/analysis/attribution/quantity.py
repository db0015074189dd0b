"""What an attribution explains: Q(s, a) of one action per step, or its advantage Q(s, a) − mean_a Q(s, ·).

The network is any `nn.Module` with `forward(obs, mask=None) -> Q [B, A]` (`EgoAttentionNetwork`
or a hand-made test net). Shapes: B steps, E entities, F features, A actions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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


def target_change(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, target: Target, *,
                  advantage: bool = False, fix_mask: bool = True) -> torch.Tensor:
    """f(obs) − f(baseline) [B] of action `target` as an attribution sees it: both ends with obs's
    absent mask if `fix_mask` (the path methods), else each with its own recomputed mask (removal
    methods: a zeroed row is absent). obs, baseline: [B, E, F]."""
    mask = absent_mask(obs) if fix_mask else None
    return (target_output(net, obs, target, advantage=advantage, mask=mask)
            - target_output(net, baseline, target, advantage=advantage, mask=mask))
