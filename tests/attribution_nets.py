"""Hand-made networks and observations whose attributions are known in closed form (shared by the attribution tests)."""

from __future__ import annotations

import torch
from torch import nn

from egolens.vocabulary import REFERENCE_FEATURES
from tests.conftest import random_obs

VX = REFERENCE_FEATURES.index("vx")


class LinearQ(nn.Module):
    """Q(s) = Σ_ef W[a, e, f]·s[e, f] + b[a]; ignores the mask."""

    def __init__(self, entities: int = 15, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, entities, 7, generator=g))
        self.bias = nn.Parameter(torch.randn(3, generator=g))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bef,aef->ba", obs, self.weight) + self.bias


class PlantedVx3(nn.Module):
    """Q depends only on vehicle 3's vx: Q = w·tanh(2·vx₃) + b (SLOWER rises with vx₃)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor([1.0, 0.2, -0.5]))
        self.register_buffer("b", torch.tensor([0.0, 0.1, 0.05]))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(2 * obs[:, 3, VX])[:, None] * self.w + self.b


def planted_obs(batch: int = 6, seed: int = 0) -> torch.Tensor:
    """random_obs with vehicle 3 present and driving with vx in [0.3, 0.9] (so SLOWER is greedy)."""
    obs = random_obs(batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    obs[:, 3] = torch.rand(batch, 7, generator=g) * 2 - 1
    obs[:, 3, 0] = 1.0
    obs[:, 3, VX] = 0.3 + 0.6 * torch.rand(batch, generator=g)
    return obs
