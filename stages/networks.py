"""What a stage that runs a network sets up: determinism, and the trained and untrained networks."""

from __future__ import annotations

import torch

from egolens import checkpoint
from egolens.config import Params
from egolens.model import EgoAttentionNetwork
from stages import MODELS, NETWORKS


def deterministic(seed: int) -> None:
    """Seed torch, allow only deterministic kernels and use one thread (a result must not depend
    on how a reduction is split over threads): same params and seed => same bytes."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def load_net(params: Params, seed: int, label: str) -> EgoAttentionNetwork:
    """The `label` network ("trained" or "untrained") of agent seed `seed`, in eval mode."""
    net = EgoAttentionNetwork.from_config(params.agent, len(params.env.features))
    checkpoint.load_network(MODELS / f"seed{seed}" / NETWORKS[label], net)
    return net.eval()
