"""Straight-line path integrals through a ReLU network, split where a ReLU switches on or off.

Integrated gradients and conductance integrate a gradient along x(α) = b + α·(x − b), α in [0, 1].
For a ReLU network that gradient jumps wherever a ReLU's input changes sign (a *kink*), so a
quadrature over the whole path converges only like 1/points: 4096 Gauss-Legendre points still
leave about one recorded step in ten more than 1% incomplete. Between two kinks the integrand is
smooth (linear maps, softmax), so this module

1. finds the kinks: the ReLU inputs are evaluated on a grid of α (forward passes only) and each
   sign change between neighbouring grid points is located by linear interpolation (exact for a
   first layer, whose input is linear in α);
2. cuts the path there (and into pieces no longer than `max_length`), and
3. integrates every piece with a few Gauss-Legendre points, which is then exact to high order.

A kink the grid misses (a ReLU that switches off and on again between two grid points) costs
accuracy, so `refine_until_complete` redoes only the steps still incomplete with a finer grid.

Shapes: B steps, K kinks, S segments (pieces of paths), N quadrature nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from egolens.model import MultiLayerPerceptron

MAX_SEGMENT = 1 / 16
"""Longest piece of a path integrated by one Gauss-Legendre rule (smooth but curved stretches)."""

AttributeFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(step indices [b], kink grid) -> (attribution [b, ...], completeness delta [b], gradient evaluations [b])."""


@dataclass
class Segments:
    """Pieces [start, end] of the paths of B steps, in path order within each step."""

    step: torch.Tensor    # [S] long, the step each piece belongs to
    start: torch.Tensor   # [S] float64 α
    end: torch.Tensor     # [S] float64 α

    def count(self, batch: int) -> torch.Tensor:
        """[B] long: pieces per step."""
        return torch.bincount(self.step, minlength=batch)


@dataclass
class Refined:
    """A path attribution whose steps were integrated with kink grids fine enough (`refine_until_complete`)."""

    attr: torch.Tensor    # [B, ...]
    delta: torch.Tensor   # [B] float64, Σ attr − (f(x) − f(b))
    grid: torch.Tensor    # [B] long, grid the kinks of each step were located on
    points: torch.Tensor  # [B] long, gradient evaluations spent on each step's path


def relu_input_sites(net: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Where the network's ReLU inputs can be read: (module, True if its *output* is the ReLU's
    input). Every hidden Linear of a `MultiLayerPerceptron` (ReLU applied by the MLP), and the
    input of every `nn.ReLU` module (hand-made nets)."""
    sites: list[tuple[nn.Module, bool]] = []
    for module in net.modules():
        if isinstance(module, MultiLayerPerceptron):
            sites.extend((linear, True) for linear in module.layers)
        elif isinstance(module, nn.ReLU):
            sites.append((module, False))
    return sites


def _relu_inputs(net: nn.Module, forward: Callable[[torch.Tensor, torch.Tensor], object], x: torch.Tensor,
                 mask: torch.Tensor) -> list[torch.Tensor]:
    """Run forward(x, mask) (a forward pass of `net`) and return every ReLU input it computed ([rows, ...] each)."""
    captured: list[torch.Tensor] = []

    def keep_output(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        captured.append(out.detach())

    def keep_input(_m: nn.Module, inp: tuple[torch.Tensor, ...], _o: torch.Tensor) -> None:
        captured.append(inp[0].detach())

    handles = [module.register_forward_hook(keep_output if is_output else keep_input)
               for module, is_output in relu_input_sites(net)]
    try:
        with torch.no_grad():
            forward(x, mask)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def sign_changes(values: torch.Tensor) -> torch.Tensor:
    """Where piecewise-linear interpolants of sampled functions cross zero.

    values: [G + 1, U] float64, U functions sampled at α = 0, 1/G, ..., 1.
    Returns the crossing α of every sign change between neighbouring samples, [K] (unsorted).
    """
    grid = values.shape[0] - 1
    positive = values > 0
    cell, unit = torch.nonzero(positive[1:] != positive[:-1], as_tuple=True)
    v0, v1 = values[cell, unit], values[cell + 1, unit]
    return (cell.double() + v0 / (v0 - v1)) / grid


def path_kinks(net: nn.Module, forward: Callable[[torch.Tensor, torch.Tensor], object], obs: torch.Tensor,
               baseline: torch.Tensor, mask: torch.Tensor, grid: int, rows: int = 4096) -> list[torch.Tensor]:
    """The α in (0, 1) at which some ReLU input of `net` changes sign along each step's path.

    forward(x [N, E, F], mask [N, E]) runs `net`; obs, baseline: [B, E, F]; mask: [B, E] (held
    fixed along the path); grid: G, the path is sampled at G + 1 points; rows: forward batch size.
    Returns B sorted float64 tensors [K_b]. Units that are constant along the path (an unchanged
    ego, absent vehicles) never switch and add nothing.
    """
    alphas = torch.linspace(0.0, 1.0, grid + 1, dtype=torch.float64)
    per_chunk = max(1, rows // (grid + 1))
    kinks: list[torch.Tensor] = []
    for first in range(0, obs.shape[0], per_chunk):
        x, b, m = (t[first:first + per_chunk] for t in (obs, baseline, mask))
        chunk = x.shape[0]
        path = (b.double()[:, None] + alphas[None, :, None, None] * (x - b).double()[:, None]).to(obs.dtype)
        path = path.reshape(chunk * (grid + 1), *obs.shape[1:])
        rows_mask = m[:, None].expand(chunk, grid + 1, m.shape[1]).reshape(-1, m.shape[1])
        inputs = _relu_inputs(net, forward, path, rows_mask)
        for i in range(chunk):
            found = [sign_changes(a.reshape(chunk, grid + 1, -1)[i].double()) for a in inputs]
            kinks.append(torch.unique(torch.cat(found)) if found else torch.zeros(0, dtype=torch.float64))
    return kinks


def path_segments(kinks: Sequence[torch.Tensor], max_length: float = MAX_SEGMENT,
                  min_length: float = 1e-12) -> Segments:
    """Cut each path [0, 1] at its kinks and at multiples of `max_length`; pieces shorter than
    `min_length` (coinciding cuts) are dropped. kinks: B tensors of α."""
    uniform = torch.linspace(0.0, 1.0, math.ceil(1 / max_length) + 1, dtype=torch.float64)
    steps, starts, ends = [], [], []
    for i, k in enumerate(kinks):
        cuts = torch.unique(torch.cat((uniform, k.double().clamp(0.0, 1.0))))
        start, end = cuts[:-1], cuts[1:]
        keep = end - start > min_length
        starts.append(start[keep])
        ends.append(end[keep])
        steps.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
    return Segments(torch.cat(steps), torch.cat(starts), torch.cat(ends))


def gauss_legendre_nodes(segments: Segments, points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre rule: `points` nodes on every segment.

    Returns (step [N] long, α [N] float64, weight [N] float64), N = S · points; the weights of a
    step sum to 1 (its path length), and Σ weight · g(α) integrates any g that is a polynomial
    of degree < 2 · points on each segment exactly.
    """
    nodes, weights = np.polynomial.legendre.leggauss(points)
    nodes_t, weights_t = torch.from_numpy(nodes), torch.from_numpy(weights)
    half = (segments.end - segments.start)[:, None] / 2
    alpha = (segments.start[:, None] + half * (nodes_t[None] + 1)).reshape(-1)
    weight = (half * weights_t[None]).reshape(-1)
    return segments.step.repeat_interleave(points), alpha, weight


def point_schedule(start: int, maximum: int, factor: int = 4) -> list[int]:
    """Grid sizes tried in turn: start, start·factor, ... up to `maximum` (always included)."""
    if start < 1 or maximum < start or factor < 2:
        raise ValueError(f"need 1 <= start <= maximum and factor >= 2, got {start}, {maximum}, {factor}")
    schedule = [start]
    while schedule[-1] * factor < maximum:
        schedule.append(schedule[-1] * factor)
    if schedule[-1] != maximum:
        schedule.append(maximum)
    return schedule


def refine_until_complete(attribute: AttributeFn, delta_f: torch.Tensor, schedule: Sequence[int], *,
                          tolerance: float = 0.01, min_delta: float = 1e-3) -> Refined:
    """Integrate every step with kinks located on a grid of schedule[0], then again on the next
    grid only the steps whose completeness error |delta| / |delta_f| is still >= `tolerance`,
    until all pass or the schedule ends (those steps keep the finest result).

    delta_f: [B] f(obs) − f(baseline) as the attribution sees it (same mask); steps with
    |delta_f| < min_delta are never refined (nothing to explain).
    """
    batch = delta_f.shape[0]
    todo = torch.arange(batch)
    attr: torch.Tensor | None = None
    delta = torch.zeros(batch, dtype=torch.float64)
    grid = torch.zeros(batch, dtype=torch.long)
    points = torch.zeros(batch, dtype=torch.long)
    for n in schedule:
        part, part_delta, part_points = attribute(todo, n)
        if attr is None:
            attr = torch.zeros((batch, *part.shape[1:]), dtype=part.dtype)
        attr[todo] = part.detach()
        delta[todo] = part_delta.detach().double().reshape(-1)
        grid[todo] = n
        points[todo] = part_points.long()
        change = delta_f[todo].double().abs()
        failing = (change >= min_delta) & (delta[todo].abs() >= tolerance * change)
        todo = todo[failing]
        if todo.numel() == 0:
            break
    assert attr is not None
    return Refined(attr, delta, grid, points)
