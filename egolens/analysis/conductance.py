"""Conductance: how much of the change of Q(s, a) (or the advantage) along baseline -> obs flows
through each unit of a named activation (layer conductance), and how much of one unit's share
comes from each input feature (neuron conductance); tables and rankings of neurons by it.

Activations are named modules (a Linear or a `hook_*` point, `egolens.hooks.activation_names`),
read through captum's layer hooks or `egolens.hooks.capture`, never by re-implementing the
forward. The absent mask of the observation is held fixed along the path (`fix_mask=True`).
Shapes: B steps, E entities, F features, R rows of a per-entity layer, D units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerConductance, NeuronConductance
from torch import nn

from egolens.analysis import paths
from egolens.analysis.attribution_tables import labelled
from egolens.analysis.quantity import Target, captum_target, path_delta_f, piecewise_paths, quantity_fn, target_indices
from egolens.hooks import activation_names, capture
from egolens.vocabulary import absent_mask


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
    cond, delta = LayerConductance(quantity_fn(net, advantage), _named_module(net, layer_name)).attribute(
        obs, baselines=baseline.detach().to(obs.dtype), target=captum_target(target, obs.shape[0]),
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
    cut = piecewise_paths(net, obs, target, baseline, advantage, grid, rows, kinks)
    obs, baseline, targets, mask, forward, segments = (cut.obs, cut.baseline, cut.targets, cut.mask, cut.forward,
                                                       cut.segments)
    step, alpha, weight = paths.gauss_legendre_nodes(segments, segment_points)
    cond: torch.Tensor | None = None
    for first in range(0, len(step), rows):
        s = step[first:first + rows]
        x = paths.path_points(obs[s], baseline[s], alpha[first:first + rows])
        direction = obs[s] - baseline[s]
        grads, tangents = _layer_gradient_and_tangent(net, forward, layer_name, x, direction, mask[s], targets[s])
        part = grads.double() * tangents.double() * weight[first:first + rows].reshape((-1,) + (1,) * (grads.dim() - 1))
        if cond is None:
            cond = torch.zeros((len(obs), *part.shape[1:]), dtype=torch.float64)
        cond.index_add_(0, s, part)
    assert cond is not None
    delta = cond.reshape(len(obs), -1).sum(1) - path_delta_f(net, obs, baseline, targets, advantage).double()
    return cond.to(obs.dtype), delta, segments.count(len(obs)) * segment_points


def _layer_gradient_and_tangent(net: nn.Module, forward: Callable[..., torch.Tensor], layer_name: str,
                                x: torch.Tensor, direction: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """At points x [N, E, F]: ∂f_target/∂a (a = the named activation of `net`, f = `forward`, a
    function of `net`) and the derivative of a along `direction` [N, E, F] (forward-mode AD).
    Both [N, *activation shape]."""
    with capture(net, [layer_name], detach=False) as cached:
        with torch.autograd.forward_ad.dual_level():
            forward(torch.autograd.forward_ad.make_dual(x, direction), mask)
            tangent = torch.autograd.forward_ad.unpack_dual(cached[layer_name]).tangent
        out = forward(x, mask)
        activation = cached[layer_name]
        grad, = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), activation)
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
    targets = target_indices(target, obs.shape[0])

    def piecewise(idx: torch.Tensor, n: int,
                  known: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return piecewise_layer_conductance(net, obs[idx], layer_name, targets[idx], baseline[idx], n,
                                           segment_points, rows, advantage=advantage, kinks=known)

    shared = paths.PathKinks.of(kinks, net, obs, baseline, rows)
    return paths.refine_on_kink_grids(piecewise, shared, path_delta_f(net, obs, baseline, targets, advantage),
                                      grid, max_grid, tolerance=tolerance, min_delta=min_delta)


def layer_conductance_on_grids(net: nn.Module, obs: torch.Tensor, layer_name: str, target: Target,
                               baseline: torch.Tensor, grids: torch.Tensor, segment_points: int = 2,
                               rows: int = 4096, *, advantage: bool = False,
                               kinks: paths.PathKinks | None = None) -> torch.Tensor:
    """`piecewise_layer_conductance` with each step's kinks located on its own grid ([B] long,
    e.g. `Refined.grid` of a cut layer, so every layer of a step shares one set of path pieces).
    kinks: a `paths.PathKinks` of these paths (with the cut layer's kinks already in it).
    Returns [B, *activation shape]."""
    targets = target_indices(target, obs.shape[0])
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
    attr = NeuronConductance(quantity_fn(net, advantage), _named_module(net, layer_name)).attribute(
        obs, neuron_selector=neuron_index, baselines=baseline.detach().to(obs.dtype),
        target=captum_target(target, obs.shape[0]), additional_forward_args=extra, n_steps=n_steps,
        method=method, internal_batch_size=internal_batch_size)
    return attr.detach()




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
    return labelled(frame, labels)


def neuron_ranking(cond: torch.Tensor, labels: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Every neuron of a layer ranked by conductance, the study's one ranking of neurons (the
    attributions' neuron breakdowns and the interventions' top-k ablations both read it).

    cond: the layer's conductance [B, ..., D] (of the chosen action's Q, from the attributions'
    reference baseline). Returns columns [labels], neuron, rank (0 = most conductance; ties go to
    the lower index), mean_abs_conductance (mean over steps of |neuron total|).
    """
    score = neuron_totals(cond).double().abs().mean(0)
    order = [int(i) for i in torch.argsort(-score, stable=True)]
    frame = pd.DataFrame({"neuron": order, "rank": range(len(order)),
                          "mean_abs_conductance": [round(float(score[i]), 9) for i in order]})
    return labelled(frame, labels)


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
    targets = target_indices(target, obs.shape[0])
    total = torch.zeros_like(obs)
    for r in range(rows.shape[1]):
        steps = torch.nonzero(rows[:, r]).squeeze(1)
        if steps.numel() == 0:
            continue
        total[steps] += neuron_conductance(net, obs[steps], layer_name, (r, neuron), targets[steps], baseline[steps],
                                           n_steps, method=method, internal_batch_size=internal_batch_size,
                                           advantage=advantage, fix_mask=fix_mask).to(obs.dtype)
    return total
