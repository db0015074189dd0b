"""Shared by the intervention tests: the tiny 2-head net's sizes and two hand computations."""

from __future__ import annotations

import torch

from egolens.hooks import run_with_hooks
from egolens.sites import RESID

D, H = 8, 2
d = D // H


def q_from_resid(net, obs, resid):
    """Q-values with the output-MLP input replaced by `resid` (the rest of the forward is the net's own)."""
    with torch.no_grad():
        return run_with_hooks(net, obs, {RESID: lambda _: resid})


def w_o(net, h):
    """Head h's slice of the attention combine: [D, d]."""
    return net.attention_layer.attention_combine.weight[:, h * d:(h + 1) * d].detach()
