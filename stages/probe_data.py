"""Where the rollout stage puts what the probes read besides the activations, and how the probes
and steering stages read it back (a module of its own: `stages/__init__.py`, which every stage
runs, stays as it was)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages import DATA


def probe_path(seed: int, label: str) -> Path:
    """data/seed<N>/probe_<label>.npz: positions, routes and the probe targets of the `label`
    network's rollout (`egolens.rollout.probe_arrays`)."""
    return DATA / f"seed{seed}" / f"probe_{label}.npz"


def load_probe_targets(seed: int, label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-vehicle and per-step target tables of a rollout (`probe_path`): the `vehicle.<column>`
    and `step.<column>` arrays as two DataFrames, columns in the recorded order."""
    with np.load(probe_path(seed, label)) as npz:
        tables = {level: pd.DataFrame({key.split(".", 1)[1]: npz[key] for key in npz.files
                                       if key.startswith(f"{level}.")}) for level in ("vehicle", "step")}
    return tables["vehicle"], tables["step"]
