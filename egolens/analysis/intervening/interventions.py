"""Causal interventions: ablations, vehicle removal, neuron sets, perturbation sweeps, closed loop.

Observation says what the network represents; interventions say what it uses. Every
intervention here is a hook that edits a named activation (`egolens.hooks`) or an edit of the
observation; nothing re-implements the forward pass. All functions are pure (no file I/O);
tables are tidy pandas DataFrames. Activation and path patching live in
`egolens.analysis.intervening.patching`, edited copies of the network in `egolens.analysis.intervening.editing`, the
interventions stage's experiment and its summary in `egolens.analysis.intervening.intervention_study`.

Shapes: B steps (or pairs), E entities (15, row 0 the ego), F features (7: presence, x, y, vx,
vy, cos_h, sin_h), D feature_size, H heads, d = D / H, A actions (0 SLOWER, 1 IDLE, 2 FASTER).
Head h's output is z_h (`attention_layer.hook_z` [B, H, 1, d]); it reaches the output-MLP input
as ½·W_O^h z_h with W_O^h the COLUMNS h·d … (h+1)·d−1 of `attention_combine` (README, the
`circuits@<seed>` row of "The pipeline"), so ablating z_h removes exactly that write.

- Ablations return {name: hook} dicts for `run_with_hooks` / `hooks`; `Intervened` applies them
  (and an optional observation edit) on every forward, so an ablated network can drive in
  closed loop through `egolens.episodes.play`.
- Open-loop effects compare Q on recorded steps with and without an intervention; closed-loop
  comparisons pair episodes by env seed with the unablated agent.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.hooks import HookFn, hooks, run_with_cache, run_with_hooks
from egolens.sites import COMBINED, PATTERN, Z
from egolens.stats import bootstrap_ci
from egolens.vocabulary import ACTIONS, present_others

SLOWER, IDLE, FASTER = 0, 1, 2
X, Y, VX, VY = 1, 2, 3, 4
"""Feature indices of the observation's position and velocity."""

Mode = Literal["zero", "mean", "resample"]
MODES: tuple[str, ...] = ("zero", "mean", "resample")
"""Ablation modes: set the activation to 0, to its mean over recorded steps, or to its value on
another recorded step (resample)."""
ObsEdit = Callable[[torch.Tensor], torch.Tensor]
"""An edit of a batch of observations [B, E, F] -> [B, E, F] (a new tensor)."""


# ------------------------------------------------------------------------------- ablations

def _check_mode(mode: str, mean: torch.Tensor | None, reference: torch.Tensor | None = None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "mean" and mean is None:
        raise ValueError("mean ablation needs the mean activation")
    if mode == "resample" and (reference is None or len(reference) == 0):
        raise ValueError("resample ablation needs recorded activations to draw from")


BRANCH_STREAM = 1_000
"""`resample_index` stream of the branch ablation (heads use their index: the streams never meet)."""


def resample_index(acts: torch.Tensor, n_reference: int, seed: int, stream: int = 0) -> torch.Tensor:
    """Per row of acts [B, ...], the index of the recorded step (of `n_reference`) whose activation
    replaces it in resample ablation: [B] long.

    The draw is seeded by (seed, stream, the row's bytes), so it is a function of the state the row
    comes from (as `random_present_vehicle`): the same step gets the same replacement whatever the
    batch it comes in, and closed-loop runs stay deterministic. `stream` separates ablations (e.g.
    the head) so that two conditions draw independently; seed and stream must be >= 0.
    """
    data = acts.detach().cpu().contiguous().float().numpy().reshape(acts.shape[0], -1)
    return torch.as_tensor([int(np.random.default_rng([seed, stream, zlib.crc32(row.tobytes())]).integers(n_reference))
                            for row in data], dtype=torch.long)


def mean_activation(acts: torch.Tensor | np.ndarray, present: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """The mean of recorded activations over steps, used by mean ablation.

    acts: [N, ...] (e.g. `attention_layer.hook_z` [N, H, 1, d] -> [H, 1, d]). With `present`
    [N, R] bool for per-entity activations [N, R, D] (the others' embedding), the mean is over
    the present rows only and is returned as [1, D] (one typical vehicle, broadcast to every row).
    """
    acts = torch.as_tensor(acts).double()
    if present is None:
        return acts.mean(dim=0).float()
    present = torch.as_tensor(present).bool()
    rows = acts[present]                                                # [M, D]
    if rows.shape[0] == 0:
        raise ValueError("no present rows to average")
    return rows.mean(dim=0, keepdim=True).float()


def head_ablation(head: int, mode: Mode = "zero", mean_z: torch.Tensor | None = None,
                  reference_z: torch.Tensor | None = None, seed: int = 0) -> dict[str, HookFn]:
    """Hooks ablating head `head`'s output z_h on `attention_layer.hook_z` [B, H, 1, d].

    zero: z_h := 0, so head h's write ½·W_O^h z_h leaves the output-MLP input and nothing else
    changes. mean: z_h := mean_z[head] (mean_z [H, 1, d], `mean_activation` of recorded hook_z):
    the state-dependent part of the write is removed, its average kept. resample: z_h := the
    head's output on a recorded step (reference_z [M, H, 1, d], drawn per row by `resample_index`
    with stream `head`): the head keeps writing something it writes in real scenes, but about
    another scene.
    """
    _check_mode(mode, mean_z, reference_z)

    def fn(z: torch.Tensor) -> torch.Tensor:
        if not 0 <= head < z.shape[1]:
            raise ValueError(f"head {head} out of range for {z.shape[1]} heads")
        out = z.clone()
        if mode == "resample":
            ref = torch.as_tensor(reference_z)
            out[:, head] = ref[resample_index(z, len(ref), seed, head), head].to(z)
        else:
            out[:, head] = 0.0 if mode == "zero" else mean_z[head].to(z)   # type: ignore[index]
        return out

    return {Z: fn}


def branch_ablation(mode: Mode = "zero", mean_combined: torch.Tensor | None = None,
                    reference_combined: torch.Tensor | None = None, seed: int = 0) -> dict[str, HookFn]:
    """Hooks ablating the whole attention branch `attention_layer.hook_combined` [B, D].

    The residual is kept: the output-MLP input becomes ½·e (zero), ½·(e + mean_combined [D])
    (mean) or ½·(e + the branch's output on a recorded step) (resample: reference_combined [M, D],
    drawn per row by `resample_index`, stream `BRANCH_STREAM`).
    """
    _check_mode(mode, mean_combined, reference_combined)

    def fn(combined: torch.Tensor) -> torch.Tensor:
        if mode == "zero":
            return torch.zeros_like(combined)
        if mode == "resample":
            ref = torch.as_tensor(reference_combined)
            return ref[resample_index(combined, len(ref), seed, BRANCH_STREAM)].to(combined).clone()
        return mean_combined.to(combined).expand_as(combined).clone()   # type: ignore[union-attr]

    return {COMBINED: fn}


def neuron_ablation(layer: str, neurons: Sequence[int], mode: Literal["zero", "mean"] = "zero",
                    mean: torch.Tensor | None = None) -> dict[str, HookFn]:
    """Hooks ablating units `neurons` of the last axis of activation `layer` (e.g. a
    `*.hook_post.i` [B, D], [B, 1, D] or [B, E−1, D]): set to 0, or to `mean` (broadcastable
    to the activation without its batch axis, e.g. [D] or [1, D] from `mean_activation`)."""
    if mode == "resample":
        raise ValueError("neuron sets are ablated with mode 'zero' or 'mean'")
    _check_mode(mode, mean)
    index = [int(n) for n in neurons]

    def fn(act: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(act.shape[-1], dtype=torch.bool)
        keep[index] = False
        fill = torch.zeros_like(act) if mode == "zero" else mean.to(act).expand_as(act)  # type: ignore[union-attr]
        return torch.where(keep, act, fill)

    return {layer: fn}


# ------------------------------------------------------------------------ vehicle edits

def _entity_rows(obs: torch.Tensor, entity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch rows and entities of the steps that have a vehicle to edit (entity >= 1)."""
    entity = torch.as_tensor(entity).long().reshape(-1)
    if entity.numel() != obs.shape[0]:
        raise ValueError(f"entity has {entity.numel()} entries for {obs.shape[0]} steps")
    if (entity == 0).any():
        raise ValueError("never edit the ego row as a vehicle (every key would be masked)")
    rows = torch.nonzero(entity >= 1).squeeze(1)
    return rows, entity[rows]


def remove_vehicle(obs: torch.Tensor, entity: torch.Tensor) -> torch.Tensor:
    """obs [B, E, F] with row entity[b] zeroed (presence 0: the network masks it); entity [B]
    long, −1 = leave the step unchanged. Returns a new tensor."""
    out = obs.clone()
    rows, ent = _entity_rows(obs, entity)
    out[rows, ent] = 0.0
    return out


def move_closer(obs: torch.Tensor, entity: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """obs [B, E, F] with vehicle entity[b] moved towards the ego: its position offset from the
    ego is multiplied by `factor` (x and y share one normalisation range, so distances scale by
    `factor` too); velocity and heading kept. entity [B], −1 = unchanged."""
    out = obs.clone()
    rows, ent = _entity_rows(obs, entity)
    for f in (X, Y):
        ego = obs[rows, 0, f]
        out[rows, ent, f] = ego + factor * (obs[rows, ent, f] - ego)
    return out


def slow_ego(obs: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """obs [B, E, F] with the ego's velocity (vx, vy) multiplied by `factor` (the normalisation
    maps 0 m/s to 0, so its speed scales by `factor`)."""
    out = obs.clone()
    out[:, 0, VX] = obs[:, 0, VX] * factor
    out[:, 0, VY] = obs[:, 0, VY] * factor
    return out


def _attention_bhe(attention: torch.Tensor) -> torch.Tensor:
    """[B, H, E] or [B, H, 1, E] -> [B, H, E]."""
    attention = torch.as_tensor(attention)
    return attention[:, :, 0] if attention.dim() == 4 else attention


def most_attended_vehicle(attention: torch.Tensor, obs: torch.Tensor,
                          candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Per step, the present non-ego vehicle with the largest attention summed over heads.

    attention [B, H, E] (or [B, H, 1, E]); obs [B, E, F]; candidates: optional [B, E] bool to
    choose among (e.g. vehicles crossing the ego's path), intersected with presence.
    Returns [B] long entity indices, −1 where no vehicle qualifies (ties: the lowest index).
    """
    allowed = present_others(obs)
    if candidates is not None:
        allowed = allowed & torch.as_tensor(candidates).bool()
    total = _attention_bhe(attention).double().sum(dim=1)                  # [B, E]
    score = torch.where(allowed, total, torch.full_like(total, -math.inf))
    best = score.argmax(dim=1)
    return torch.where(allowed.any(dim=1), best, torch.full_like(best, -1))


def random_present_vehicle(obs: torch.Tensor, seed: int) -> torch.Tensor:
    """Per step, a present non-ego vehicle drawn at random: obs [B, E, F] -> [B] long (−1: none).

    The draw is seeded by (seed, the step's observation bytes), so it is a function of the state:
    the same state gets the same vehicle whatever the batch it comes in (closed-loop runs are
    deterministic and independent of the number of envs).
    """
    present = present_others(obs)
    out = torch.full((obs.shape[0],), -1, dtype=torch.long)
    data = obs.detach().cpu().contiguous().float().numpy()
    for b in range(obs.shape[0]):
        idx = torch.nonzero(present[b]).squeeze(1)
        if idx.numel():
            rng = np.random.default_rng([seed, zlib.crc32(data[b].tobytes())])
            out[b] = idx[int(rng.integers(idx.numel()))]
    return out


def remove_most_attended(net: nn.Module) -> ObsEdit:
    """Observation edit: remove the vehicle the network attends to most (summed over heads)."""
    def edit(obs: torch.Tensor) -> torch.Tensor:
        _, cache = run_with_cache(net, obs, [PATTERN])
        return remove_vehicle(obs, most_attended_vehicle(cache[PATTERN], obs))
    return edit


def remove_random_vehicle(seed: int) -> ObsEdit:
    """Observation edit: remove a random present vehicle (`random_present_vehicle`)."""
    def edit(obs: torch.Tensor) -> torch.Tensor:
        return remove_vehicle(obs, random_present_vehicle(obs, seed))
    return edit


class Intervened(nn.Module):
    """`net` with hooks `fns` (and an observation edit) applied on every forward.

    forward(obs [B, E, F], mask=None) -> Q [B, A]: Q of `obs_edit(obs)` with the named
    activations edited by `fns`. A given mask is passed through unchanged; with an observation
    edit that removes vehicles, leave it None so the network recomputes it.
    """

    def __init__(self, net: nn.Module, fns: Mapping[str, HookFn] | None = None,
                 obs_edit: ObsEdit | None = None) -> None:
        super().__init__()
        self.net = net
        self.fns = dict(fns or {})
        self.obs_edit = obs_edit

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.obs_edit is not None:
            obs = self.obs_edit(obs)
        return run_with_hooks(self.net, obs, self.fns, mask)


# ----------------------------------------------------------------------------- open loop

def q_metric(q: torch.Tensor) -> torch.Tensor:
    """m = Q(SLOWER) − Q(FASTER): q [B, A] -> [B]; positive = the network prefers braking."""
    return q[:, SLOWER] - q[:, FASTER]


def _q_and_pattern(net: nn.Module, obs: torch.Tensor,
                   fns: Mapping[str, HookFn] | None) -> tuple[torch.Tensor, torch.Tensor]:
    with hooks(net, dict(fns or {})):
        q, cache = run_with_cache(net, obs, [PATTERN])
    return q, cache[PATTERN][:, :, 0]


def open_loop_effects(net: nn.Module, obs: torch.Tensor, fns: Mapping[str, HookFn] | None = None,
                      obs_edit: ObsEdit | None = None, edited: nn.Module | None = None) -> pd.DataFrame:
    """Effect of an intervention on recorded steps, one row per step (B rows).

    obs [B, E, F] the recorded observations; fns: hooks; obs_edit: an observation edit; edited:
    an edited copy of `net` (e.g. `rank_one_edit`) run instead of `net` after the intervention.
    Columns: action (greedy, unablated), action_after, flipped, dq_slower, dq_idle, dq_faster
    (Q after − before), abs_dq (mean over actions of |ΔQ|), dm (Δ of Q(SLOWER) − Q(FASTER)),
    attention_tv (total-variation distance ½·Σ_j|a'_hj − a_hj| of the pattern, mean over heads).
    """
    q0, a0 = _q_and_pattern(net, obs, None)
    q1, a1 = _q_and_pattern(edited if edited is not None else net, obs_edit(obs) if obs_edit is not None else obs,
                            fns)
    dq = (q1 - q0).double()
    act0, act1 = q0.argmax(dim=1), q1.argmax(dim=1)
    frame = pd.DataFrame({"action": act0.numpy(), "action_after": act1.numpy(), "flipped": (act0 != act1).numpy()})
    for i, name in enumerate(ACTIONS):
        frame[f"dq_{name.lower()}"] = dq[:, i].numpy()
    frame["abs_dq"] = dq.abs().mean(dim=1).numpy()
    frame["dm"] = (dq[:, SLOWER] - dq[:, FASTER]).numpy()
    frame["attention_tv"] = (0.5 * (a1 - a0).double().abs().sum(dim=-1)).mean(dim=1).numpy()
    return frame


def summarize_effects(effects: pd.DataFrame, resamples: int, seed: int) -> dict[str, float]:
    """One summary of `open_loop_effects`: n_steps; flip_rate and abs_dq with 95% bootstrap CIs
    over steps (…_ci_low, …_ci_high); mean dq per action, dm and attention_tv."""
    out: dict[str, float] = {"n_steps": int(len(effects))}
    for name in ("flipped", "abs_dq"):
        mean, low, high = bootstrap_ci(effects[name].to_numpy(dtype=np.float64), resamples, seed)
        key = "flip_rate" if name == "flipped" else name
        out |= {key: mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
    for name in ("dq_slower", "dq_idle", "dq_faster", "dm", "attention_tv"):
        out[name] = float(effects[name].mean())
    return out


# ------------------------------------------------------------------------------ neurons

def random_unit_sets(n_units: int, exclude: Sequence[int], size: int, n_sets: int, seed: int) -> list[list[int]]:
    """`n_sets` random sets of `size` units drawn without replacement from the units not in
    `exclude` (the control for a top-k set), each sorted; seeded by `seed`."""
    pool = np.setdiff1d(np.arange(n_units), np.asarray(list(exclude), dtype=int))
    if pool.size < size:
        raise ValueError(f"only {pool.size} units left to draw sets of {size}")
    rng = np.random.default_rng(seed)
    return [sorted(int(u) for u in rng.choice(pool, size=size, replace=False)) for _ in range(n_sets)]


# -------------------------------------------------------------------------- perturbation

def add_direction(direction: torch.Tensor, size: float) -> HookFn:
    """A hook adding size·direction ([D], broadcast over the leading axes) to an activation."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        return act + size * direction.to(act)
    return fn


def sweep_directions(acts: torch.Tensor | np.ndarray, n_random: int, seed: int) -> dict[str, torch.Tensor]:
    """Directions [D] for `perturbation_sweep`, each of norm √D (so size s moves every unit by s
    on average, root-mean-square):
    - uniform: all ones (size 0.1 is the notebook's +0.1 on every unit);
    - pc1: the top principal direction of the recorded activations acts [N, ..., D] (sign: its
      unit sum is ≥ 0);
    - random0 …: Gaussian directions seeded by (seed, i).
    """
    acts = torch.as_tensor(acts).double()
    rows = acts.reshape(-1, acts.shape[-1])
    d = rows.shape[1]
    scale = math.sqrt(d)
    out = {"uniform": torch.ones(d)}
    centred = rows - rows.mean(dim=0)
    if rows.shape[0] > 1 and centred.abs().max() > 0:
        pc = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        pc = -pc if pc.sum() < 0 else pc
        out["pc1"] = (pc / pc.norm() * scale).float()
    for i in range(n_random):
        g = torch.as_tensor(np.random.default_rng([seed, i]).standard_normal(d))
        out[f"random{i}"] = (g / g.norm() * scale).float()
    return out


def perturbation_sweep(net: nn.Module, obs: torch.Tensor, directions: Mapping[str, Mapping[str, torch.Tensor]],
                       sizes: Sequence[float]) -> pd.DataFrame:
    """Q sensitivity per layer: add size·direction to a layer's activation on recorded steps.

    obs [B, E, F]; directions: {layer name: {direction name: [D]}}; sizes: signed sizes.
    One row per (layer, direction, size): layer_rms (root-mean-square of the unperturbed
    activation), n_steps, mean_abs_dq (mean over steps and actions of |ΔQ|), dq_slower, dq_idle,
    dq_faster (mean ΔQ), dm (mean Δ of Q(SLOWER) − Q(FASTER)), flip_rate, sensitivity =
    mean_abs_dq / |size|.
    """
    q0, cache = run_with_cache(net, obs, list(directions))
    a0 = q0.argmax(dim=1)
    rows = []
    for layer, dirs in directions.items():
        rms = float(cache[layer].double().pow(2).mean().sqrt())
        for name, direction in dirs.items():
            for size in sizes:
                with torch.no_grad():
                    q1 = run_with_hooks(net, obs, {layer: add_direction(direction, float(size))})
                dq = (q1 - q0).double()
                mean_abs = float(dq.abs().mean())
                rows.append({"layer": layer, "direction": name, "size": float(size), "layer_rms": rms,
                             "n_steps": int(obs.shape[0]), "mean_abs_dq": mean_abs,
                             **{f"dq_{a.lower()}": float(dq[:, i].mean()) for i, a in enumerate(ACTIONS)},
                             "dm": float((dq[:, SLOWER] - dq[:, FASTER]).mean()),
                             "flip_rate": float((q1.argmax(dim=1) != a0).double().mean()),
                             "sensitivity": mean_abs / abs(float(size)) if size else math.nan})
    return pd.DataFrame(rows)
