"""Logit lens and tuned lens on the input of the output MLP.

Notation (as in `egolens.analysis.reading.circuits`): e = ego embedding, z_h = head h's pattern-weighted value, W_O^h =
attention_combine.weight[:, h·d:(h+1)·d], h_in = ½e + ½·combine(concat_h z_h), U = the output
MLP (h_in -> Q). Because the attention layer is linear given its pattern,
h_in = ½e + Σ_h ½·W_O^h Σ_j a_hj v_hj exactly, so partial sums of those writes are states of the
same space as h_in and can be decoded by U.

Sites (all [N, D] states):
- "ego": ½e, the direct path alone (no entity added);
- "head{h}": ½e + ½·W_O^h z_h, the ego plus head h's write alone;
- "added" with k = 0 … n_present: ½e + Σ_h ½·W_O^h Σ_{j among head h's first k entities by
  attention} a_hj v_hj; each head adds its own k most attended entities (the ego row is an entity
  too); k = n_present is h_in;
- "head{h}_added" with k: the same for head h alone (k = n_present is "head{h}");
- "full": h_in itself (the cached `attention_layer.hook_resid`); U(h_in) is the final Q.
Every state is the network's own `attention_layer.hook_resid`, read by `run_with_cache`: a partial
sum is h_in of a pass whose pattern is patched to keep only the chosen (head, entity) weights
(the ego embedding and the values patched to the cached ones), and a state is decoded by a pass
whose `hook_resid` is patched to it. No part of the forward pass is re-implemented here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from egolens.hooks import HookFn, hooks, run_with_cache, run_with_hooks
from egolens.model import EgoAttentionNetwork
from egolens.sites import EGO_EMBEDDING, PATTERN, RESID, V_SITE, mlp_posts
from egolens.stats import cluster_bootstrap_ci
from egolens.vocabulary import ACTIONS

EGO, FULL, ADDED = "ego", "full", "added"


def head_site(h: int) -> str:
    """Name of the site 'ego plus head h's write alone'."""
    return f"head{h}"


def head_added_site(h: int) -> str:
    """Name of the site 'ego plus head h's first k entities by attention'."""
    return f"head{h}_added"


@dataclass
class LensStates:
    """Decodable states of a batch of N observations (D = feature_size, H heads, E entities).

    ego [N, D]; heads [H, N, D]; added [E+1, N, D] (index k; k > n_present equals k = n_present:
    absent entities have weight 0); head_added [H, E+1, N, D]; full [N, D]; n_present [N]
    (present entities, ego included); q [N, A] the final Q-values.
    """

    ego: torch.Tensor
    heads: torch.Tensor
    added: torch.Tensor
    head_added: torch.Tensor
    full: torch.Tensor
    n_present: torch.Tensor
    q: torch.Tensor

    def sites(self) -> dict[tuple[str, int | None], torch.Tensor]:
        """{(site, k): state [N, D]}, k None for sites without k; every k = 0 … E is listed."""
        out: dict[tuple[str, int | None], torch.Tensor] = {(EGO, None): self.ego}
        out |= {(head_site(h), None): state for h, state in enumerate(self.heads)}
        out |= {(ADDED, k): state for k, state in enumerate(self.added)}
        for h, states in enumerate(self.head_added):
            out |= {(head_added_site(h), k): state for k, state in enumerate(states)}
        out[(FULL, None)] = self.full
        return out


def _attention_rank(pattern: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """pattern [N, H, 1, E], absent [N, E] -> rank [N, H, E] of each entity by attention within its
    head (0 = most attended; ties by row; absent entities last)."""
    weights = pattern[:, :, 0, :].masked_fill(absent[:, None, :], -1.0)
    order = torch.sort(-weights, dim=-1, stable=True).indices
    return torch.argsort(order, dim=-1)


def lens_states(net: EgoAttentionNetwork, obs: torch.Tensor, mask: torch.Tensor | None = None,
                fns: dict[str, HookFn] | None = None) -> LensStates:
    """Every lens state of obs [N, E, F] (mask: optional [N, E] absent mask passed to the net).

    fns: optional activation edits (as for `run_with_hooks`) applied during the cached forward
    pass, so the lens sees the edited network (e.g. a forced attention pattern or zeroed values).
    Partial sums are rebuilt from the cached ego embedding, pattern and values, so edits made after
    them (`hook_z`, `hook_combined`) reach only the "full" site.
    """
    ego_name = mlp_posts(net, EGO_EMBEDDING)[-1]
    with hooks(net, fns or {}):
        q, cache = run_with_cache(net, obs, [ego_name, PATTERN, V_SITE, RESID], mask)
    absent = EgoAttentionNetwork.absent_mask(obs) if mask is None else mask.clone()
    absent[:, 0] = False
    pattern = cache[PATTERN]                                     # [N, H, 1, E]
    batch, heads, _, entities = pattern.shape
    rank = _attention_rank(pattern, absent)                      # [N, H, E]

    def resid(kept: torch.Tensor) -> torch.Tensor:
        """h_in [N, D] of the pass whose pattern is the cached one times kept [N, H, E] (0/1)."""
        patch = {ego_name: lambda _: cache[ego_name], V_SITE: lambda _: cache[V_SITE],
                 PATTERN: lambda _: pattern * kept[:, :, None, :]}
        with hooks(net, patch):
            return run_with_cache(net, obs, [RESID], mask)[1][RESID]

    only = torch.eye(heads)[:, None, :, None].expand(heads, batch, heads, entities)   # [H, N, H, E]
    added = torch.stack([resid((rank < k).float()) for k in range(entities + 1)])
    head_added = torch.stack([torch.stack([resid((rank < k).float() * only[h]) for k in range(entities + 1)])
                              for h in range(heads)])
    return LensStates(ego=added[0], heads=head_added[:, -1], added=added, head_added=head_added,
                      full=cache[RESID], n_present=(~absent).sum(dim=1), q=q)


def decode(net: EgoAttentionNetwork, obs: torch.Tensor, state: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q-values [N, A] the network reads off `state` [N, D] put in place of h_in
    (`attention_layer.hook_resid`) for obs [N, E, F]."""
    with torch.no_grad():
        return run_with_hooks(net, obs, {RESID: lambda _: state}, mask)


def _q_columns(n_actions: int) -> list[str]:
    return [f"q_{a.lower()}" for a in ACTIONS] if n_actions == len(ACTIONS) else [f"q_{i}" for i in range(n_actions)]


def logit_lens(net: EgoAttentionNetwork, obs: torch.Tensor, mask: torch.Tensor | None = None,
               fns: dict[str, HookFn] | None = None, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Decode every site of obs [N, E, F] through the network's output MLP.

    Tidy rows (index, site, k, q_<action>…, argmax, final_action, agrees): index is the row of
    obs (with `labels`' columns, e.g. episode and step, prepended, labels having N rows); k is
    <NA> for sites without k and 0 … n_present for "added" and "head{h}_added"; argmax is the
    decoded action, final_action the argmax of the final Q, agrees whether they match.
    `fns` edits activations as in `lens_states`.
    """
    states = lens_states(net, obs, mask, fns)
    final = states.q.argmax(dim=1)
    n_present = states.n_present
    parts = []
    with torch.no_grad():
        for (site, k), state in states.sites().items():
            rows = torch.arange(len(obs)) if k is None else torch.nonzero(k <= n_present)[:, 0]
            if rows.numel() == 0:
                continue
            q = decode(net, obs, state, mask)[rows]       # decoded for the whole batch, then rows kept
            part = pd.DataFrame(q.numpy(), columns=_q_columns(q.shape[1]))
            part.insert(0, "index", rows.numpy())
            part.insert(1, "site", site)
            part.insert(2, "k", pd.array([k] * len(rows), dtype="Int64"))
            part["argmax"] = q.argmax(dim=1).numpy()
            part["final_action"] = final[rows].numpy()
            part["agrees"] = part["argmax"] == part["final_action"]
            parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    if labels is not None:
        if len(labels) != len(obs):
            raise ValueError(f"labels has {len(labels)} rows for {len(obs)} observations")
        table = pd.concat([labels.reset_index(drop=True).iloc[table["index"]].reset_index(drop=True), table], axis=1)
    return table


def lens_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (site, k) of a `logit_lens` table: agreement (fraction of rows whose decoded argmax is
    the final action) and n (rows)."""
    return (df.groupby(["site", "k"], dropna=False, sort=False)["agrees"]
            .agg(agreement="mean", n="size").reset_index())


# --------------------------------------------------------------------------------------------
# Tuned lens


def fit_affine_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ≈ x·Wᵀ + b with a ridge on W (not b), in closed form (float64).

    x: [n, D], y: [n, A] -> (W [A, D], b [A]). Solves (XᵀX + ridge·n·I₀) β = Xᵀy with X = [x, 1]
    and I₀ the identity without the bias entry.
    """
    x, y = x.double(), y.double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    penalty = torch.eye(design.shape[1], dtype=torch.float64) * ridge * len(x)
    penalty[-1, -1] = 0.0
    beta = torch.linalg.solve(design.T @ design + penalty, design.T @ y)      # [D+1, A]
    return beta[:-1].T, beta[-1]


def _r2(y: torch.Tensor, predicted: torch.Tensor) -> float:
    """1 − Σ residual² / Σ (y − mean_y)², pooled over actions (means per action)."""
    y, predicted = y.double(), predicted.double()
    total = ((y - y.mean(dim=0)) ** 2).sum()
    return float(1.0 - ((y - predicted) ** 2).sum() / total) if total > 0 else float("nan")


def split_rows(n: int, held_out_fraction: float = 0.3, seed: int = 0,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (train, held_out) split of rows 0 … n-1 (each sorted).

    Rows are permuted by a torch.Generator seeded by `seed`; with `groups` [n] (e.g. the episode),
    whole groups are held out, so correlated steps of one episode never straddle the split.
    """
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        order = torch.randperm(n, generator=g).numpy()
        held = np.sort(order[:int(round(held_out_fraction * n))])
    else:
        groups = np.asarray(groups)
        unique = np.unique(groups)
        chosen = unique[torch.randperm(len(unique), generator=g).numpy()[:int(round(held_out_fraction * len(unique)))]]
        held = np.nonzero(np.isin(groups, chosen))[0]
    train = np.setdiff1d(np.arange(n), held)
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"split of {n} rows left an empty side (held_out_fraction {held_out_fraction})")
    return train, held


def _tuned_predictions(sites: dict[tuple[str, int | None], torch.Tensor], q: torch.Tensor, train: np.ndarray,
                       ridge: float) -> dict[tuple[str, int | None], torch.Tensor]:
    """{(site, k): the affine probe's Q [N, A] (float64) for every row}, each probe fitted on the rows `train`."""
    out = {}
    for key, state in sites.items():
        weight, bias = fit_affine_probe(state[train], q[train], ridge)
        out[key] = state.double() @ weight.T + bias
    return out


def held_out_agreement(sites: dict[tuple[str, int | None], torch.Tensor], q: torch.Tensor,
                       held_out_fraction: float = 0.3, ridge: float = 1e-4, seed: int = 0,
                       groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per held-out row and site, whether the tuned lens (the probes and split of `tuned_lens` with
    the same arguments) picks the final action: rows (index, site, k, agrees), index into q's rows."""
    train, held = split_rows(len(q), held_out_fraction, seed, groups)
    final = q.argmax(dim=1)[torch.as_tensor(held)]
    parts = [pd.DataFrame({"index": held, "site": site, "k": k,
                           "agrees": (predicted[torch.as_tensor(held)].argmax(dim=1) == final).numpy()})
             for (site, k), predicted in _tuned_predictions(sites, q, train, ridge).items()]
    table = pd.concat(parts, ignore_index=True)
    table["k"] = table["k"].astype("Int64")
    return table


def tuned_lens(sites: dict[tuple[str, int | None], torch.Tensor], q: torch.Tensor, held_out_fraction: float = 0.3,
               ridge: float = 1e-4, seed: int = 0, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per site an affine probe from its state [N, D] to the final Q [N, A], fitted on the
    training rows and evaluated on held-out rows (`split_rows`).

    sites: {(site, k): state [N, D]}, e.g. `LensStates.sites()`. Tidy rows (site, k, split, n,
    agreement, r2): split is "train" or "held_out"; agreement is how often the probe's argmax is
    the final action (argmax of q); r2 as in `_r2`.
    """
    train, held = split_rows(len(q), held_out_fraction, seed, groups)
    final = q.argmax(dim=1)
    rows = []
    for (site, k), predicted in _tuned_predictions(sites, q, train, ridge).items():
        for split, index in (("train", train), ("held_out", held)):
            index_t = torch.as_tensor(index)
            rows.append({"site": site, "k": k, "split": split, "n": len(index),
                         "agreement": float((predicted[index_t].argmax(dim=1) == final[index_t]).double().mean()),
                         "r2": _r2(q[index_t], predicted[index_t])})
    table = pd.DataFrame(rows)
    table["k"] = table["k"].astype("Int64")
    return table


def tuned_lens_for(net: EgoAttentionNetwork, obs: torch.Tensor, mask: torch.Tensor | None = None,
                   held_out_fraction: float = 0.3, ridge: float = 1e-4, seed: int = 0,
                   groups: np.ndarray | None = None, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """`tuned_lens` on the sites of `lens_states(net, obs, mask)`: ego, head{h}, added for each k in
    `ks` (default every k; states past a step's n_present equal h_in), and full."""
    states = lens_states(net, obs, mask)
    sites = {key: s for key, s in states.sites().items()
             if key[0] in (EGO, FULL) or (key[0].startswith("head") and key[1] is None)
             or (key[0] == ADDED and (ks is None or key[1] in ks))}
    return tuned_lens(sites, states.q, held_out_fraction, ridge, seed, groups)


# --------------------------------------------------------------------------------------------
# Controls: what a lens's agreement is worth


LENS_CONTROLS = ("majority_rate", "ego_minus_majority", "full_minus_ego", "full_minus_majority")
"""The quantities `lens_controls` reports per lens."""


def majority_action(actions: np.ndarray) -> int:
    """The most frequent action of actions [n] (ties: the lowest action index)."""
    return int(np.bincount(np.asarray(actions, dtype=np.int64)).argmax())


def lens_controls(agrees: pd.DataFrame, final_action: np.ndarray, episode: np.ndarray, resamples: int,
                  seed: int) -> pd.DataFrame:
    """What a lens's agreement from the ego alone and from the full residual is worth, on the same steps.

    agrees: rows (index, site, agrees) of a lens (`logit_lens` or `held_out_agreement`; the "ego" and
    "full" sites are read, on the rows both have); final_action and episode: [N] per index. The
    majority baseline always picks the most frequent final action of those steps (`majority_action`):
    its agreement is that action's share. Rows (quantity, value, ci_low, ci_high, n_steps, n_episodes)
    for `LENS_CONTROLS`: majority_rate, and the paired differences ego − majority, full − ego and
    full − majority of the per-step agreements, each with a 95% bootstrap interval over episodes
    (`stats.cluster_bootstrap_ci`: steps of one episode are drawn together).
    """
    sites = agrees[agrees["site"].isin([EGO, FULL])]
    table = sites.pivot_table(index="index", columns="site", values="agrees", aggfunc="first").dropna()
    index = table.index.to_numpy(dtype=np.int64)
    final = np.asarray(final_action)[index]
    majority = (final == majority_action(final)).astype(np.float64)
    ego, full = table[EGO].to_numpy(dtype=np.float64), table[FULL].to_numpy(dtype=np.float64)
    clusters = np.asarray(episode)[index]
    values = {"majority_rate": majority, "ego_minus_majority": ego - majority, "full_minus_ego": full - ego,
              "full_minus_majority": full - majority}
    rows = []
    for quantity in LENS_CONTROLS:
        value, low, high = cluster_bootstrap_ci(values[quantity], clusters, resamples, seed)
        rows.append({"quantity": quantity, "value": value, "ci_low": low, "ci_high": high,
                     "n_steps": len(index), "n_episodes": len(np.unique(clusters))})
    return pd.DataFrame(rows)
