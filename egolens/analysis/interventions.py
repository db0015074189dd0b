"""Causal interventions: ablations, activation and path patching, perturbation sweeps, model edits.

Observation says what the network represents; interventions say what it uses. Every
intervention here is a hook that edits a named activation (`egolens.hooks`), an edit of the
observation, or an edited copy of the network; nothing re-implements the forward pass. All
functions are pure (no file I/O); tables are tidy pandas DataFrames.

Shapes: B steps (or pairs), E entities (15, row 0 the ego), F features (7: presence, x, y, vx,
vy, cos_h, sin_h), D feature_size, H heads, d = D / H, A actions (0 SLOWER, 1 IDLE, 2 FASTER).
Head h's output is z_h (`attention_layer.hook_z` [B, H, 1, d]); it reaches the output-MLP input
as ½·W_O^h z_h with W_O^h the COLUMNS h·d … (h+1)·d−1 of `attention_combine` (METHODS.md,
"Weights per head"), so ablating z_h removes exactly that write.

- Ablations return {name: hook} dicts for `run_with_hooks` / `hooks`; `Intervened` applies them
  (and an optional observation edit) on every forward, so an ablated network can drive in
  closed loop through `egolens.evaluation.play_greedy`.
- Activation patching runs the corrupted observation with one site (a named activation, or a
  slice of it: one head, one entity, one neuron) replaced by its value on the clean
  observation; metric m = Q(SLOWER) − Q(FASTER), restored = (m_patched − m_corr)/(m_clean − m_corr).
- Path patching: k_hj = W_K^h E_j depends only on entity j's embedding, so patching head h's key
  (or value) of entity j with its clean value is exactly "sender j → key (value) of head h only
  → z_h → Q": where the head looks vs what it reads.
- Edits return new networks (deep copies); the input network is never mutated.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.attribution import layer_conductance, typical_scene
from egolens.hooks import HookFn, hooks, run_with_cache, run_with_hooks
from egolens.model import EgoAttentionNetwork
from egolens.stats import bootstrap_ci, paired_bootstrap_ci
from egolens.vocabulary import ACTIONS, present, present_others

if TYPE_CHECKING:
    from egolens.evaluation import EpisodeResult

SLOWER, IDLE, FASTER = 0, 1, 2
X, Y, VX, VY = 1, 2, 3, 4
"""Feature indices of the observation's position and velocity."""

Q_SITE = "attention_layer.hook_q"
K_SITE = "attention_layer.hook_k"
V_SITE = "attention_layer.hook_v"
SCORES = "attention_layer.hook_scores"
PATTERN = "attention_layer.hook_pattern"
Z = "attention_layer.hook_z"
COMBINED = "attention_layer.hook_combined"
RESID = "attention_layer.hook_resid"

Mode = Literal["zero", "mean"]
ObsEdit = Callable[[torch.Tensor], torch.Tensor]
"""An edit of a batch of observations [B, E, F] -> [B, E, F] (a new tensor)."""
Index = tuple[int | slice | torch.Tensor, ...]
"""An index into an activation after its batch axis; tensors hold one entry per batch row."""


# ------------------------------------------------------------------------------- ablations

def _check_mode(mode: str, mean: torch.Tensor | None) -> None:
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', not {mode!r}")
    if mode == "mean" and mean is None:
        raise ValueError("mean ablation needs the mean activation")


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


def head_ablation(head: int, mode: Mode = "zero", mean_z: torch.Tensor | None = None) -> dict[str, HookFn]:
    """Hooks ablating head `head`'s output z_h on `attention_layer.hook_z` [B, H, 1, d].

    zero: z_h := 0, so head h's write ½·W_O^h z_h leaves the output-MLP input and nothing else
    changes. mean: z_h := mean_z[head] (mean_z [H, 1, d], `mean_activation` of recorded hook_z):
    the state-dependent part of the write is removed, its average kept.
    """
    _check_mode(mode, mean_z)

    def fn(z: torch.Tensor) -> torch.Tensor:
        if not 0 <= head < z.shape[1]:
            raise ValueError(f"head {head} out of range for {z.shape[1]} heads")
        out = z.clone()
        out[:, head] = 0.0 if mode == "zero" else mean_z[head].to(z)   # type: ignore[index]
        return out

    return {Z: fn}


def branch_ablation(mode: Mode = "zero", mean_combined: torch.Tensor | None = None) -> dict[str, HookFn]:
    """Hooks ablating the whole attention branch `attention_layer.hook_combined` [B, D].

    The residual is kept: the output-MLP input becomes ½·e (zero) or ½·(e + mean_combined [D]).
    """
    _check_mode(mode, mean_combined)

    def fn(combined: torch.Tensor) -> torch.Tensor:
        if mode == "zero":
            return torch.zeros_like(combined)
        return mean_combined.to(combined).expand_as(combined).clone()   # type: ignore[union-attr]

    return {COMBINED: fn}


def neuron_ablation(layer: str, neurons: Sequence[int], mode: Mode = "zero",
                    mean: torch.Tensor | None = None) -> dict[str, HookFn]:
    """Hooks ablating units `neurons` of the last axis of activation `layer` (e.g. a
    `*.hook_post.i` [B, D], [B, 1, D] or [B, E−1, D]): set to 0, or to `mean` (broadcastable
    to the activation without its batch axis, e.g. [D] or [1, D] from `mean_activation`)."""
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

def neuron_importance(net: nn.Module, obs: torch.Tensor, layer: str, n_steps: int = 32,
                      baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |layer conductance| per unit of activation `layer` for the greedy action's Q.

    obs [B, E, F]; layer: a `*.hook_post.i` point ([B, D], [B, 1, D] or [B, E−1, D]; per-entity
    conductances are summed over entities first, so a unit's importance is its total
    conductance in a step). baseline: [B, E, F], default `typical_scene(obs, obs,
    replace_ego=True)` (every present vehicle and the ego replaced by the typical recorded one,
    so ego-embedding units get conductance too). Returns [D] = mean over steps of |conductance|.
    """
    obs = obs.detach()
    if baseline is None:
        baseline = typical_scene(obs, obs, replace_ego=True)
    with torch.no_grad():
        target = net(obs).argmax(dim=1)
    cond, _ = layer_conductance(net, obs, layer, target, baseline, n_steps)
    cond = cond.double()
    if cond.dim() == 3:
        cond = cond.sum(dim=1)
    return cond.abs().mean(dim=0)


def top_units(importance: torch.Tensor, k: int) -> list[int]:
    """The k units with the largest importance [D] (ties: the lower index first)."""
    order = torch.argsort(-importance.double(), stable=True)
    return [int(i) for i in order[:k]]


def random_unit_sets(n_units: int, exclude: Sequence[int], size: int, n_sets: int, seed: int) -> list[list[int]]:
    """`n_sets` random sets of `size` units drawn without replacement from the units not in
    `exclude` (the control for a top-k set), each sorted; seeded by `seed`."""
    pool = np.setdiff1d(np.arange(n_units), np.asarray(list(exclude), dtype=int))
    if pool.size < size:
        raise ValueError(f"only {pool.size} units left to draw sets of {size}")
    rng = np.random.default_rng(seed)
    return [sorted(int(u) for u in rng.choice(pool, size=size, replace=False)) for _ in range(n_sets)]


# ------------------------------------------------------------------------------ patching

@dataclass(frozen=True)
class Site:
    """A place to patch: activation `name`, restricted to `index` after the batch axis.

    index entries are ints, slices or [B] long tensors (one entry per pair); () = the whole
    activation. head / entity / neuron label the slice (−1: not restricted to one).
    """

    name: str
    index: Index = ()
    site_class: str = ""
    head: int = -1
    entity: int = -1
    neuron: int = -1


def _batch_index(batch: int, index: Index, rows: torch.Tensor | None) -> tuple:
    which = torch.arange(batch) if rows is None else torch.nonzero(torch.as_tensor(rows).bool()).squeeze(1)
    parts = [c[which] if isinstance(c, torch.Tensor) else c for c in index]
    return (which, *parts)


def patch_hook(source: torch.Tensor, index: Index = (), rows: torch.Tensor | None = None) -> HookFn:
    """A hook that replaces `activation[:, *index]` by `source[:, *index]` (source has the
    activation's shape, e.g. the clean run's cached value). rows: optional [B] bool, patch only
    those batch rows."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        if act.shape != source.shape:
            raise ValueError(f"source shape {tuple(source.shape)} != activation shape {tuple(act.shape)}")
        out = act.clone()
        idx = _batch_index(act.shape[0], index, rows)
        out[idx] = source[idx].to(out.dtype)
        return out
    return fn


def restored_fraction(m_patched: np.ndarray | torch.Tensor, m_clean: np.ndarray | torch.Tensor,
                      m_corr: np.ndarray | torch.Tensor, eps: float = 1e-9) -> np.ndarray:
    """(m_patched − m_corr) / (m_clean − m_corr) elementwise; NaN where |m_clean − m_corr| < eps.

    1 = the patch restores the clean metric, 0 = it changes nothing."""
    patched, clean, corr = (np.asarray(torch.as_tensor(x).double()) for x in (m_patched, m_clean, m_corr))
    gap = clean - corr
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(gap) < eps, np.nan, (patched - corr) / gap) + 0.0   # + 0.0: no −0


def _mlp_posts(net: EgoAttentionNetwork, prefix: str) -> list[str]:
    return [f"{prefix}.hook_post.{i}" for i in range(len(getattr(net, prefix).hook_post))]


def patching_sites(net: EgoAttentionNetwork, entities: int, neurons: bool = True) -> list[Site]:
    """Every site of activation patching, per layer, head, entity position and (optionally) neuron.

    - embedding: each embedding layer's post-ReLU output, per entity (the ego from
      `ego_embedding`, entity j ≥ 1 from `others_embedding` row j−1) and all others at once;
    - query (per head), key / value (per head and entity, and per head over all entities),
      scores, pattern, z (per head), combined, resid;
    - hidden: each output-MLP hidden layer whole, and (neurons=True) per neuron ("neuron").
    """
    att = net.attention_layer
    sites: list[Site] = []
    for ego_name, oth_name in zip(_mlp_posts(net, "ego_embedding"), _mlp_posts(net, "others_embedding")):
        sites.append(Site(ego_name, (0,), "embedding", entity=0))
        sites += [Site(oth_name, (j - 1,), "embedding", entity=j) for j in range(1, entities)]
        sites.append(Site(oth_name, (), "embedding"))
    for h in range(att.heads):
        sites.append(Site(Q_SITE, (h,), "query", head=h, entity=0))
        for name, cls in ((K_SITE, "key"), (V_SITE, "value")):
            sites += [Site(name, (h, j), cls, head=h, entity=j) for j in range(entities)]
            sites.append(Site(name, (h,), cls, head=h))
        sites += [Site(name, (h,), cls, head=h) for name, cls in ((SCORES, "scores"), (PATTERN, "pattern"), (Z, "z"))]
    sites += [Site(COMBINED, (), "combined"), Site(RESID, (), "resid")]
    for name, linear in zip(_mlp_posts(net, "output_layer"), net.output_layer.layers):
        sites.append(Site(name, (), "hidden"))
        if neurons:
            sites += [Site(name, (n,), "neuron", neuron=n) for n in range(linear.out_features)]
    return sites


def _roles(site: Site, target: torch.Tensor | None, present: torch.Tensor) -> tuple[list[str], np.ndarray]:
    """Per pair: the role of the site's entity (all / target / ego / other) and its presence."""
    batch = present.shape[0]
    if site.entity < 0:
        return ["all"] * batch, np.ones(batch, dtype=bool)
    roles = []
    for b in range(batch):
        if target is not None and int(target[b]) == site.entity:
            roles.append("target")
        else:
            roles.append("ego" if site.entity == 0 else "other")
    return roles, present[:, site.entity].numpy()


def activation_patching(net: nn.Module, clean_obs: torch.Tensor, corr_obs: torch.Tensor, sites: Sequence[Site],
                        target: torch.Tensor | None = None) -> pd.DataFrame:
    """Patch each site from the clean run into the corrupted run; one row per (pair, site).

    clean_obs, corr_obs: [P, E, F] pairs differing in one thing; each run uses its own absent
    mask. target: optional [P] long, the entity the pair changes (labels the role of entity
    sites). Columns: pair, site (the activation name), site_class, head, entity, neuron, role
    (all / target / ego / other), entity_present (in the clean observation), m_clean, m_corr,
    m_patched (m = Q(SLOWER) − Q(FASTER)), restored = (m_patched − m_corr)/(m_clean − m_corr).
    """
    names = sorted({s.name for s in sites})
    q_clean, clean = run_with_cache(net, clean_obs, names)
    with torch.no_grad():
        m_corr = q_metric(net(corr_obs))
    m_clean = q_metric(q_clean)
    is_present = present(clean_obs)
    is_present[:, 0] = True
    frames = []
    for site in sites:
        with torch.no_grad():
            m_patched = q_metric(run_with_hooks(net, corr_obs, {site.name: patch_hook(clean[site.name], site.index)}))
        roles, entity_present = _roles(site, target, is_present)
        frames.append(pd.DataFrame({
            "pair": np.arange(clean_obs.shape[0]), "site": site.name, "site_class": site.site_class,
            "head": site.head, "entity": site.entity, "neuron": site.neuron, "role": roles,
            "entity_present": entity_present, "m_clean": m_clean.double().numpy(),
            "m_corr": m_corr.double().numpy(), "m_patched": m_patched.double().numpy(),
            "restored": restored_fraction(m_patched, m_clean, m_corr)}))
    return pd.concat(frames, ignore_index=True)


PATHS = ("key", "value", "key_value", "query", "sender")


def path_patching(net: EgoAttentionNetwork, clean_obs: torch.Tensor, corr_obs: torch.Tensor,
                  sender: torch.Tensor) -> pd.DataFrame:
    """Path patching from a sender entity through each head, one row per (pair, head, path).

    clean_obs, corr_obs [P, E, F]; sender [P] long (the entity the pair changes; 0 = the ego).
    Paths, each patched with its clean value in the corrupted run:
    - key: head h's key of the sender (`hook_k[:, h, j]`): only where head h looks changes;
    - value: head h's value of the sender (`hook_v[:, h, j]`): only what head h reads changes;
    - key_value: both; query: head h's query (pairs whose sender is the ego only);
    - sender (head −1): the sender's whole last-layer embedding, every head and path.
    Columns: pair, sender, head, path, m_clean, m_corr, m_patched, restored.
    """
    sender = torch.as_tensor(sender).long()
    ego_last = _mlp_posts(net, "ego_embedding")[-1]
    oth_last = _mlp_posts(net, "others_embedding")[-1]
    q_clean, clean = run_with_cache(net, clean_obs, [K_SITE, V_SITE, Q_SITE, ego_last, oth_last])
    with torch.no_grad():
        m_corr = q_metric(net(corr_obs)).double()
    m_clean = q_metric(q_clean).double()
    is_ego = sender == 0

    def run(fns: dict[str, HookFn]) -> torch.Tensor:
        with torch.no_grad():
            return q_metric(run_with_hooks(net, corr_obs, fns)).double()

    jobs: list[tuple[int, str, dict[str, HookFn], torch.Tensor]] = []
    for h in range(net.attention_layer.heads):
        key = {K_SITE: patch_hook(clean[K_SITE], (h, sender))}
        value = {V_SITE: patch_hook(clean[V_SITE], (h, sender))}
        jobs += [(h, "key", key, torch.ones_like(is_ego)), (h, "value", value, torch.ones_like(is_ego)),
                 (h, "key_value", key | value, torch.ones_like(is_ego)),
                 (h, "query", {Q_SITE: patch_hook(clean[Q_SITE], (h,), is_ego)}, is_ego)]
    sender_fns = {ego_last: patch_hook(clean[ego_last], (0,), is_ego),
                  oth_last: patch_hook(clean[oth_last], ((sender - 1).clamp(min=0),), ~is_ego)}
    jobs.append((-1, "sender", sender_fns, torch.ones_like(is_ego)))
    frames = []
    for head, path, fns, rows in jobs:
        if not rows.any():
            continue
        m_patched = run(fns)
        keep = torch.nonzero(rows).squeeze(1)
        frames.append(pd.DataFrame({
            "pair": keep.numpy(), "sender": sender[keep].numpy(), "head": head, "path": path,
            "m_clean": m_clean[keep].numpy(), "m_corr": m_corr[keep].numpy(), "m_patched": m_patched[keep].numpy(),
            "restored": restored_fraction(m_patched[keep], m_clean[keep], m_corr[keep])}))
    return pd.concat(frames, ignore_index=True)


@dataclass
class Pairs:
    """Clean/corrupted pairs built from recorded steps. step [P] indexes the recorded steps;
    clean, corrupted [P, E, F]; target [P] the changed entity (0 = the ego)."""

    kind: str
    step: np.ndarray
    clean: torch.Tensor
    corrupted: torch.Tensor
    target: torch.Tensor


PAIR_KINDS = ("vehicle_removed", "vehicle_closer", "ego_slower")


def build_pairs(net: nn.Module, obs: torch.Tensor, kind: str, attention: torch.Tensor,
                crossing: torch.Tensor | None = None, max_pairs: int = 100, min_change: float = 0.05,
                factor: float = 0.5) -> Pairs:
    """Pairs (clean = a recorded step, corrupted = the same step changed in one thing).

    obs [N, E, F]; attention [N, H, E] the recorded pattern; crossing [N, E] bool (vehicles
    whose path crosses the ego's, `egolens.scene.scene_facts`). kind:
    - vehicle_removed: the most attended crossing vehicle removed (steps without one skipped);
    - vehicle_closer: the most attended vehicle moved closer (`move_closer`, `factor`);
    - ego_slower: the ego's speed multiplied by `factor` (`slow_ego`).
    Only pairs with |m_clean − m_corr| ≥ min_change are kept (the restored fraction divides by
    it); at most `max_pairs`, evenly spaced over the qualifying steps.
    """
    obs = obs.detach()
    if kind == "vehicle_removed":
        if crossing is None:
            raise ValueError("vehicle_removed pairs need the crossing facts")
        target = most_attended_vehicle(attention, obs, crossing)
        corrupted = remove_vehicle(obs, target)
    elif kind == "vehicle_closer":
        target = most_attended_vehicle(attention, obs)
        corrupted = move_closer(obs, target, factor)
    elif kind == "ego_slower":
        target = torch.zeros(obs.shape[0], dtype=torch.long)
        corrupted = slow_ego(obs, factor)
    else:
        raise ValueError(f"kind must be one of {PAIR_KINDS}, not {kind!r}")
    with torch.no_grad():
        gap = (q_metric(net(obs)) - q_metric(net(corrupted))).abs()
    ok = torch.nonzero((target >= 0) & (gap >= min_change)).squeeze(1).numpy()
    if ok.size > max_pairs:
        ok = ok[np.unique(np.round(np.linspace(0, ok.size - 1, max_pairs)).astype(int))]
    keep = torch.as_tensor(ok, dtype=torch.long)
    return Pairs(kind, ok, obs[keep], corrupted[keep], target[keep])


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


# ---------------------------------------------------------------------------- model edits

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
    posts = _mlp_posts(net, "output_layer")
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


# ------------------------------------------------------------------------- closed loop

OUTCOME_METRICS = ("success", "collision", "timeout", "return", "length")


def episode_table(results: Sequence[EpisodeResult]) -> pd.DataFrame:
    """One row per episode: env_seed, outcome, success, collision, timeout (0/1), return, length."""
    return pd.DataFrame({
        "env_seed": [r.env_seed for r in results], "outcome": [r.outcome for r in results],
        "success": [float(r.outcome == "arrived") for r in results],
        "collision": [float(r.outcome == "collision") for r in results],
        "timeout": [float(r.outcome == "timeout") for r in results],
        "return": [r.ret for r in results], "length": [float(r.length) for r in results]})


def paired_comparison(treated: Sequence[EpisodeResult], control: Sequence[EpisodeResult], resamples: int,
                      seed: int) -> pd.DataFrame:
    """Closed-loop effect of an intervention, paired by env seed (the same episodes' starts).

    One row per metric (success, collision, timeout rates, mean return, mean length): value and
    its 95% bootstrap CI (value_ci_low, value_ci_high), control, diff = mean of per-episode
    (treated − control) and its paired-bootstrap CI (diff_ci_low, diff_ci_high), episodes.
    """
    a, b = episode_table(treated), episode_table(control)
    if list(a["env_seed"]) != list(b["env_seed"]):
        raise ValueError("treated and control episodes are not paired by env seed")
    rows = []
    for metric in OUTCOME_METRICS:
        x, y = a[metric].to_numpy(), b[metric].to_numpy()
        value, low, high = bootstrap_ci(x, resamples, seed)
        diff, dlow, dhigh = paired_bootstrap_ci(x, y, resamples, seed)
        rows.append({"metric": metric, "value": value, "value_ci_low": low, "value_ci_high": high,
                     "control": float(y.mean()), "diff": diff, "diff_ci_low": dlow, "diff_ci_high": dhigh,
                     "episodes": len(x)})
    return pd.DataFrame(rows)
