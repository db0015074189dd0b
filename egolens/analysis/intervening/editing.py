"""Model edits: edited copies of the network (the input network is never mutated).

- `rank_one_edit`: a ROME-style rank-one update of one Linear so that a key k* maps to a value
  v*, leaving keys C-orthogonal to k* unchanged (C = E[k kᵀ] over recorded keys);
- `brake_edit`: that edit applied to the output MLP so the agent brakes in the most dangerous
  recorded step where it did not;
- `scale_head_output`: head h's write ½·W_O^h z_h scaled by a factor (W_O^h the COLUMNS
  h·d … (h+1)·d−1 of `attention_combine`; factor 0 = zero ablation of the head).

Shapes: N recorded steps, E entities, F features, K a Linear's input size, O its output size.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from egolens.analysis.intervening.interventions import SLOWER
from egolens.hooks import run_with_cache
from egolens.model import EgoAttentionNetwork
from egolens.sites import OUTPUT_MLP, RESID, mlp_posts


def key_second_moment(keys: torch.Tensor | np.ndarray, ridge: float = 1e-4) -> torch.Tensor:
    """C = E[k kᵀ] + ridge·(tr E[k kᵀ] / K)·I from recorded keys [N, K] -> [K, K] float64.

    The ridge keeps C invertible when some units never fire (dead ReLUs)."""
    keys = torch.as_tensor(keys).double().reshape(-1, torch.as_tensor(keys).shape[-1])
    c = keys.T @ keys / keys.shape[0]
    return c + ridge * (torch.trace(c) / c.shape[0]) * torch.eye(c.shape[0], dtype=torch.float64)


def rank_one_update(weight: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor, c: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """ROME-style rank-one update of a Linear x ↦ W x + b so that k* maps to v*.

    weight [O, K], k_star [K], v_star [O], c [K, K] = E[k kᵀ], bias [O] or None. Returns
    Ŵ = W + Λ uᵀ with u = C⁻¹k* and Λ = (v* − (W k* + b)) / (uᵀk*) (computed in float64, returned
    in weight's dtype): Ŵ k* + b = v*, and Ŵ k = W k for every key with uᵀk = 0 (the directions
    C-orthogonal to k*), so recorded keys unlike k* move little.
    """
    w = weight.detach().double()
    k, v = k_star.detach().double().reshape(-1), v_star.detach().double().reshape(-1)
    u = torch.linalg.solve(c.double(), k)
    denom = float(u @ k)
    if abs(denom) < 1e-12:
        raise ValueError("(C⁻¹k*)ᵀk* is 0: k* is (numerically) 0")
    current = w @ k + (bias.detach().double() if bias is not None else 0.0)
    return (w + torch.outer((v - current) / denom, u)).to(weight.dtype)


def _linear(net: nn.Module, layer_name: str) -> nn.Linear:
    module = dict(net.named_modules()).get(layer_name)
    if not isinstance(module, nn.Linear):
        raise KeyError(f"{layer_name!r} is not a Linear of the network")
    return module


def rank_one_edit(net: nn.Module, layer_name: str, k_star: torch.Tensor, v_star: torch.Tensor,
                  c: torch.Tensor) -> nn.Module:
    """A deep copy of `net` whose Linear `layer_name` maps key k* [K] (its input) to v* [O]
    (its output, bias included) by `rank_one_update`; `net` itself is not changed."""
    edited = copy.deepcopy(net)
    linear = _linear(edited, layer_name)
    with torch.no_grad():
        linear.weight.copy_(rank_one_update(linear.weight, k_star, v_star, c, linear.bias))
    return edited


def scale_head_output(net: EgoAttentionNetwork, head: int, factor: float) -> EgoAttentionNetwork:
    """A deep copy of `net` with head `head`'s output weights W_O^h (the COLUMNS h·d … (h+1)·d−1
    of `attention_combine`) multiplied by `factor`: its write ½·W_O^h z_h is scaled by `factor`
    (0 = zero ablation). `net` itself is not changed."""
    att = net.attention_layer
    if not 0 <= head < att.heads:
        raise ValueError(f"head {head} out of range for {att.heads} heads")
    edited = copy.deepcopy(net)
    d = att.features_per_head
    with torch.no_grad():
        edited.attention_layer.attention_combine.weight[:, head * d:(head + 1) * d] *= factor
    return edited


def output_linear_io(net: EgoAttentionNetwork, i: int | None) -> tuple[str, str]:
    """(Linear name, name of its input activation) of output-MLP layer i (None: `predict`)."""
    posts = mlp_posts(net, OUTPUT_MLP)
    if i is None:
        return "output_layer.predict", posts[-1]
    return f"output_layer.layers.{i}", RESID if i == 0 else posts[i - 1]


@dataclass
class BrakeEdit:
    """A rank-one edit making the agent brake at one recorded step.

    step: the edited situation (index into the steps given); source: the braking step whose value
    is copied (−1 when no recorded step braked and the value was constructed); layer: the
    edited Linear; key_name: its input activation; net: the edited copy."""

    step: int
    source: int
    layer: str
    key_name: str
    k_star: torch.Tensor
    v_star: torch.Tensor
    net: nn.Module


def step_danger(facts: dict[str, np.ndarray]) -> np.ndarray:
    """How dangerous each step is, larger = more dangerous: facts {name: [N, E]} -> [N].

    −(smallest time to collision) when some vehicle is on a collision course, else
    −(1000 + nearest distance); −inf with no other vehicle.
    """
    ttc = np.where(np.isfinite(facts["ttc"]), facts["ttc"], 1000.0 + facts["distance"])
    ttc = np.where(np.isnan(ttc), np.inf, ttc)
    return -ttc.min(axis=1)


def brake_edit(net: EgoAttentionNetwork, obs: torch.Tensor, danger: np.ndarray | torch.Tensor,
               ridge: float = 1e-4, margin: float = 0.1) -> BrakeEdit:
    """Edit the output MLP so the agent brakes in the most dangerous recorded step where it did not.

    obs [N, E, F] recorded steps; danger [N] (larger = more dangerous, e.g. −min time to collision).
    The target step is the most dangerous step whose greedy action is not SLOWER. If some steps
    brake, the last hidden Linear of the output MLP is edited to map the target's key to the value
    of the braking step whose key is nearest (Euclidean): the edited net then gives the target
    exactly that step's Q, so it brakes. Otherwise `predict` is edited to map the target's key to
    its own Q with Q(SLOWER) raised to max Q + margin. C = E[k kᵀ] over all N steps.
    """
    q, _ = run_with_cache(net, obs, [])
    greedy = q.argmax(dim=1)
    danger = torch.as_tensor(np.asarray(danger, dtype=np.float64))
    candidates = greedy != SLOWER
    if not candidates.any():
        raise ValueError("the network brakes in every step: nothing to edit")
    score = torch.where(candidates, danger, torch.full_like(danger, -math.inf))
    score = torch.where(torch.isnan(score), torch.full_like(score, -math.inf), score)
    step = int(torch.nonzero(score == score.max())[0, 0]) if torch.isfinite(score.max()) \
        else int(torch.nonzero(candidates)[0, 0])
    braking = torch.nonzero(~candidates).squeeze(1)
    layer, key_name = output_linear_io(net, len(net.output_layer.layers) - 1 if braking.numel() else None)
    _, cache = run_with_cache(net, obs, [key_name, layer])
    keys = cache[key_name].reshape(obs.shape[0], -1)
    k_star = keys[step]
    if braking.numel():
        source = int(braking[torch.argmin((keys[braking].double() - k_star.double()).norm(dim=1))])
        v_star = cache[layer][source]
    else:
        source = -1
        v_star = q[step].clone()
        v_star[SLOWER] = q[step].max() + margin
    edited = rank_one_edit(net, layer, k_star, v_star, key_second_moment(keys, ridge))
    return BrakeEdit(step, source, layer, key_name, k_star, v_star, edited)


