"""The study's observation and action vocabulary: one definition of each name and test.

obs: [..., entities, features]; row 0 is the ego vehicle, feature `PRESENCE` (0) says whether a
row holds a vehicle (1) or is padding (0).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ACTIONS = ("SLOWER", "IDLE", "FASTER")
"""intersection-v0's discrete meta-actions, in action-index order."""
REFERENCE_FEATURES = ("presence", "x", "y", "vx", "vy", "cos_h", "sin_h")
"""The reference observation's features, in column order."""
PRESENCE = 0
"""Column of the presence feature."""
PRESENT_AT = 0.5
"""A row holds a vehicle when its presence is at least this."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def present(obs: Array) -> Array:
    """Which rows hold a vehicle: obs [..., E, F] -> bool [..., E] (numpy or torch, as given)."""
    return obs[..., PRESENCE] >= PRESENT_AT


def present_others(obs: Array) -> Array:
    """Which rows hold a vehicle other than the ego: obs [..., E, F] -> bool [..., E], ego False."""
    mask = present(obs)
    mask[..., 0] = False
    return mask


def absent_mask(obs: Array) -> Array:
    """The network's attention mask: obs [..., E, F] -> bool [..., E], True where no vehicle is
    present; the ego is never masked."""
    mask = ~present(obs)
    mask[..., 0] = False
    return mask
