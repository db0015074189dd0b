"""Behaviour cloning: the reference network trained by supervised learning on the planner's actions.

The representation bound of the study: what this network and observation can express when its
targets are good (the clairvoyant planner's actions, `egolens.demonstrations`). Its three outputs
are read as logits of the actions and fitted by cross-entropy with Adam over a fixed number of
epochs. A diagnostic, never the study's agent.

Deterministic for a given seed: the network's initialisation is the DQN's for that seed (the same
`torch.manual_seed(seed)` before `EgoAttentionNetwork.from_config`), the batches are drawn from
`numpy.random.default_rng(seed)`; the caller runs torch single-threaded with deterministic
algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egolens.config import AgentConfig, ImitationConfig
from egolens.model import EgoAttentionNetwork
from egolens.progress import Progress, no_progress

NETWORK_KEYS = ("heads", "feature_size", "embedding_layers", "output_layers")
"""The keys of `agent` that shape the network (behaviour cloning reads no other)."""


def imitation_network(cfg: AgentConfig, in_features: int, seed: int, n_actions: int = 3) -> EgoAttentionNetwork:
    """The reference network initialised as the DQN of agent seed `seed` initialises its own."""
    torch.manual_seed(seed)
    return EgoAttentionNetwork.from_config(cfg, in_features, n_actions)


@dataclass
class CloningRun:
    """What `clone_policy` did: the mean cross-entropy of each epoch and the Adam steps taken."""

    epoch_loss: list[float]
    steps: int


def clone_policy(net: nn.Module, obs: np.ndarray, actions: np.ndarray, cfg: ImitationConfig, seed: int,
                 progress: Progress = no_progress) -> tuple[CloningRun, torch.optim.Optimizer]:
    """Fit `net` (in place) so that argmax of its outputs on obs [N, E, F] is actions [N] (int).

    Each of `cfg.epochs` epochs visits every step once in an order drawn from
    `numpy.random.default_rng(seed)`, in batches of `cfg.batch_size` (the last one smaller); one
    Adam step (`cfg.lr`, `cfg.weight_decay`) per batch on the batch's mean cross-entropy of
    softmax(net(obs)) against the actions. Returns the run and its optimizer (for the checkpoint).
    """
    obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    target = torch.as_tensor(np.asarray(actions, dtype=np.int64))
    if obs_t.ndim != 3 or len(obs_t) != len(target) or len(target) == 0:
        raise ValueError(f"need obs [N, E, F] and actions [N] with N > 0, got {tuple(obs_t.shape)} and "
                         f"{tuple(target.shape)}")
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    losses, steps = [], 0
    for _ in progress(range(cfg.epochs), "behaviour cloning"):
        order = torch.as_tensor(rng.permutation(len(target)))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = F.cross_entropy(net(obs_t[idx]), target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(idx)
            steps += 1
        losses.append(total / len(target))
    net.eval()
    return CloningRun(losses, steps), optimizer


def action_accuracy(net: nn.Module, obs: np.ndarray, actions: np.ndarray, n_actions: int = 3
                    ) -> dict[str, float]:
    """How often argmax net(obs) equals the action: overall ("all") and per action taken
    ("action0", ...; NaN for an action never taken). obs [N, E, F], actions [N]."""
    with torch.no_grad():
        chosen = net(torch.as_tensor(np.asarray(obs, dtype=np.float32))).argmax(dim=1).numpy()
    actions = np.asarray(actions)
    hits = chosen == actions
    out = {"all": float(hits.mean())}
    for a in range(n_actions):
        taken = actions == a
        out[f"action{a}"] = float(hits[taken].mean()) if taken.any() else float("nan")
    return out
