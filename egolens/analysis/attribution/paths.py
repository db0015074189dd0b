"""The machinery of the path methods (integrated gradients, layer conductance): straight paths
through a ReLU network, where they cross a kink, how they are cut, the quadrature on the pieces
and the refinement until complete. The schemes that use it: `egolens.analysis.attribution.schemes`.

A path method integrates a gradient along x(α) = b + α·(x − b), α in [0, 1], with obs's absent
mask held fixed. For a ReLU network that gradient jumps wherever a ReLU's input changes sign (a
*kink*), so a quadrature over the whole path converges only like 1/points: 4096 Gauss-Legendre
points still leave about one recorded step in ten more than 1% incomplete. Between two kinks the
integrand is smooth (linear maps, softmax), so this module

1. finds the kinks: the ReLU inputs are evaluated on a grid of α (forward passes only), and each
   sign change between neighbouring grid points is located by bracketed root finding on that
   unit (Illinois regula falsi, started from linear interpolation). Linear interpolation alone is
   exact only for a first layer, whose input is linear in α; a deeper unit's input bends, and
   has kinks of its own wherever an earlier ReLU switches, so its interpolated crossing can be
   off by half a grid cell (which left one trained-network step 1.15% incomplete even on a
   32768-point grid);
2. cuts the path there (and into pieces no longer than `max_length`), and
3. places a few Gauss-Legendre points on every piece, which is then exact to high order.

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

from egolens.hooks import capture
from egolens.model import MultiLayerPerceptron
from egolens.vocabulary import absent_mask

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
class PathAttribution:
    """A path method's attribution of B steps, with what it cost and how complete it is."""

    attr: torch.Tensor    # [B, ...]
    delta: torch.Tensor   # [B] Σ attr − (f(x) − f(b)): float64 (KinkCut), captum's convergence delta (FixedGrid)
    grid: torch.Tensor    # [B] long, grid the kinks of each step were located on (0: FixedGrid, none located)
    points: torch.Tensor  # [B] long, gradient evaluations spent on each step's path


def relu_input_sites(net: nn.Module) -> list[tuple[str, bool]]:
    """Where the network's ReLU inputs can be read: (module name, True if its *output* is the ReLU's
    input). Every hidden Linear of a `MultiLayerPerceptron` (ReLU applied by the MLP), and the
    input of every `nn.ReLU` module (hand-made nets), in module order."""
    mlp_linears = {id(linear) for module in net.modules() if isinstance(module, MultiLayerPerceptron)
                   for linear in module.layers}
    sites: list[tuple[str, bool]] = []
    for name, module in net.named_modules():
        if id(module) in mlp_linears:
            sites.append((name, True))
        elif isinstance(module, nn.ReLU):
            sites.append((name, False))
    return sites


def _relu_inputs(net: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Run net(x, mask) and return every ReLU input it computed ([rows, ...] each, `relu_input_sites`
    order; an `nn.ReLU` called twice in one pass keeps its last input)."""
    sites = relu_input_sites(net)
    outputs = [name for name, is_output in sites if is_output]
    inputs = [name for name, is_output in sites if not is_output]
    with torch.no_grad(), capture(net, outputs, inputs=inputs) as cached:
        net(x, mask)
    return [cached[name] for name, _ in sites]


@dataclass
class Crossings:
    """Sign changes of ReLU inputs between neighbouring grid points of the paths, K of them."""

    step: torch.Tensor    # [K] long, whose path
    site: torch.Tensor    # [K] long, index into `relu_input_sites`
    unit: torch.Tensor    # [K] long, flat index of the unit within one row of the site's activation
    lo: torch.Tensor      # [K] float64 α, bracket: the unit's input has one sign at lo ...
    hi: torch.Tensor      # [K] float64 α, ... and the other at hi
    v_lo: torch.Tensor    # [K] float64, the unit's input at lo
    v_hi: torch.Tensor    # [K] float64, the unit's input at hi

    def interpolated(self) -> torch.Tensor:
        """[K] float64: where the straight line through (lo, v_lo), (hi, v_hi) crosses zero."""
        return _secant(self.lo, self.hi, self.v_lo, self.v_hi)


def _secant(lo: torch.Tensor, hi: torch.Tensor, v_lo: torch.Tensor, v_hi: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * v_lo / (v_lo - v_hi)


def grid_crossings(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sign changes between neighbouring samples of sampled functions.

    values: [P, G + 1, U] float64, U functions of P paths sampled at α = 0, 1/G, ..., 1.
    Returns (path [K], cell [K], unit [K]): function `unit` of path `path` changes sign between
    α = cell/G and (cell + 1)/G.
    """
    positive = values > 0
    path, cell, unit = torch.nonzero(positive[:, 1:] != positive[:, :-1], as_tuple=True)
    return path, cell, unit


def polish_roots(evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], crossings: Crossings, *,
                 xtol: float = 1e-7, max_iterations: int = 60) -> torch.Tensor:
    """Each crossing's root α, found by Illinois regula falsi inside its bracket [lo, hi].

    evaluate(idx [k] long, α [k] float64) -> [k]: the input of crossing idx's unit at α on its path.
    A root is final once an iteration moves it by less than `xtol` (or hits 0 exactly); a unit
    whose input is linear in α (a first layer) is final after about one evaluation. The default
    `xtol` is the resolution of float32 path points: a finer one only chases rounding noise.
    Returns [K] float64 α, each within its bracket.
    """
    lo, hi = crossings.lo.clone(), crossings.hi.clone()
    v_lo, v_hi = crossings.v_lo.clone(), crossings.v_hi.clone()
    alpha = _secant(lo, hi, v_lo, v_hi)
    last = torch.zeros_like(alpha, dtype=torch.int8)     # which end the previous step replaced: -1 lo, +1 hi
    active = torch.arange(len(alpha))
    for _ in range(max_iterations):
        if active.numel() == 0:
            break
        a = alpha[active]
        v = evaluate(active, a).double()
        root_above = (v > 0) == (v_lo[active] > 0)       # same sign as at lo: the root lies in (a, hi)
        new_lo = torch.where(root_above, a, lo[active])
        new_hi = torch.where(root_above, hi[active], a)
        new_v_lo = torch.where(root_above, v, v_lo[active])
        new_v_hi = torch.where(root_above, v_hi[active], v)
        # Illinois: an end kept twice in a row has its value halved, so the secant stops creeping
        new_v_hi = torch.where(root_above & (last[active] == -1), new_v_hi / 2, new_v_hi)
        new_v_lo = torch.where(~root_above & (last[active] == 1), new_v_lo / 2, new_v_lo)
        lo[active], hi[active], v_lo[active], v_hi[active] = new_lo, new_hi, new_v_lo, new_v_hi
        last[active] = torch.where(root_above, -1, 1).to(torch.int8)
        moved = _secant(new_lo, new_hi, new_v_lo, new_v_hi)
        exact = v == 0
        alpha[active] = torch.where(exact, a, moved)
        active = active[~exact & ((moved - a).abs() >= xtol)]
    return alpha


def path_points(obs: torch.Tensor, baseline: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Points b + α·(x − b) on straight paths, computed in float64 and stored in obs's dtype.
    obs, baseline: [N, ...]; alpha: [N] or [N, G] float64 -> [N, ...] or [N·G, ...] (path-major)."""
    a = alpha.reshape(alpha.shape[0], -1, *(1,) * (obs.dim() - 1))
    points = baseline.double()[:, None] + a * (obs - baseline).double()[:, None]
    return points.reshape(-1, *obs.shape[1:]).to(obs.dtype)


def path_crossings(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor, grid: int,
                   rows: int = 4096) -> Crossings:
    """Every sign change of a ReLU input of `net` between neighbouring points of a `grid`-point
    sampling of each step's path. obs, baseline: [B, E, F]; mask: [B, E]; rows: forward batch size."""
    alphas = torch.linspace(0.0, 1.0, grid + 1, dtype=torch.float64)
    per_chunk = max(1, rows // (grid + 1))
    found: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for first in range(0, obs.shape[0], per_chunk):
        x, b, m = (t[first:first + per_chunk] for t in (obs, baseline, mask))
        chunk = x.shape[0]
        path = path_points(x, b, alphas.expand(chunk, grid + 1))
        rows_mask = m[:, None].expand(chunk, grid + 1, m.shape[1]).reshape(-1, m.shape[1])
        for site, inputs in enumerate(_relu_inputs(net, path, rows_mask)):
            values = inputs.reshape(chunk, grid + 1, -1).double()
            step, cell, unit = grid_crossings(values)
            found.append((site, step + first, unit, cell, values[step, cell, unit], values[step, cell + 1, unit]))
    if not found:
        empty = torch.zeros(0, dtype=torch.long)
        return Crossings(empty, empty, empty, *(torch.zeros(0, dtype=torch.float64),) * 4)
    cell = torch.cat([f[3] for f in found])
    return Crossings(torch.cat([f[1] for f in found]), torch.cat([torch.full_like(f[1], f[0]) for f in found]),
                     torch.cat([f[2] for f in found]), alphas[cell], alphas[cell + 1],
                     torch.cat([f[4] for f in found]), torch.cat([f[5] for f in found]))


def unit_inputs(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor, crossings: Crossings,
                idx: torch.Tensor, alpha: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """The input of crossing idx's ReLU unit at α on its step's path, [k] float64.
    obs, baseline: [B, E, F]; mask: [B, E]; idx: [k] long into `crossings`; alpha: [k] float64."""
    out = torch.empty(len(idx), dtype=torch.float64)
    for first in range(0, len(idx), rows):
        part = idx[first:first + rows]
        step, site, unit = crossings.step[part], crossings.site[part], crossings.unit[part]
        points = path_points(obs[step], baseline[step], alpha[first:first + rows])
        values = out[first:first + rows]
        for index, captured in enumerate(_relu_inputs(net, points, mask[step])):
            here = site == index
            values[here] = captured.reshape(len(part), -1)[here, unit[here]].double()
    return out


def path_kinks(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor, grid: int,
               rows: int = 4096, *, polish: bool = True) -> list[torch.Tensor]:
    """The α in (0, 1) at which some ReLU input of `net` changes sign along each step's path.

    net(x [N, E, F], mask [N, E]) -> [N, A]; obs, baseline: [B, E, F]; mask: [B, E] (held
    fixed along the path); grid: G, the path is sampled at G + 1 points, and every sign change
    between two samples is located by root finding on its unit (`polish_roots`), or by linear
    interpolation only if not `polish`; rows: forward batch size.
    Returns B sorted float64 tensors [K_b]. Units that are constant along the path (an unchanged
    ego, absent vehicles) never switch and add nothing.
    """
    crossings = path_crossings(net, obs, baseline, mask, grid, rows)
    if polish:
        alpha = polish_roots(lambda idx, a: unit_inputs(net, obs, baseline, mask, crossings, idx, a, rows),
                             crossings)
    else:
        alpha = crossings.interpolated()
    return [torch.unique(alpha[crossings.step == i]) for i in range(obs.shape[0])]


class PathKinks:
    """The kinks of B fixed paths baseline → obs (mask held fixed), located once per grid and step
    and then reused: they depend on the path alone, not on the action, quantity or layer being
    attributed, so every IG and conductance job on the same baseline shares them.

    obs, baseline: [B, E, F]; mask: [B, E]; rows: forward batch size.
    """

    def __init__(self, net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor,
                 rows: int = 4096) -> None:
        self.net, self.rows = net, rows
        self.obs, self.baseline, self.mask = obs.detach(), baseline.detach().to(obs.dtype), mask
        self._found: dict[int, dict[int, torch.Tensor]] = {}

    @classmethod
    def of(cls, known: PathKinks | None, net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor,
           rows: int = 4096) -> PathKinks:
        """`known` if it holds the kinks of these paths through `net` (ValueError if of others),
        else new PathKinks for them (mask: obs's absent vehicles)."""
        if known is None:
            return cls(net, obs, baseline, absent_mask(obs), rows)
        if net is not known.net or not (torch.equal(obs, known.obs)
                                        and torch.equal(baseline.to(obs.dtype), known.baseline)):
            raise ValueError("these PathKinks were located on another network or other paths")
        return known

    def on_grid(self, idx: torch.Tensor, grid: int) -> list[torch.Tensor]:
        """The kinks of steps idx [k] located on a `grid`-point grid (`path_kinks`), computed for
        the steps not asked for before; k sorted float64 tensors."""
        found = self._found.setdefault(grid, {})
        missing = [i for i in idx.tolist() if i not in found]
        if missing:
            new = torch.tensor(missing, dtype=torch.long)
            kinks = path_kinks(self.net, self.obs[new], self.baseline[new], self.mask[new], grid, self.rows)
            found.update(zip(missing, kinks))
        return [found[i] for i in idx.tolist()]


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


class _PerStep:
    """A `PathAttribution` of B steps filled in by parts (subsets of steps)."""

    def __init__(self, batch: int) -> None:
        self.attr: torch.Tensor | None = None
        self.delta = torch.zeros(batch, dtype=torch.float64)
        self.grid = torch.zeros(batch, dtype=torch.long)
        self.points = torch.zeros(batch, dtype=torch.long)

    def put(self, idx: torch.Tensor, grid: int, part: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Steps idx [b] integrated on `grid`: (attribution [b, ...], delta [b], gradient evaluations [b])."""
        attr, delta, points = part
        if self.attr is None:
            self.attr = torch.zeros((len(self.delta), *attr.shape[1:]), dtype=attr.dtype)
        self.attr[idx] = attr.detach()
        self.delta[idx] = delta.detach().double().reshape(-1)
        self.grid[idx] = grid
        self.points[idx] = points.long()

    def result(self) -> PathAttribution:
        assert self.attr is not None
        return PathAttribution(self.attr, self.delta, self.grid, self.points)


def refine_until_complete(attribute: AttributeFn, delta_f: torch.Tensor, schedule: Sequence[int], *,
                          tolerance: float = 0.01, min_delta: float = 1e-3) -> PathAttribution:
    """Integrate every step with kinks located on a grid of schedule[0], then again on the next
    grid only the steps whose completeness error |delta| / |delta_f| is still >= `tolerance`,
    until all pass or the schedule ends (those steps keep the finest result).

    delta_f: [B] f(obs) − f(baseline) as the attribution sees it (same mask); steps with
    |delta_f| < min_delta are never refined (nothing to explain).
    """
    out = _PerStep(delta_f.shape[0])
    todo = torch.arange(delta_f.shape[0])
    for n in schedule:
        out.put(todo, n, attribute(todo, n))
        change = delta_f[todo].double().abs()
        todo = todo[(change >= min_delta) & (out.delta[todo].abs() >= tolerance * change)]
        if todo.numel() == 0:
            break
    return out.result()


def integrate_on_grids(attribute: AttributeFn, grids: torch.Tensor) -> PathAttribution:
    """Integrate each step with its kinks located on its own grid (grids [B] long), the steps of one
    grid together, smallest grid first."""
    out = _PerStep(grids.shape[0])
    for n in torch.unique(grids).tolist():
        idx = torch.nonzero(grids == n).squeeze(1)
        out.put(idx, int(n), attribute(idx, int(n)))
    return out.result()
