"""Feature visualisation: observations optimised to maximise a neuron, an advantage or an attention
weight (under a prior of recorded observations), and the top-down scene drawing of an observation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrow, Patch
from torch import nn

from egolens.config import EnvConfig, FeaturesRange
from egolens.figures import draw_vehicle, scene_axes
from egolens.hooks import run_with_cache
from egolens.scene import denormalize
from egolens.sites import PATTERN
from egolens.vocabulary import PRESENT_AT, REFERENCE_FEATURES, present

Cache = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """A differentiable quantity to maximise: fn(q [R, A], cache) -> [R].

    `names`: the activations fn reads; the cache holds them with their gradients (shapes as in
    `egolens.hooks.run_with_cache`) plus 'obs', the observations [R, E, F] being optimised.
    """

    fn: Callable[[torch.Tensor, Cache], torch.Tensor]
    names: tuple[str, ...] = field(default=())
    label: str = ""

    def __call__(self, q: torch.Tensor, cache: Cache) -> torch.Tensor:
        return self.fn(q, cache)


def neuron_objective(name: str, index: int | tuple[int, ...]) -> Objective:
    """The activation `name` at `index`: an int indexes the activation flattened per sample
    (e.g. unit u of `output_layer.hook_post.0` [R, U] or `ego_embedding.hook_post.1` [R, 1, U]);
    a tuple indexes its trailing dimensions (e.g. (j - 1, u) for unit u of observation row j in
    `others_embedding.hook_post.1` [R, E-1, U])."""
    def fn(q: torch.Tensor, cache: Cache) -> torch.Tensor:
        act = cache[name]
        if isinstance(index, tuple):
            return act[(slice(None), *index)]
        return act.reshape(act.shape[0], -1)[:, index]
    return Objective(fn, (name,), f"{name}[{index}]")


def advantage_objective(action: int) -> Objective:
    """The advantage Q(s, a) − mean_a' Q(s, a') of `action`."""
    return Objective(lambda q, cache: q[:, action] - q.mean(dim=1), (), f"advantage[{action}]")


def attention_objective(head: int, entity: int) -> Objective:
    """The attention weight of the ego's query in `head` on observation row `entity`."""
    return Objective(lambda q, cache: cache[PATTERN][:, head, 0, entity], (PATTERN,), f"attention[h{head}, {entity}]")


def advantage(q: np.ndarray) -> np.ndarray:
    """Recorded advantages Q(s, a) − mean_a' Q(s, a') [N, A] of q [N, A] (as `advantage_objective`)."""
    q = np.asarray(q, dtype=np.float64)
    return q - q.mean(axis=1, keepdims=True)


def typical_step(obs: np.ndarray) -> int:
    """Index of a typical recorded step of obs [N, E, F]: the first whose number of present vehicles
    is the (lower) median over steps; its presence pattern suits `optimise_observation`."""
    count = present(np.asarray(obs)).sum(axis=1)
    if count.size == 0:
        raise ValueError("no recorded step")
    return int(np.nonzero(count == np.quantile(count, 0.5, method="lower"))[0][0])


def neurons_to_visualise(acts: np.ndarray, correlations: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to `n` neurons of acts [N, U] worth a feature visualisation, never-active ones excluded:
    alternately the most active (highest mean activation) and the most fact-correlated (largest
    |Spearman| with any fact of `correlations`, a `neuron_fact_correlations` table of the same
    neurons, NaN ignored) not chosen yet; ties go to the lower neuron index.

    Columns: neuron, reason ("most active" / "most correlated"), mean_activation, and its strongest
    fact and spearman (NaN / None without a finite correlation), in the order chosen.
    """
    acts = np.asarray(acts, dtype=np.float64)
    units = acts.shape[1]
    mean = acts.mean(axis=0)
    alive = (acts > 0).any(axis=0)
    finite = correlations[np.isfinite(correlations["spearman"].to_numpy(dtype=np.float64))]
    strongest = finite.loc[finite["spearman"].abs().groupby(finite["neuron"]).idxmax()].set_index("neuron")
    strength = np.full(units, -np.inf)
    strength[strongest.index.to_numpy()] = strongest["spearman"].abs().to_numpy()
    queues = ([int(u) for u in np.argsort(-mean, kind="stable") if alive[u]],
              [int(u) for u in np.argsort(-strength, kind="stable") if alive[u] and np.isfinite(strength[u])])
    reasons = ("most active", "most correlated")
    chosen: list[tuple[int, str]] = []
    turn = 0
    while len(chosen) < n and any(queues):
        queue = queues[turn % 2]
        taken = {u for u, _ in chosen}
        while queue and queue[0] in taken:
            queue.pop(0)
        if queue:
            chosen.append((queue.pop(0), reasons[turn % 2]))
        turn += 1
    neurons = [u for u, _ in chosen]
    return pd.DataFrame({
        "neuron": np.asarray(neurons, dtype=int), "reason": [r for _, r in chosen],
        "mean_activation": mean[neurons],
        "fact": [strongest["fact"].get(u) for u in neurons],
        "spearman": [float(strongest["spearman"].get(u, np.nan)) for u in neurons],
    })


def _prior_mean(prior_obs: torch.Tensor) -> torch.Tensor:
    """Mean recorded state [E, F] from prior_obs [N, E, F]: row 0 is the mean ego row; every other
    row is the mean of all present other vehicles (rows are shuffled, so no row is a fixed vehicle)."""
    others = prior_obs[:, 1:].reshape(-1, prior_obs.shape[-1])
    others = others[present(others)]
    other_mean = others.mean(dim=0) if len(others) else torch.zeros(prior_obs.shape[-1])
    return torch.cat([prior_obs[:, 0].mean(dim=0)[None], other_mean.expand(prior_obs.shape[1] - 1, -1)])


def optimise_observation(net: nn.Module, objective: Callable[[torch.Tensor, Cache], torch.Tensor],
                         presence: np.ndarray | torch.Tensor, n_restarts: int = 4, steps: int = 200, lr: float = 0.05,
                         prior_obs: np.ndarray | torch.Tensor | None = None, prior_weight: float = 0.1,
                         diversity: float = 0.0, seed: int = 0,
                         features: Sequence[str] = REFERENCE_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Observations that maximise `objective`, by gradient ascent (Adam) from `n_restarts` seeds.

    presence: [E] (1 present, 0 absent; the ego, row 0, must be present), fixed: absent rows stay
    all zeros and the absent mask is passed to the net. Present rows are parameterised as
    x, y, vx, vy = tanh(u) ∈ [−1, 1] and (cos_h, sin_h) = (cos θ, sin θ); u ~ N(0, 0.5²) and
    θ ~ U(−π, π) from a torch.Generator seeded by `seed`, so results are deterministic.
    Loss summed over restarts: −objective + prior_weight · ‖obs − prior‖² over present rows, the
    prior being the mean recorded state (prior_obs [N, E, F], optional; `_prior_mean`),
    − diversity · Σ_{r<s} rms(obs_r − obs_s) (present rows, non-presence features).
    `objective`: an `Objective` (or any fn(q, cache) returning [R]; then every activation is
    cached). Only u and θ receive gradients; the net's parameters are left untouched.

    Returns (observations [R, E, F], objective values [R]) at the last step, as float32 numpy.
    """
    if tuple(features) != REFERENCE_FEATURES:
        raise ValueError(f"features must be {list(REFERENCE_FEATURES)}, got {list(features)}")
    occupied = torch.as_tensor(np.asarray(presence), dtype=torch.float32) >= PRESENT_AT
    if occupied.ndim != 1 or not bool(occupied[0]):
        raise ValueError("presence must be [E] with the ego (row 0) present")
    entities = occupied.shape[0]
    names = getattr(objective, "names", None)
    g = torch.Generator().manual_seed(seed)
    u = (torch.randn(n_restarts, entities, 4, generator=g) * 0.5).requires_grad_()
    theta = ((torch.rand(n_restarts, entities, generator=g) * 2 - 1) * torch.pi).requires_grad_()
    keep = occupied.float()[None, :, None]                                       # [1, E, 1]
    mask = (~occupied)[None].expand(n_restarts, entities).clone()
    prior = None if prior_obs is None else _prior_mean(torch.as_tensor(np.asarray(prior_obs), dtype=torch.float32))

    def build() -> torch.Tensor:
        rows = torch.cat([torch.ones(n_restarts, entities, 1), torch.tanh(u),
                          torch.cos(theta)[..., None], torch.sin(theta)[..., None]], dim=-1)
        return rows * keep                                                      # [R, E, F]

    def value(obs: torch.Tensor) -> torch.Tensor:
        q, cache = run_with_cache(net, obs, names, mask, grad=True)
        return objective(q, cache | {"obs": obs})

    optimiser = torch.optim.Adam([u, theta], lr=lr)
    pairs = torch.triu_indices(n_restarts, n_restarts, offset=1)
    for _ in range(steps):
        obs = build()
        loss = -value(obs).sum()
        if prior is not None and prior_weight:
            loss = loss + prior_weight * (((obs - prior) * keep) ** 2).sum()
        if diversity and n_restarts > 1:
            diff = (obs[pairs[0]] - obs[pairs[1]])[..., 1:] * keep
            rms = torch.sqrt((diff ** 2).sum(dim=(1, 2)) / (keep.sum() * (obs.shape[-1] - 1)) + 1e-12)
            loss = loss - diversity * rms.sum()
        grads = torch.autograd.grad(loss, [u, theta])
        u.grad, theta.grad = grads
        optimiser.step()
    with torch.no_grad():
        obs = build()
        values = value(obs)
    return obs.numpy().astype(np.float32), values.numpy().astype(np.float32)


def scene_picture(obs: np.ndarray, features_range: FeaturesRange, title: str = "", seconds: float = 1.0,
                  length: float = 5.0, width: float = 2.0, ax: Axes | None = None) -> Figure:
    """A top-down drawing of one observation [E, F] (reference features, normalised).

    Each present vehicle is a `length` × `width` m rectangle at its de-normalised position, turned
    by its heading, with an arrow of its velocity × `seconds`; the ego (row 0) in red, the others
    in blue, labelled by row. Axes in metres, y pointing down as on the simulator's screen.
    Drawn on `ax` if given (its figure is returned), else on a new 4.5 × 4.5 in figure.
    """
    kin = denormalize(np.asarray(obs, dtype=np.float64)[None], EnvConfig(features_range=features_range))
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = np.nonzero(kin.present[0])[0]
    for row in shown:
        x, y, vx, vy = kin.x[0, row], kin.y[0, row], kin.vx[0, row], kin.vy[0, row]
        color = "tab:red" if row == 0 else "tab:blue"
        draw_vehicle(ax, x, y, kin.cos_h[0, row], kin.sin_h[0, row], color, (length, width), alpha=0.8,
                     label="ego" if row == 0 else None)
        if np.hypot(vx, vy) > 1e-6:
            ax.add_patch(FancyArrow(x, y, vx * seconds, vy * seconds, width=0.3, head_width=1.2, color=color,
                                    length_includes_head=True))
        ax.annotate(str(row), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    xs = np.concatenate([kin.x[0, shown], kin.x[0, shown] + kin.vx[0, shown] * seconds])
    ys = np.concatenate([kin.y[0, shown], kin.y[0, shown] + kin.vy[0, shown] * seconds])
    half = max(np.ptp(xs), np.ptp(ys), 20.0) / 2 + length
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    scene_axes(ax, cx, cy, half, title)
    return fig


def scene_pair(left: np.ndarray, right: np.ndarray, features_range: FeaturesRange, left_title: str = "",
               right_title: str = "", title: str = "", seconds: float = 1.0) -> Figure:
    """Two observations [E, F] drawn side by side by `scene_picture` on the same square axis limits
    (the smallest square holding both views, so distances compare), e.g. an optimised observation
    beside the top real activating step; with a legend of the colours and arrows and an overall
    `title`."""
    fig = Figure(figsize=(10.0, 6.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, obs, name in ((axes[0], left, left_title), (axes[1], right, right_title)):
        scene_picture(obs, features_range, name, seconds=seconds, ax=ax)
    x_low = min(ax.get_xlim()[0] for ax in axes)
    x_high = max(ax.get_xlim()[1] for ax in axes)
    y_low = max(ax.get_ylim()[0] for ax in axes)         # y is inverted: the bottom limit is the larger
    y_high = min(ax.get_ylim()[1] for ax in axes)
    half = max(x_high - x_low, y_low - y_high) / 2
    cx, cy = (x_low + x_high) / 2, (y_low + y_high) / 2
    for ax in axes:
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
    handles = [Patch(facecolor="tab:red", edgecolor="black", label="ego (row 0)"),
               Patch(facecolor="tab:blue", edgecolor="black", label="other vehicle (number = observation row)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8,
               title=f"arrows: distance covered in {seconds:g} s at the current velocity", title_fontsize=8)
    fig.suptitle(title)
    return fig


