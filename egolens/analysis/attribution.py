"""Attribution of Q-values to vehicles and features, and checks that the attributions mean something.

Everything here is a pure function of a network and observations: tensors in, tensors or tidy
DataFrames (one row per observation of a quantity) out; no file I/O. The network is any
`nn.Module` with `forward(obs, mask=None) -> Q [B, A]` (`EgoAttentionNetwork` or a hand-made
test net); activations are only reached through captum's layer hooks on named modules (a Linear
or a `hook_*` point, see `egolens.hooks.activation_names`), never by re-implementing the forward.

Shapes: B steps, E entities (15, row 0 the ego), F features (7: presence, x, y, vx, vy, cos_h,
sin_h), A actions (3: SLOWER, IDLE, FASTER), H heads.

Removing a vehicle = zeroing its row (presence 0), so the network masks it. The ego row is never
removed. Two families of methods, two conventions for the absent mask:
- Path methods (integrated gradients, conductance) move along baseline -> obs; the mask of the
  real observation is held fixed along the path (`fix_mask=True`), because a mask recomputed
  from an interpolated presence flips at presence 0.5 and breaks completeness.
- Removal methods (Shapley values, deletion/insertion) only evaluate real states (each row is
  either the observed one or zero), so the network recomputes the mask: a zeroed row is absent.

Baselines (all [B, E, F], keep presence and the ego row unless said otherwise; name the one
used in every table, `baseline_name`):
- `others_zeroed`: others' kinematics 0, presence kept. Every present vehicle becomes a vehicle
  at (0, 0) in the normalised absolute frame (the middle of the map), at rest, with the
  impossible heading (0, 0). Attributions to presence and to the ego row are exactly 0.
- `typical_scene`: others' kinematics replaced by the pooled mean over recorded present
  vehicles (heading renormalised to a unit vector), presence and ego kept (or the ego replaced
  too with `replace_ego=True`). "Which departures from an average vehicle matter".
- `ego_alone`: every other row zeroed, presence included. With the fixed mask the path keeps
  the vehicles attended (a zero row that is still "present"): f(baseline) is then NOT
  Q(ego alone). It is the removal baseline of `shapley_vehicles` (mask recomputed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients, LayerConductance, NeuronConductance, ShapleyValueSampling
from torch import nn

from egolens.analysis import paths
from egolens.hooks import activation_names
from egolens.stats import spearman
from egolens.vocabulary import ACTIONS, PRESENCE, REFERENCE_FEATURES, absent_mask, present_others

"""Feature names of the observation's last axis."""
"""Action names of the Q-network's output axis."""
KINEMATICS = slice(1, None)
"""Features x, y, vx, vy, cos_h, sin_h (everything but presence)."""
HEADING = slice(5, 7)
"""Features cos_h, sin_h."""

Target = int | torch.Tensor
"""An action index for every step, or a [B] tensor of action indices (one per step)."""


# --------------------------------------------------------------------------- forward functions

def _forward_fn(net: nn.Module, advantage: bool) -> Callable[..., torch.Tensor]:
    """f(x, mask=None) -> Q [N, A], or the advantage Q − mean_a Q [N, A] if `advantage`."""

    def forward(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = net(x, mask)
        return q - q.mean(dim=-1, keepdim=True) if advantage else q

    return forward




def _target_tensor(target: Target, batch: int) -> torch.Tensor:
    """int or [B] -> [B] long."""
    if isinstance(target, torch.Tensor):
        target = target.reshape(-1).long()
        if target.numel() != batch:
            raise ValueError(f"target has {target.numel()} entries for {batch} steps")
        return target
    return torch.full((batch,), int(target), dtype=torch.long)


def _captum_target(target: Target, batch: int) -> int | torch.Tensor:
    return int(target) if not isinstance(target, torch.Tensor) else _target_tensor(target, batch)


def target_output(net: nn.Module, obs: torch.Tensor, target: Target, *, advantage: bool = False,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q(s, a) (or the advantage) of action `target` for each step: obs [B, E, F] -> [B].

    mask: [B, E] bool True = absent, or None to recompute it from `obs`.
    """
    with torch.no_grad():
        out = _forward_fn(net, advantage)(obs, mask)
    return out.gather(1, _target_tensor(target, obs.shape[0])[:, None]).squeeze(1)


def completeness_error(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, attr: torch.Tensor,
                       target: Target, *, advantage: bool = False, fix_mask: bool = True) -> torch.Tensor:
    """|Σ attr − (f(obs) − f(baseline))| / |f(obs) − f(baseline)| per step: -> [B].

    attr: [B, ...] (input attributions [B, E, F], layer conductances [B, D], Shapley values
    [B, E]); summed over all but the batch axis. f is evaluated as the attribution saw it:
    with obs's mask for both ends if `fix_mask`, else each end with its own recomputed mask
    (use that for `shapley_vehicles` with baseline `ego_alone(obs)`: the efficiency check).
    0/0 gives NaN and x/0 gives inf (no change of f to explain).
    """
    mask = absent_mask(obs) if fix_mask else None
    delta_f = (target_output(net, obs, target, advantage=advantage, mask=mask)
               - target_output(net, baseline, target, advantage=advantage, mask=mask))
    total = attr.detach().reshape(attr.shape[0], -1).sum(dim=1).to(delta_f.dtype)
    return (total - delta_f).abs() / delta_f.abs()


# --------------------------------------------------------------------------------- baselines

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


# ------------------------------------------------------------------------ integrated gradients

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
    forward = _forward_fn(net, advantage)
    extra = (absent_mask(obs),) if fix_mask else None
    attr, delta = IntegratedGradients(forward).attribute(
        obs, baselines=baseline.detach().to(obs.dtype), target=_captum_target(target, obs.shape[0]),
        additional_forward_args=extra, n_steps=n_steps, method=method,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attr.detach(), delta.detach()


def _delta_f(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor,
             advantage: bool) -> torch.Tensor:
    """f(obs) − f(baseline) [B], both with obs's absent mask (as the path methods see them)."""
    mask = absent_mask(obs)
    return (target_output(net, obs, targets, advantage=advantage, mask=mask)
            - target_output(net, baseline, targets, advantage=advantage, mask=mask))


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
    obs, baseline = obs.detach(), baseline.detach().to(obs.dtype)
    targets = _target_tensor(target, obs.shape[0])
    mask = absent_mask(obs)
    forward = _forward_fn(net, advantage)
    segments = paths.path_segments(_kinks(net, obs, baseline, mask, grid, rows, kinks))
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
    delta = attr.double().reshape(len(obs), -1).sum(1) - _delta_f(net, obs, baseline, targets, advantage).double()
    return attr, delta, segments.count(len(obs)) * segment_points


def _kinks(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor, grid: int, rows: int,
           known: Sequence[torch.Tensor] | None) -> Sequence[torch.Tensor]:
    """The paths' kinks on `grid`: `known` if given, else located now."""
    if known is not None:
        return known
    return paths.path_kinks(net, obs, baseline, mask, grid, rows)


PieceFn = Callable[[torch.Tensor, int, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(step indices [b], kink grid, their kinks) -> (attribution [b, ...], delta [b], gradient evaluations [b])."""


def _refined(piecewise: PieceFn, net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor,
             advantage: bool, grid: int, max_grid: int, rows: int, tolerance: float, min_delta: float,
             kinks: paths.PathKinks | None) -> paths.Refined:
    """Run `piecewise` on every step with kinks on `grid`, then on 4× finer grids (up to
    `max_grid`) for the steps still incomplete by `tolerance` of |ΔQ| (`paths.refine_until_complete`)."""
    shared = paths.PathKinks.of(kinks, net, obs, baseline, rows)

    def attribute(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return piecewise(idx, n, shared.on_grid(idx, n))

    return paths.refine_until_complete(attribute, _delta_f(net, obs, baseline, targets, advantage),
                                       paths.point_schedule(grid, max_grid), tolerance=tolerance,
                                       min_delta=min_delta)


def kink_aware_integrated_gradients(net: nn.Module, obs: torch.Tensor, target: Target, baseline: torch.Tensor,
                                    grid: int = 512, max_grid: int = 32768, segment_points: int = 2,
                                    rows: int = 4096, *, advantage: bool = False, tolerance: float = 0.01,
                                    min_delta: float = 1e-3, kinks: paths.PathKinks | None = None,
                                    ) -> paths.Refined:
    """`piecewise_integrated_gradients` of every step, redone on a 4× finer kink grid (up to
    `max_grid`) for the steps still incomplete by `tolerance` of |ΔQ| (`paths.refine_until_complete`).
    obs, baseline: [B, E, F]; kinks: a `paths.PathKinks` of these paths to share with other jobs."""
    targets = _target_tensor(target, obs.shape[0])

    def piecewise(idx: torch.Tensor, n: int,
                  known: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return piecewise_integrated_gradients(net, obs[idx], targets[idx], baseline[idx], n, segment_points, rows,
                                              advantage=advantage, kinks=known)

    return _refined(piecewise, net, obs, baseline, targets, advantage, grid, max_grid, rows, tolerance, min_delta,
                    kinks)


def vehicle_attribution(attr: torch.Tensor) -> torch.Tensor:
    """attr [B, E, F] -> [B, E]: the attribution of each entity (sum over its features)."""
    return attr.sum(dim=-1)


def attribution_table(attr: torch.Tensor, obs: torch.Tensor, step_ids: Sequence[int] | np.ndarray | None,
                      action_names: str | Sequence[str], baseline_name: str, model_name: str, *,
                      quantity: str = "q", vehicle_ids: np.ndarray | torch.Tensor | None = None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy tables of input attributions, absent vehicles dropped (the ego row always kept).

    attr, obs: [B, E, F]; step_ids: [B] (None: 0..B−1); action_names: the attributed action of
    each step ([B] names) or one name for all; quantity: what was attributed ("q", "advantage");
    vehicle_ids: optional [B, E] simulator ids (row j is not a fixed vehicle: `order: shuffled`).

    Returns
    - features: one row per (step, entity, feature): model, baseline, quantity, step, action,
      entity, [vehicle_id], is_ego, feature, value (the observed feature), attribution;
    - vehicles: one row per (step, entity): same keys, attribution = sum over the F features.
    """
    attr_np = attr.detach().cpu().numpy()
    obs_np = obs.detach().cpu().numpy()
    batch, entities, n_features = attr_np.shape
    steps = np.arange(batch) if step_ids is None else np.asarray(step_ids)
    actions = np.full(batch, action_names, dtype=object) if isinstance(action_names, str) \
        else np.asarray(list(action_names), dtype=object)
    if steps.shape[0] != batch or actions.shape[0] != batch:
        raise ValueError(f"step_ids and action_names need {batch} entries")
    keep = (~absent_mask(obs.detach().cpu())).numpy()                   # [B, E], ego kept
    b_idx, e_idx = np.nonzero(keep)
    keys = {"model": model_name, "baseline": baseline_name, "quantity": quantity,
            "step": steps[b_idx], "action": actions[b_idx], "entity": e_idx}
    if vehicle_ids is not None:
        ids = vehicle_ids.detach().cpu().numpy() if isinstance(vehicle_ids, torch.Tensor) else np.asarray(vehicle_ids)
        keys["vehicle_id"] = ids[b_idx, e_idx]
    keys["is_ego"] = e_idx == 0
    vehicles = pd.DataFrame({**keys, "attribution": attr_np[b_idx, e_idx].sum(axis=-1)})
    features = pd.DataFrame({k: np.repeat(v, n_features) if isinstance(v, np.ndarray) else v
                             for k, v in keys.items()})
    features["feature"] = np.tile(np.asarray(REFERENCE_FEATURES[:n_features], dtype=object), len(b_idx))
    features["value"] = obs_np[b_idx, e_idx].reshape(-1)
    features["attribution"] = attr_np[b_idx, e_idx].reshape(-1)
    return features, vehicles


# ------------------------------------------------------------------------------- conductance

def _named_module(net: nn.Module, layer_name: str) -> nn.Module:
    if layer_name not in activation_names(net):
        raise KeyError(f"no activation named {layer_name!r}; known: {', '.join(activation_names(net))}")
    return dict(net.named_modules())[layer_name]


def layer_conductance(net: nn.Module, obs: torch.Tensor, layer_name: str, target: Target, baseline: torch.Tensor,
                      n_steps: int = 64, *, method: str = "gausslegendre", internal_batch_size: int | None = 4096,
                      advantage: bool = False, fix_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """captum LayerConductance of Q(s, a) (or the advantage) at the named activation.

    layer_name: a Linear or hook point (`egolens.hooks.activation_names`), e.g.
    `attention_layer.hook_resid` [B, D]. Returns (conductance [B, *activation shape],
    captum's convergence delta [B] = Σ conductance − (f(x) − f(b))).

    Conductances sum to f(x) − f(b) only at a cut every path crosses: the output MLP's input
    `attention_layer.hook_resid` (or any output-MLP layer). `attention_layer.hook_combined` is
    not one: the ½·e residual bypasses it, so its sum misses the ego path unless the ego row
    is the same in obs and baseline.
    """
    obs = obs.detach()
    extra = (absent_mask(obs),) if fix_mask else None
    cond, delta = LayerConductance(_forward_fn(net, advantage), _named_module(net, layer_name)).attribute(
        obs, baselines=baseline.detach().to(obs.dtype), target=_captum_target(target, obs.shape[0]),
        additional_forward_args=extra, n_steps=n_steps, method=method,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return cond.detach(), delta.detach()


def piecewise_layer_conductance(net: nn.Module, obs: torch.Tensor, layer_name: str, target: Target,
                                baseline: torch.Tensor, grid: int = 512, segment_points: int = 2,
                                rows: int = 4096, *, advantage: bool = False,
                                kinks: Sequence[torch.Tensor] | None = None,
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conductance of Q(s, a) (or the advantage) at the named activation, the path cut at the ReLU
    kinks (`paths.path_kinks` on `grid` points) and each piece integrated with `segment_points`
    Gauss-Legendre points.

    Conductance of unit j: ∫₀¹ ∂f/∂a_j(x(α)) · d a_j(x(α))/dα dα along x(α) = b + α(x − b); the
    derivative along the path comes from forward-mode autodiff (tangent x − b), ∂f/∂a_j from a
    backward pass. It is the quantity captum's `LayerConductance` approximates by a left Riemann
    sum of activation differences (first order); here it is integrated to high order, so at a cut
    every path crosses the conductances add up to f(x) − f(b) as IG does. kinks: these paths'
    kinks on `grid` if already located (`paths.PathKinks`).
    Returns (conductance [B, *activation shape], delta [B] float64 = Σ cond − (f(x) − f(b)),
    gradient evaluations per step [B] long).
    """
    obs, baseline = obs.detach(), baseline.detach().to(obs.dtype)
    targets = _target_tensor(target, obs.shape[0])
    mask = absent_mask(obs)
    forward = _forward_fn(net, advantage)
    module = _named_module(net, layer_name)
    segments = paths.path_segments(_kinks(net, obs, baseline, mask, grid, rows, kinks))
    step, alpha, weight = paths.gauss_legendre_nodes(segments, segment_points)
    cond: torch.Tensor | None = None
    for first in range(0, len(step), rows):
        s = step[first:first + rows]
        x = paths.path_points(obs[s], baseline[s], alpha[first:first + rows])
        direction = obs[s] - baseline[s]
        grads, tangents = _layer_gradient_and_tangent(forward, module, x, direction, mask[s], targets[s])
        part = grads.double() * tangents.double() * weight[first:first + rows].reshape((-1,) + (1,) * (grads.dim() - 1))
        if cond is None:
            cond = torch.zeros((len(obs), *part.shape[1:]), dtype=torch.float64)
        cond.index_add_(0, s, part)
    assert cond is not None
    delta = cond.reshape(len(obs), -1).sum(1) - _delta_f(net, obs, baseline, targets, advantage).double()
    return cond.to(obs.dtype), delta, segments.count(len(obs)) * segment_points


def _layer_gradient_and_tangent(forward: Callable[..., torch.Tensor], module: nn.Module, x: torch.Tensor,
                                direction: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """At points x [N, E, F]: ∂f_target/∂a (a = `module`'s output) and the derivative of a along
    `direction` [N, E, F] (forward-mode AD). Both [N, *activation shape]."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.autograd.forward_ad.dual_level():
            forward(torch.autograd.forward_ad.make_dual(x, direction), mask)
            tangent = torch.autograd.forward_ad.unpack_dual(captured[-1]).tangent
        out = forward(x, mask)
        activation = captured[-1]
        grad, = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), activation)
    finally:
        handle.remove()
    if tangent is None:                     # the activation does not depend on the input
        tangent = torch.zeros_like(activation)
    return grad.detach(), tangent.detach()


def kink_aware_layer_conductance(net: nn.Module, obs: torch.Tensor, layer_name: str, target: Target,
                                 baseline: torch.Tensor, grid: int = 512, max_grid: int = 32768,
                                 segment_points: int = 2, rows: int = 4096, *, advantage: bool = False,
                                 tolerance: float = 0.01, min_delta: float = 1e-3,
                                 kinks: paths.PathKinks | None = None) -> paths.Refined:
    """`piecewise_layer_conductance` at a layer every path crosses, redone on a finer kink grid for
    the steps whose conductances do not yet add up to f(obs) − f(baseline) within `tolerance`.
    kinks: a `paths.PathKinks` of these paths to share with other jobs."""
    targets = _target_tensor(target, obs.shape[0])

    def piecewise(idx: torch.Tensor, n: int,
                  known: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return piecewise_layer_conductance(net, obs[idx], layer_name, targets[idx], baseline[idx], n,
                                           segment_points, rows, advantage=advantage, kinks=known)

    return _refined(piecewise, net, obs, baseline, targets, advantage, grid, max_grid, rows, tolerance, min_delta,
                    kinks)


def layer_conductance_on_grids(net: nn.Module, obs: torch.Tensor, layer_name: str, target: Target,
                               baseline: torch.Tensor, grids: torch.Tensor, segment_points: int = 2,
                               rows: int = 4096, *, advantage: bool = False,
                               kinks: paths.PathKinks | None = None) -> torch.Tensor:
    """`piecewise_layer_conductance` with each step's kinks located on its own grid ([B] long,
    e.g. `Refined.grid` of a cut layer, so every layer of a step shares one set of path pieces).
    kinks: a `paths.PathKinks` of these paths (with the cut layer's kinks already in it).
    Returns [B, *activation shape]."""
    targets = _target_tensor(target, obs.shape[0])
    shared = paths.PathKinks.of(kinks, net, obs, baseline, rows)
    out: torch.Tensor | None = None
    for n in torch.unique(grids).tolist():
        idx = torch.nonzero(grids == n).squeeze(1)
        cond, _, _ = piecewise_layer_conductance(net, obs[idx], layer_name, targets[idx], baseline[idx], int(n),
                                                 segment_points, rows, advantage=advantage,
                                                 kinks=shared.on_grid(idx, int(n)))
        if out is None:
            out = torch.zeros((obs.shape[0], *cond.shape[1:]), dtype=cond.dtype)
        out[idx] = cond
    assert out is not None
    return out


def neuron_conductance(net: nn.Module, obs: torch.Tensor, layer_name: str, neuron_index: int | tuple[int, ...],
                       target: Target, baseline: torch.Tensor, n_steps: int = 64, *,
                       method: str = "riemann_trapezoid", internal_batch_size: int | None = 4096,
                       advantage: bool = False, fix_mask: bool = True) -> torch.Tensor:
    """captum NeuronConductance: how much each input feature's change flows through one neuron.

    layer_name must name a module returning a tensor (a hook point or a Linear: captum cannot
    select a neuron of a module returning a tuple such as `attention_layer`). neuron_index
    indexes the activation without its batch axis (int for [B, D], tuple for e.g. the pattern
    (h, 0, j)). Returns [B, E, F]; summed over (E, F) it is the layer conductance of that
    neuron. captum's default here is `riemann_trapezoid` (LayerConductance: `gausslegendre`);
    compare the two with enough steps.
    """
    obs = obs.detach()
    extra = (absent_mask(obs),) if fix_mask else None
    attr = NeuronConductance(_forward_fn(net, advantage), _named_module(net, layer_name)).attribute(
        obs, neuron_selector=neuron_index, baselines=baseline.detach().to(obs.dtype),
        target=_captum_target(target, obs.shape[0]), additional_forward_args=extra, n_steps=n_steps,
        method=method, internal_batch_size=internal_batch_size)
    return attr.detach()


# ---------------------------------------------------------------------------- Shapley values

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
    Σ_j φ_j = f(obs) − f(ego alone) exactly (`completeness_error(..., ego_alone(obs), phi, ...,
    fix_mask=False)`). perturbations_per_eval defaults to the number of groups.
    """
    obs = obs.detach()
    groups = vehicle_groups(obs)
    n_groups = int(groups.max().item()) + 1
    if n_groups == 1:
        return torch.zeros(obs.shape[:2], dtype=obs.dtype)
    sampler = ShapleyValueSampling(_forward_fn(net, advantage))

    def run() -> torch.Tensor:
        return sampler.attribute(obs, baselines=ego_alone(obs), target=_captum_target(target, obs.shape[0]),
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


# ------------------------------------------------------------------- deletion and insertion

def _order_rows(order: torch.Tensor | Sequence[Sequence[int]], batch: int) -> list[list[int]]:
    if isinstance(order, torch.Tensor):
        order = order.tolist()
    rows = [[int(j) for j in row if int(j) >= 0] for row in order]
    if len(rows) != batch:
        raise ValueError(f"order has {len(rows)} rows for {batch} steps")
    return rows


def attribution_order(vehicle_attr: torch.Tensor, present: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Entities ranked by attribution, most important first: [B, E] -> [B, E−1] long.

    Only present non-ego vehicles are ranked (by |attr| if `absolute`, else by signed attr,
    largest first); the rest of each row is −1 padding.
    """
    score = vehicle_attr.detach().abs() if absolute else vehicle_attr.detach()
    present = present.clone()
    present[:, 0] = False
    score = torch.where(present, score.double(), torch.full_like(score, -math.inf, dtype=torch.float64))
    ranked = torch.argsort(score, dim=1, descending=True, stable=True)[:, :-1]
    keep = torch.gather(present, 1, ranked)
    return torch.where(keep, ranked, torch.full_like(ranked, -1))


def random_order(present: torch.Tensor, seed: int) -> torch.Tensor:
    """Present non-ego vehicles in a random order per step: [B, E] bool -> [B, E−1] long (−1 pad)."""
    g = torch.Generator().manual_seed(seed)
    return attribution_order(torch.rand(present.shape, generator=g, dtype=torch.float64), present)


def deletion_insertion_curves(net: nn.Module, obs: torch.Tensor, order: torch.Tensor | Sequence[Sequence[int]], *,
                              order_name: str = "attribution", step_ids: Sequence[int] | None = None,
                              labels: Mapping[str, object] | None = None, batch_size: int = 4096) -> pd.DataFrame:
    """Deletion and insertion curves of vehicles (Petsiuk et al. 2018) on real states.

    obs [B, E, F]; order: per step the entity indices (1..E−1) of the present vehicles, most
    important first ([B, K] padded with −1, e.g. `attribution_order` or `random_order`).
    a* = the greedy action on the full obs. Deletion: zero the rows of the first k vehicles
    (k = 0..n); insertion: from the ego alone, restore the first k vehicles. The network
    recomputes the mask (a zeroed row is absent). labels: constant columns put first (name the
    model and the attribution method and baseline behind `order`). batch_size: states per forward.

    Returns one row per (step, curve, k): [labels], order, step, curve ("deletion"/"insertion"),
    k, n_vehicles, fraction = k/n (0 when n = 0), action (a*), q = Q(s_k, a*),
    agrees = (argmax Q(s_k) == a*).
    """
    obs = obs.detach()
    batch = obs.shape[0]
    rows = _order_rows(order, batch)
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    alone = ego_alone(obs)
    variants, meta = [], []
    for b, row in enumerate(rows):
        for curve in ("deletion", "insertion"):
            for k in range(len(row) + 1):
                state = obs[b].clone() if curve == "deletion" else alone[b].clone()
                chosen = row[:k]
                if chosen:
                    state[chosen] = 0.0 if curve == "deletion" else obs[b, chosen]
                variants.append(state)
                meta.append((b, curve, k, len(row)))
    with torch.no_grad():
        greedy = net(obs).argmax(dim=1)
        states = torch.stack(variants)
        q = torch.cat([net(states[i:i + batch_size]) for i in range(0, len(states), batch_size)])
    b_idx = torch.tensor([m[0] for m in meta])
    star = greedy[b_idx]
    frame = pd.DataFrame({
        "order": order_name,
        "step": [steps[m[0]] for m in meta],
        "curve": [m[1] for m in meta],
        "k": [m[2] for m in meta],
        "n_vehicles": [m[3] for m in meta],
        "fraction": [m[2] / m[3] if m[3] else 0.0 for m in meta],
        "action": [ACTIONS[int(a)] if int(a) < len(ACTIONS) else int(a) for a in star],
        "q": q.gather(1, star[:, None]).squeeze(1).double().numpy(),
        "agrees": (q.argmax(dim=1) == star).numpy(),
    })
    return _labelled(frame, labels)


def curve_auc(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each curve of `deletion_insertion_curves` over fraction ∈ [0, 1] (trapezoid).

    Returns one row per ([labels], order, step, curve): n_vehicles, auc_q (of Q(s_k, a*)),
    auc_agrees (of the action agreement); NaN when the step has no other vehicle.
    Deletion: lower = the order finds what matters sooner; insertion: higher.
    """
    keys = [c for c in curves.columns if c not in {"k", "n_vehicles", "fraction", "action", "q", "agrees"}]
    out = []
    for key, group in curves.sort_values("k").groupby(keys, sort=True):
        n = int(group["n_vehicles"].iloc[0])
        x = group["fraction"].to_numpy(dtype=float)
        auc_q = float(np.trapezoid(group["q"].to_numpy(dtype=float), x)) if n else math.nan
        auc_a = float(np.trapezoid(group["agrees"].to_numpy(dtype=float), x)) if n else math.nan
        out.append({**dict(zip(keys, key)), "n_vehicles": n, "auc_q": auc_q, "auc_agrees": auc_a})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------- rank correlations

def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _labelled(frame: pd.DataFrame, labels: Mapping[str, object] | None) -> pd.DataFrame:
    """Constant label columns (e.g. {"model": "trained", "baseline": "others_zeroed"}) put first."""
    for i, (name, value) in enumerate((labels or {}).items()):
        frame.insert(i, name, value)
    return frame


def _heads_last_entity(attention: np.ndarray | torch.Tensor) -> np.ndarray:
    """[B, H, E] or the cached pattern [B, H, 1, E] -> [B, H, E] float64."""
    att = _np(attention).astype(np.float64)
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
    importance = np.abs(_np(vehicle_attr).astype(np.float64))
    keep = _np(present).astype(bool).copy()
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
    return _labelled(pd.DataFrame(out), labels)


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
        values = _np(fact).astype(np.float64)
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
    return _labelled(pd.DataFrame(out), labels)


# --------------------------------------------------------------------------------- sanity

def randomisation_check(attr_trained: np.ndarray | torch.Tensor, attr_untrained: np.ndarray | torch.Tensor, *,
                        keep: np.ndarray | torch.Tensor | None = None, threshold: float = 0.5,
                        step_ids: Sequence[int] | None = None,
                        labels: Mapping[str, object] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model-parameter randomisation test (Adebayo et al. 2018): trained vs untrained explanations.

    attr_trained, attr_untrained: [B, ...] attributions of the same steps by the trained and a
    randomly initialised network. keep: optional bool [B, ...] (broadcastable) of the entries to
    compare. Use it: entries that are 0 for both nets by construction (absent vehicles, presence
    and the ego row under `others_zeroed`) tie in rank and inflate the correlation.

    labels: constant columns put first in both tables (name the method, baseline, target).

    Returns
    - per_step: step, n, spearman (signed), spearman_abs (of |attr|);
    - summary: one row per measure ("spearman", "spearman_abs"): median over steps, threshold,
      flagged = median > threshold (the explanation hardly depends on the weights: it explains
      the input, not the policy).
    """
    trained = _np(attr_trained).astype(np.float64)
    untrained = _np(attr_untrained).astype(np.float64)
    if trained.shape != untrained.shape:
        raise ValueError(f"shapes differ: {trained.shape} vs {untrained.shape}")
    batch = trained.shape[0]
    mask = np.ones_like(trained, dtype=bool) if keep is None else np.broadcast_to(_np(keep).astype(bool),
                                                                                  trained.shape)
    steps = list(range(batch)) if step_ids is None else list(step_ids)
    per_step = []
    for b in range(batch):
        sel = mask[b]
        t, u = trained[b][sel], untrained[b][sel]
        per_step.append({"step": steps[b], "n": int(sel.sum()), "spearman": spearman(t, u),
                         "spearman_abs": spearman(np.abs(t), np.abs(u))})
    per_step_df = pd.DataFrame(per_step)
    summary = []
    for measure in ("spearman", "spearman_abs"):
        median = float(per_step_df[measure].median()) if per_step_df[measure].notna().any() else math.nan
        summary.append({"measure": measure, "median": median, "threshold": threshold,
                        "flagged": bool(median > threshold)})
    return _labelled(per_step_df, labels), _labelled(pd.DataFrame(summary), labels)


# ------------------------------------------------------- step selection, tables and summaries

def select_steps(n_recorded: int, max_steps: int) -> np.ndarray:
    """Indices of at most `max_steps` of `n_recorded` steps, evenly spaced, first and last included.

    Index i of k is round(i·(n−1)/(k−1)) (halves rounded up, in integers: no float ties); distinct
    and increasing; every step when n ≤ max_steps. Returns int64 [min(n, max_steps)].
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if n_recorded <= max_steps:
        return np.arange(max(n_recorded, 0), dtype=np.int64)
    if max_steps == 1:
        return np.zeros(1, dtype=np.int64)
    i = np.arange(max_steps, dtype=np.int64)
    return (2 * i * (n_recorded - 1) + (max_steps - 1)) // (2 * (max_steps - 1))


def chosen(per_action: torch.Tensor, action: Target) -> torch.Tensor:
    """per_action [A, B, ...] (one result per attributed action) -> [B, ...] of each step's action."""
    index = _target_tensor(action, per_action.shape[1])
    return per_action[index, torch.arange(per_action.shape[1])]


def changed_entries(obs: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """[B, E, F] bool: entries where obs differs from the baseline.

    Path attributions (integrated gradients, conductance) are (x − b)·(...) and so exactly 0
    elsewhere, for any network: those entries tie and must be left out of rank comparisons
    (`randomisation_check(keep=...)`; `.any(-1)` for per-vehicle attributions).
    """
    return obs.detach() != baseline.detach().to(obs.dtype)


def feature_summary(attr: torch.Tensor, obs: torch.Tensor, *, value_name: str = "attribution",
                    labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Input attributions [B, E, F] aggregated over steps per (entity ∈ {ego, others}, feature).

    Per step, `ego` is row 0 and `others` adds up the present other vehicles (absent rows left
    out). mean_<value_name>: mean over steps of that per-step value (over entities and features
    these add up to the mean Σ attr); mean_abs_<value_name>: mean over steps of Σ_vehicles |attr|
    (its size, without cancellation between vehicles). Returns [labels], entity, feature,
    n_steps, mean_<value_name>, mean_abs_<value_name>.
    """
    values = attr.detach().double()
    others = present_others(obs.detach().cpu())[..., None]                # [B, E, 1]
    per_step = {"ego": (values[:, 0], values[:, 0].abs()),
                "others": ((values * others).sum(1), (values.abs() * others).sum(1))}
    n_features = values.shape[-1]
    names = REFERENCE_FEATURES
    out = [{"entity": entity, "feature": names[f] if f < len(names) else f, "n_steps": values.shape[0],
            f"mean_{value_name}": float(signed[:, f].mean()), f"mean_abs_{value_name}": float(size[:, f].mean())}
           for entity, (signed, size) in per_step.items() for f in range(n_features)]
    return _labelled(pd.DataFrame(out), labels)


def neuron_totals(cond: torch.Tensor) -> torch.Tensor:
    """Layer conductance [B, ..., D] -> [B, D]: summed over the axes between batch and neuron
    (the vehicle rows of `others_embedding.*`, the single row of `ego_embedding.*`)."""
    cond = cond.detach()
    return cond.reshape(cond.shape[0], -1, cond.shape[-1]).sum(dim=1)


def conductance_table(cond: torch.Tensor, labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Layer conductance [B, ..., D] per neuron (`neuron_totals`), averaged over steps.

    Returns [labels], neuron, n_steps, mean_conductance, mean_abs_conductance (mean of |·|).
    """
    totals = neuron_totals(cond).double()
    frame = pd.DataFrame({"neuron": np.arange(totals.shape[1]), "n_steps": totals.shape[0],
                          "mean_conductance": totals.mean(0).numpy(),
                          "mean_abs_conductance": totals.abs().mean(0).numpy()})
    return _labelled(frame, labels)


def top_neurons(cond: torch.Tensor, k: int) -> list[int]:
    """The k neurons with the largest mean |conductance| over steps (`neuron_totals`), largest
    first; ties go to the lower index."""
    score = neuron_totals(cond).double().abs().mean(0)
    order = torch.argsort(-score, stable=True)
    return [int(i) for i in order[:k]]


def neuron_conductance_by_rows(net: nn.Module, obs: torch.Tensor, layer_name: str, neuron: int, target: Target,
                               baseline: torch.Tensor, rows: torch.Tensor, n_steps: int = 64, *,
                               method: str = "riemann_trapezoid", internal_batch_size: int | None = 4096,
                               advantage: bool = False, fix_mask: bool = True) -> torch.Tensor:
    """Neuron conductance [B, E, F] of unit `neuron` of a layer with one activation row per entity
    ([B, R, D]: `ego_embedding.hook_post.1`, R = 1; `others_embedding.hook_post.1`, R = E − 1),
    summed over the rows: Σ_r `neuron_conductance` of unit (r, neuron).

    captum cannot do the sum in one call (a slice selector multiplies the summed gradients,
    cross terms included), so each row r is a call, made only on the steps where rows[:, r]
    (bool [B, R]); the others count 0. Pass the present entities (for others_embedding
    `present_others(obs)[:, 1:]`): an absent vehicle's row is the same in obs and baseline and
    only its own row feeds its embedding, so its conductance is exactly 0 anyway.
    Summed over (E, F) it is the layer conductance of the neuron summed over rows (`neuron_totals`).
    """
    obs = obs.detach()
    rows = rows.to(torch.bool)
    if rows.shape[0] != obs.shape[0]:
        raise ValueError(f"rows has {rows.shape[0]} steps for {obs.shape[0]}")
    targets = _target_tensor(target, obs.shape[0])
    total = torch.zeros_like(obs)
    for r in range(rows.shape[1]):
        steps = torch.nonzero(rows[:, r]).squeeze(1)
        if steps.numel() == 0:
            continue
        total[steps] += neuron_conductance(net, obs[steps], layer_name, (r, neuron), targets[steps], baseline[steps],
                                           n_steps, method=method, internal_batch_size=internal_batch_size,
                                           advantage=advantage, fix_mask=fix_mask).to(obs.dtype)
    return total


def completeness_table(net: nn.Module, obs: torch.Tensor, baseline: torch.Tensor, attr: torch.Tensor,
                       target: Target, *, advantage: bool = False, fix_mask: bool = True,
                       convergence_delta: torch.Tensor | None = None, min_delta: float = 1e-3,
                       tolerance: float = 0.01, step_ids: Sequence[int] | np.ndarray | None = None,
                       labels: Mapping[str, object] | None = None,
                       points: int | torch.Tensor | None = None) -> pd.DataFrame:
    """Per step: does Σ attr account for f(obs) − f(baseline)? (`completeness_error`, same f.)

    Columns [labels], step, [points: gradient evaluations along the path per step (int or [B]), if given], delta_f,
    attr_sum, convergence_delta (captum's, NaN if not given),
    abs_error = |Σ attr − delta_f|, rel_error = abs_error / |delta_f|, tiny = |delta_f| < min_delta
    (too small a change to divide by: rel_error NaN, not counted), within = rel_error < tolerance
    (False when tiny).
    """
    mask = absent_mask(obs) if fix_mask else None
    delta_f = (target_output(net, obs, target, advantage=advantage, mask=mask)
               - target_output(net, baseline, target, advantage=advantage, mask=mask)).double()
    total = attr.detach().reshape(attr.shape[0], -1).double().sum(dim=1)
    rel = completeness_error(net, obs, baseline, attr, target, advantage=advantage, fix_mask=fix_mask).double()
    tiny = delta_f.abs() < min_delta
    rel = torch.where(tiny, torch.full_like(rel, math.nan), rel)
    batch = obs.shape[0]
    frame = pd.DataFrame({
        "step": np.arange(batch) if step_ids is None else np.asarray(step_ids),
        **({} if points is None else {"points": (np.full(batch, points) if isinstance(points, int)
                                                 else points.detach().long().reshape(-1).numpy())}),
        "delta_f": delta_f.numpy(),
        "attr_sum": total.numpy(),
        "convergence_delta": (np.full(batch, math.nan) if convergence_delta is None
                              else convergence_delta.detach().double().reshape(-1).numpy()),
        "abs_error": (total - delta_f).abs().numpy(),
        "rel_error": rel.numpy(),
        "tiny": tiny.numpy(),
        "within": (~tiny & (rel < tolerance)).numpy(),
    })
    return _labelled(frame, labels)


def completeness_stats(table: pd.DataFrame) -> dict[str, int | float]:
    """Summary of a `completeness_table`: n_steps, n_tiny, max abs_error over every step; median
    and max rel_error and the fraction within the tolerance over the steps that are not tiny
    (NaN when none counts); max_points and mean_points if the table has a `points` column."""
    counted = table[~table["tiny"].astype(bool)]
    n = len(counted)
    return {"n_steps": len(table), "n_tiny": len(table) - n,
            "max_abs_error": float(table["abs_error"].max()) if len(table) else math.nan,
            "median_rel_error": float(counted["rel_error"].median()) if n else math.nan,
            "max_rel_error": float(counted["rel_error"].max()) if n else math.nan,
            "fraction_within": float(counted["within"].astype(bool).mean()) if n else math.nan,
            **({"max_points": int(table["points"].max()), "mean_points": float(table["points"].mean())}
               if "points" in table.columns and len(table) else {})}


def vehicle_table(values: np.ndarray | torch.Tensor, obs: torch.Tensor, *, value_name: str = "value",
                  step_ids: Sequence[int] | np.ndarray | None = None,
                  vehicle_ids: np.ndarray | torch.Tensor | None = None, include_ego: bool = False,
                  step_columns: Mapping[str, np.ndarray | torch.Tensor | Sequence[object]] | None = None,
                  labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Tidy per-vehicle values [B, E] (e.g. Shapley values): one row per present (step, entity).

    Absent rows dropped; the ego row kept only with `include_ego`. step_columns: {name: [B]}
    per-step values repeated on each of the step's rows (e.g. the efficiency error).
    Returns [labels], step, entity, [vehicle_id], [step_columns], <value_name>.
    """
    vals = _np(values).astype(np.float64)
    keep = _np(present_others(obs.detach().cpu())).copy()
    keep[:, 0] = include_ego
    b_idx, e_idx = np.nonzero(keep)
    steps = np.arange(vals.shape[0]) if step_ids is None else np.asarray(step_ids)
    columns: dict[str, object] = {"step": steps[b_idx], "entity": e_idx}
    if vehicle_ids is not None:
        columns["vehicle_id"] = _np(vehicle_ids)[b_idx, e_idx]
    for name, column in (step_columns or {}).items():
        columns[name] = np.asarray(_np(column) if isinstance(column, torch.Tensor) else column)[b_idx]
    columns[value_name] = vals[b_idx, e_idx]
    return _labelled(pd.DataFrame(columns), labels)


def with_episode_steps(frame: pd.DataFrame, episode: np.ndarray, step: np.ndarray,
                       column: str = "step") -> pd.DataFrame:
    """Replace `column`, holding record indices (rows of the rollouts), by three columns in its
    place: record, episode and step (within the episode) of that record."""
    out = frame.copy()
    records = out[column].to_numpy(dtype=np.int64)
    at = out.columns.get_loc(column)
    out = out.drop(columns=column)
    for i, (name, values) in enumerate((("record", records), ("episode", np.asarray(episode)[records]),
                                        ("step", np.asarray(step)[records]))):
        out.insert(at + i, name, values)
    return out


def with_randomisation_flags(per_step: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The two tables of one `randomisation_check` as one: the per-step rows with the summary as
    constant columns median_spearman, median_spearman_abs, threshold, flagged, flagged_abs."""
    row = summary.set_index("measure")
    out = per_step.copy()
    out["median_spearman"] = float(row.loc["spearman", "median"])
    out["median_spearman_abs"] = float(row.loc["spearman_abs", "median"])
    out["threshold"] = float(row.loc["spearman", "threshold"])
    out["flagged"] = bool(row.loc["spearman", "flagged"])
    out["flagged_abs"] = bool(row.loc["spearman_abs", "flagged"])
    return out


def step_summary(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and median of `value` over the rows (steps) of each group of `by`, NaN left out.

    Returns by..., statistic ("step_mean" | "step_median"), n (rows with a value), <value>.
    """
    out = []
    for key, group in frame.groupby(list(by), sort=True, dropna=False):
        values = group[value].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        base = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for statistic, fn in (("step_mean", np.mean), ("step_median", np.median)):
            out.append({**base, "statistic": statistic, "n": int(values.size),
                        value: float(fn(values)) if values.size else math.nan})
    return pd.DataFrame(out, columns=[*by, "statistic", "n", value])
