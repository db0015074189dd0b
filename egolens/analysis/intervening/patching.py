"""Activation and path patching on clean/corrupted pairs of recorded steps.

A pair is a recorded step (clean) and the same step changed in one thing (corrupted): a vehicle
removed, a vehicle moved closer, the ego slowed (`build_pairs`). Activation patching runs the
corrupted observation with one site (a named activation, or a slice of it: one head, one
entity, one neuron) replaced by its value on the clean observation; metric m = Q(SLOWER) −
Q(FASTER), restored = (m_patched − m_corr)/(m_clean − m_corr). Path patching: k_hj = W_K^h E_j
depends only on entity j's embedding, so patching head h's key (or value) of entity j with its
clean value is exactly "sender j → key (value) of head h only → z_h → Q": where the head looks
vs what it reads. Every patch is a hook on a named activation (`egolens.hooks`); all functions
are pure, tables are tidy pandas DataFrames.

Shapes: P pairs, E entities (15, row 0 the ego), F features, H heads, d = D / H.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.intervening.interventions import (
    most_attended_vehicle,
    move_closer,
    q_metric,
    remove_vehicle,
    slow_ego,
)
from egolens.hooks import HookFn, run_with_cache, run_with_hooks
from egolens.model import EgoAttentionNetwork
from egolens.sites import (
    COMBINED,
    EGO_EMBEDDING,
    K_SITE,
    OTHERS_EMBEDDING,
    OUTPUT_MLP,
    PATTERN,
    Q_SITE,
    RESID,
    SCORES,
    V_SITE,
    Z,
    mlp_posts,
)
from egolens.vocabulary import present

Index = tuple[int | slice | torch.Tensor, ...]
"""An index into an activation after its batch axis; tensors hold one entry per batch row."""


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
    for ego_name, oth_name in zip(mlp_posts(net, EGO_EMBEDDING), mlp_posts(net, OTHERS_EMBEDDING)):
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
    for name, linear in zip(mlp_posts(net, OUTPUT_MLP), net.output_layer.layers):
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
    ego_last = mlp_posts(net, EGO_EMBEDDING)[-1]
    oth_last = mlp_posts(net, OTHERS_EMBEDDING)[-1]
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


