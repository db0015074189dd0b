"""Conductance: how much of the change of Q(s, a) (or the advantage) along baseline -> obs flows
through each unit of a named activation (layer conductance), and how much of one unit's share
comes from each input feature (neuron conductance); tables and rankings of neurons by it.

Activations are named modules (a Linear or a `hook_*` point, `egolens.hooks.activation_names`),
read through captum's layer hooks or `egolens.hooks.capture`, never by re-implementing the
forward. The absent mask of the observation is held fixed along the path (`fix_mask=True`);
the integration scheme is a parameter (`egolens.analysis.attribution.schemes`).
Shapes: B steps, E entities, F features, R rows of a per-entity layer, D units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerConductance, NeuronConductance
from torch import nn

from egolens.analysis.attribution import paths, schemes
from egolens.analysis.attribution.attribution_tables import labelled
from egolens.analysis.attribution.quantity import Target, quantity_fn, target_indices
from egolens.hooks import activation_names, capture

NEURON_GRID = schemes.FixedGrid(method="riemann_trapezoid")
"""Neuron conductance's default scheme: captum NeuronConductance's (64 trapezoid points)."""


def _named_module(net: nn.Module, layer_name: str) -> nn.Module:
    if layer_name not in activation_names(net):
        raise KeyError(f"no activation named {layer_name!r}; known: {', '.join(activation_names(net))}")
    return dict(net.named_modules())[layer_name]


def layer_conductance(net: nn.Module, layer: str, obs: torch.Tensor, baseline: torch.Tensor, target: Target,
                      scheme: schemes.Scheme = schemes.KINK_CUT, *, advantage: bool = False, fix_mask: bool = True,
                      kinks: paths.PathKinks | None = None) -> paths.PathAttribution:
    """Conductance of Q(s, a) (or the advantage) at the named activation: how much of f(obs) −
    f(baseline) flows through each of its units.

    layer: a Linear or hook point (`egolens.hooks.activation_names`), e.g.
    `attention_layer.hook_resid` [B, D]; obs, baseline: [B, E, F]; target: action index or [B];
    scheme: a `schemes.FixedGrid` (captum's `LayerConductance`, a left Riemann sum of activation
    differences: first order) or a `schemes.KinkCut`; kinks: a `paths.PathKinks` of these paths
    (KinkCut only). Returns attr [B, *activation shape], delta [B] = Σ attr − (f(x) − f(b)),
    grid and points per step.

    Conductance of unit j: ∫₀¹ ∂f/∂a_j(x(α)) · d a_j(x(α))/dα dα along x(α) = b + α(x − b). It
    sums to f(x) − f(b) only at a cut every path crosses: the output MLP's input
    `attention_layer.hook_resid` (or any output-MLP layer). `attention_layer.hook_combined` is
    not one: the ½·e residual bypasses it, so its sum misses the ego path unless the ego row
    is the same in obs and baseline.
    """
    module = _named_module(net, layer)
    return schemes.attribute(net, obs, baseline, target, scheme,
                             captum=lambda forward: LayerConductance(forward, module),
                             integrand=lambda pieces, points, rows: _on_pieces(net, layer, pieces, points, rows),
                             advantage=advantage, fix_mask=fix_mask, kinks=kinks)


def _on_pieces(net: nn.Module, layer: str, pieces: schemes.Pieces, points: int, rows: int) -> torch.Tensor:
    """Conductance at `layer` on cut paths, float64 [b, *activation shape]: `points`
    Gauss-Legendre nodes per piece, the derivative of the activation along the path from
    forward-mode autodiff (tangent x − b), ∂f/∂a from a backward pass."""
    obs, baseline = pieces.obs, pieces.baseline
    step, alpha, weight = paths.gauss_legendre_nodes(pieces.segments, points)
    cond: torch.Tensor | None = None
    for first in range(0, len(step), rows):
        s = step[first:first + rows]
        x = paths.path_points(obs[s], baseline[s], alpha[first:first + rows])
        direction = obs[s] - baseline[s]
        grads, tangents = _layer_gradient_and_tangent(net, pieces.forward, layer, x, direction, pieces.mask[s],
                                                      pieces.targets[s])
        part = grads.double() * tangents.double() * weight[first:first + rows].reshape((-1,) + (1,) * (grads.dim() - 1))
        if cond is None:
            cond = torch.zeros((len(obs), *part.shape[1:]), dtype=torch.float64)
        cond.index_add_(0, s, part)
    assert cond is not None
    return cond


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


def neuron_conductance(net: nn.Module, layer: str, neuron: int | tuple[int, ...], obs: torch.Tensor,
                       baseline: torch.Tensor, target: Target,
                       scheme: schemes.FixedGrid = NEURON_GRID, *,
                       rows: torch.Tensor | None = None, advantage: bool = False,
                       fix_mask: bool = True) -> torch.Tensor:
    """captum NeuronConductance: how much each input feature's change flows through one neuron.

    layer must name a module returning a tensor (a hook point or a Linear: captum cannot select a
    neuron of a module returning a tuple such as `attention_layer`); neuron indexes the activation
    without its batch axis (int for [B, D], tuple for e.g. the pattern (h, 0, j)); obs, baseline:
    [B, E, F]; target: action index or [B]; scheme: a fixed grid only (captum's default rule here
    is `riemann_trapezoid`, LayerConductance's `gausslegendre`: compare the two with enough steps).
    Returns [B, E, F]; summed over (E, F) it is the layer conductance of that neuron.

    rows: bool [B, R] for a layer with one activation row per entity ([B, R, D]:
    `ego_embedding.hook_post.1`, R = 1; `others_embedding.hook_post.1`, R = E − 1): the
    conductance of unit `neuron` (an int) summed over the rows, Σ_r of unit (r, neuron). captum
    cannot do the sum in one call (a slice selector multiplies the summed gradients, cross terms
    included), so each row r is a call, made only on the steps where rows[:, r]; the others
    count 0. Pass the present entities (for others_embedding `present_others(obs)[:, 1:]`): an
    absent vehicle's row is the same in obs and baseline and only its own row feeds its
    embedding, so its conductance is exactly 0 anyway.
    """
    if not isinstance(scheme, schemes.FixedGrid):
        raise ValueError("neuron conductance is captum's NeuronConductance: it integrates on a FixedGrid")
    obs = obs.detach()
    if rows is None:
        attr = schemes.captum_attribute(NeuronConductance(quantity_fn(net, advantage), _named_module(net, layer)),
                                        obs, baseline, target, scheme, fix_mask=fix_mask, neuron_selector=neuron)
        return attr.detach()
    rows = rows.to(torch.bool)
    if rows.shape[0] != obs.shape[0] or not isinstance(neuron, int):
        raise ValueError(f"rows [B, R] ({rows.shape[0]} steps for {obs.shape[0]}) go with an int neuron, got {neuron}")
    targets = target_indices(target, obs.shape[0])
    total = torch.zeros_like(obs)
    for r in range(rows.shape[1]):
        steps = torch.nonzero(rows[:, r]).squeeze(1)
        if steps.numel() == 0:
            continue
        total[steps] += neuron_conductance(net, layer, (r, neuron), obs[steps], baseline[steps], targets[steps],
                                           scheme, advantage=advantage, fix_mask=fix_mask).to(obs.dtype)
    return total


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
