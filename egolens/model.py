"""The ego-attention Q-network of rl-agents, with named hook points.

Module names and state_dict keys are rl-agents' (`ego_embedding.layers.0.weight`, ...), so its
checkpoints load. Hook points are parameter-free identity modules named `hook_*`: a forward
hook on one of them reads the activation, and a hook that returns a tensor replaces it.
They add no state_dict keys and do not change outputs.

Shapes: B batch, E entities (15, row 0 the ego), F features (7), D feature_size (64),
H heads, d = D / H.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from egolens.config import AgentConfig
from egolens.vocabulary import absent_mask

MASKED_SCORE = -1e9


class HookPoint(nn.Identity):
    """A named place in the forward pass; identity unless a forward hook replaces its output."""


class MultiLayerPerceptron(nn.Module):
    """Linear layers with ReLU after each hidden layer; `predict` (no activation) if out_size.

    Without `out_size` (the embeddings), every layer is followed by a ReLU.
    `hook_post.i` is the post-ReLU output of `layers.i` (the neurons).
    """

    def __init__(self, in_size: int, sizes: list[int], out_size: int | None = None) -> None:
        super().__init__()
        dims = [in_size, *sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.hook_post = nn.ModuleList(HookPoint() for _ in sizes)
        self.predict = nn.Linear(dims[-1], out_size) if out_size is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_size] -> [..., sizes[-1]] or [..., out_size]."""
        for linear, post in zip(self.layers, self.hook_post):
            x = post(torch.relu(linear(x)))
        if self.predict is not None:
            x = self.predict(x)
        return x


class EgoAttention(nn.Module):
    """The ego query attends over all entities (ego included); multi-head, no biases.

    Returns (combine(heads) + ego) / 2, as rl-agents does.
    """

    def __init__(self, feature_size: int = 64, heads: int = 2) -> None:
        super().__init__()
        if feature_size % heads:
            raise ValueError(f"heads = {heads} must divide feature_size = {feature_size}")
        self.feature_size = feature_size
        self.heads = heads
        self.features_per_head = feature_size // heads
        # Creation order fixes the default-init RNG draws; keep it.
        self.value_all = nn.Linear(feature_size, feature_size, bias=False)
        self.key_all = nn.Linear(feature_size, feature_size, bias=False)
        self.query_ego = nn.Linear(feature_size, feature_size, bias=False)
        self.attention_combine = nn.Linear(feature_size, feature_size, bias=False)
        self.hook_q = HookPoint()         # [B, H, 1, d]
        self.hook_k = HookPoint()         # [B, H, E, d]
        self.hook_v = HookPoint()         # [B, H, E, d]
        self.hook_scores = HookPoint()    # [B, H, 1, E]  q·kᵀ/√d, before masking
        self.hook_pattern = HookPoint()   # [B, H, 1, E]  softmax over entities, absent ones 0
        self.hook_z = HookPoint()         # [B, H, 1, d]  pattern-weighted values per head
        self.hook_combined = HookPoint()  # [B, D]        attention_combine(concat_h z_h)
        self.hook_resid = HookPoint()     # [B, D]        (combined + ego) / 2, the layer output

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, E, D] -> [B, H, E, d]; head h owns units h·d … (h+1)·d−1."""
        batch, entities, _ = x.shape
        return x.view(batch, entities, self.heads, self.features_per_head).permute(0, 2, 1, 3)

    def forward(self, ego: torch.Tensor, others: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ego: [B, 1, D], others: [B, E-1, D], mask: [B, E] bool, True = absent.

        Returns (output [B, D], attention pattern [B, H, 1, E]).
        """
        batch = ego.shape[0]
        entities = torch.cat((ego, others), dim=1)                       # [B, E, D]
        q = self.hook_q(self._split_heads(self.query_ego(ego)))          # [B, H, 1, d]
        k = self.hook_k(self._split_heads(self.key_all(entities)))       # [B, H, E, d]
        v = self.hook_v(self._split_heads(self.value_all(entities)))     # [B, H, E, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.features_per_head)
        scores = self.hook_scores(scores)                                # [B, H, 1, E]
        scores = scores.masked_fill(mask[:, None, None, :], MASKED_SCORE)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))       # [B, H, 1, E]
        z = self.hook_z(pattern @ v)                                     # [B, H, 1, d]
        concat = z.permute(0, 2, 1, 3).reshape(batch, self.feature_size)  # [B, D]
        combined = self.hook_combined(self.attention_combine(concat))    # [B, D]
        out = self.hook_resid((combined + ego.squeeze(1)) / 2)           # [B, D]
        return out, pattern


class EgoAttentionNetwork(nn.Module):
    """Q(s, ·) for s: [B, E, F]; rl-agents' `EgoAttentionNetwork` (ego_attention(_2h).json)."""

    def __init__(self, in_features: int = 7, feature_size: int = 64, heads: int = 2,
                 embedding_layers: list[int] | None = None, output_layers: list[int] | None = None,
                 n_actions: int = 3) -> None:
        super().__init__()
        embedding_layers = embedding_layers or [64, 64]
        output_layers = output_layers or [64, 64]
        if embedding_layers[-1] != feature_size:
            raise ValueError("the embeddings must end with feature_size units")
        self.ego_embedding = MultiLayerPerceptron(in_features, embedding_layers)
        self.others_embedding = MultiLayerPerceptron(in_features, embedding_layers)
        self.attention_layer = EgoAttention(feature_size, heads)
        self.output_layer = MultiLayerPerceptron(feature_size, output_layers, n_actions)

    @classmethod
    def from_config(cls, cfg: AgentConfig, in_features: int = 7, n_actions: int = 3) -> EgoAttentionNetwork:
        return cls(in_features, cfg.feature_size, cfg.heads, list(cfg.embedding_layers),
                   list(cfg.output_layers), n_actions)

    @staticmethod
    def absent_mask(obs: torch.Tensor) -> torch.Tensor:
        """obs: [B, E, F] -> [B, E] bool, True where no vehicle is present; the ego is never masked."""
        return absent_mask(obs)

    def forward_attention(self, obs: torch.Tensor,
                          mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """obs: [B, E, F] -> (output-MLP input [B, D], attention [B, H, 1, E])."""
        if mask is None:
            mask = self.absent_mask(obs)
        else:
            mask = mask.clone()
            mask[:, 0] = False
        ego = self.ego_embedding(obs[:, :1])          # [B, 1, D]
        others = self.others_embedding(obs[:, 1:])    # [B, E-1, D]
        return self.attention_layer(ego, others, mask)

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """obs: [B, E, F], mask: optional [B, E] bool (True = absent) -> Q-values [B, n_actions].

        Pass `mask` explicitly when `obs` is not a real observation (e.g. an interpolation
        path): a mask recomputed from an interpolated presence would flip part-way.
        """
        hidden, _ = self.forward_attention(obs, mask)
        return self.output_layer(hidden)

    def get_attention_matrix(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """obs: [B, E, F] -> attention of the ego over all entities [B, H, 1, E]."""
        _, pattern = self.forward_attention(obs, mask)
        return pattern
