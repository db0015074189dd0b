"""Steering: add α·direction to one named activation on every forward pass, and drive with it.

Directions live in a site's unit space ([U], added to every row of a per-vehicle site):
- a probe's weight vector (`probe_direction`: the weights of the raw, unstandardised units);
- the mean difference of activations between steps where the agent chose SLOWER and FASTER
  (`mean_difference_direction`, Turner et al. 2023's steering vector);
- seeded random directions (`random_directions`), the control.

Every direction is normalised to unit length, then added as α · scale · d̂, where scale is the
site's activation RMS (`activation_scale`: the root mean square of the activation vector's norm
over recorded rows). α = 1 moves the activation by its typical length, whatever the direction,
so a random direction and a probe direction at the same α have equal norms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from egolens.analysis.intervening.interventions import Intervened, add_direction
from egolens.analysis.reading.probes import ProbeFit
from egolens.episodes import greedy
from egolens.hooks import activation_names
from egolens.vocabulary import ACTIONS

SLOWER, FASTER = ACTIONS.index("SLOWER"), ACTIONS.index("FASTER")


def _rows(acts: np.ndarray | torch.Tensor) -> np.ndarray:
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2:
        raise ValueError(f"activations must be [rows, units], got shape {acts.shape}")
    return acts


def activation_scale(acts: np.ndarray | torch.Tensor) -> float:
    """The site's activation RMS: sqrt(mean over rows of ‖a‖²) of acts [R, U]."""
    acts = _rows(acts)
    return float(np.sqrt(np.mean(np.sum(acts * acts, axis=1))))


def unit(direction: np.ndarray | torch.Tensor) -> np.ndarray:
    """direction [U] scaled to unit length (float64); a zero direction raises."""
    direction = np.asarray(direction, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(direction))
    if not norm > 0:
        raise ValueError("a steering direction must have a positive norm")
    return direction / norm


def probe_direction(fit: ProbeFit) -> np.ndarray:
    """A binary or continuous probe's weights per site unit [U], unit length, pointing to class 1
    (or larger values)."""
    if fit.kind == "categorical":
        raise ValueError("a categorical probe has one direction per class; steer along a binary or continuous one")
    return unit(fit.direction)


def mean_difference_direction(acts: np.ndarray | torch.Tensor, action: np.ndarray,
                              towards: int = SLOWER, away: int = FASTER) -> np.ndarray:
    """Mean of acts [R, U] over rows where the agent chose `towards` minus the mean over rows where
    it chose `away` (action [R]): [U], not normalised."""
    acts, action = _rows(acts), np.asarray(action)
    for name, a in (("towards", towards), ("away", away)):
        if not np.any(action == a):
            raise ValueError(f"no recorded row with action {ACTIONS[a]} ({name})")
    return acts[action == towards].mean(axis=0) - acts[action == away].mean(axis=0)


def random_directions(units: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` (≥ 3) Gaussian directions [units] of unit length, the i-th seeded by (seed, i)."""
    if count < 3:
        raise ValueError(f"the random-direction control needs at least 3 directions, got {count}")
    return [unit(np.random.default_rng([seed, i]).standard_normal(units)) for i in range(count)]


def steering_vector(direction: np.ndarray, alpha: float, scale: float) -> torch.Tensor:
    """α · scale · d̂ [U] (float32), the vector added to the site's activation."""
    return torch.as_tensor(alpha * scale * unit(direction), dtype=torch.float32)


def steered_net(net: nn.Module, site: str, direction: np.ndarray, alpha: float, scale: float) -> nn.Module:
    """`net` with α · scale · d̂ added to activation `site` on every forward (Q [B, A] of obs
    [B, E, F]). At α = 0 no hook is installed, so the outputs are the unsteered ones bit for bit
    (x + 0 would turn −0.0 into +0.0). An unknown site raises, naming it.

    direction [U] is added along the activation's last axis: [B, U] sites (MLP hidden layers,
    hook_combined, hook_resid) get it once per step; the others' embedding [B, E-1, U] gets it on
    every vehicle row (absent rows too, which attention masks). Per-head sites ([B, H, *, d])
    take a direction of length d, added to every head.
    """
    if site not in activation_names(net):
        raise KeyError(f"no activation named {site!r}; known: {', '.join(activation_names(net))}")
    if alpha == 0:
        return Intervened(net, {})
    vector = steering_vector(direction, alpha, scale)
    return Intervened(net, {site: add_direction(vector, 1.0)})


def steered_policy(net: nn.Module, site: str, direction: np.ndarray, alpha: float,
                   scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """The greedy policy of the steered network, obs [N, E, F] -> actions [N], in the form
    `egolens.play.play` plays (it calls it with N = 1)."""
    steered = steered_net(net, site, direction, alpha, scale)
    return lambda obs: greedy(steered, obs, batch=1)
