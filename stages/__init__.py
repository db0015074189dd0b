"""DVC stages: `python -m stages.<name>`; each reads params, calls egolens, writes its outs.

This package holds what every stage shares and nothing heavier (paths, argument parsing, reading
a rollout), so that a stage's DVC deps are only the code it uses: `stages.networks` sets up
determinism and loads networks (torch), `stages.outputs` writes CSV / JSON / PNG atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from egolens.config import Params, ParamsError, load_params

MODELS = Path("models")
RESULTS = Path("results")
"""Study-level outputs (summary, figures, report); per-seed ones live under `seed_results(seed)`."""
DATA = Path("data")
RESUME = Path(".resume")
DEMONSTRATIONS = DATA / "demonstrations" / "demonstrations.npz"
"""The planner's recorded steps (the demonstrations stage writes them; imitate and DQfD read them)."""
VALID_MARKER = RESULTS / "params_valid.txt"
"""Written by the `validate` stage; every other stage depends on it (see stages/validate.py)."""
NETWORKS = {"trained": "agent.pt", "untrained": "untrained.pt"}
"""The two networks every analysis compares: label -> checkpoint file in models/seed<N>/."""


def seed_results(seed: int) -> Path:
    """results/seeds/seed<N>: every per-seed table and metric (one directory the aggregate stage can
    depend on whatever the number of seeds: DVC deps cannot be templated from a list)."""
    return RESULTS / "seeds" / f"seed{seed}"


def _parse(parser: argparse.ArgumentParser) -> tuple[Params, argparse.Namespace]:
    """Add `--params FILE`, parse, validate the params before any work; exit 2 on bad params."""
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        return load_params(args.params), args
    except ParamsError as err:
        parser.exit(2, f"error: {err}\n")


def study_args(description: str) -> Params:
    """Parse `[--params FILE]` for a study-level stage (all seeds); exit 2 on bad params."""
    return _parse(argparse.ArgumentParser(description=description))[0]


def seed_args(description: str) -> tuple[Params, int]:
    """Parse `--seed N [--params FILE]`, validate params before any work; exit 2 on bad params."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, required=True)
    params, args = _parse(parser)
    if args.seed not in params.seeds:
        parser.exit(2, f"error: --seed {args.seed} is not in params seeds {params.seeds}\n")
    return params, args.seed


def rollout_path(seed: int, label: str) -> Path:
    """data/seed<N>/rollouts_<label>.npz: the recorded greedy episodes of the `label` network."""
    return DATA / f"seed{seed}" / f"rollouts_{label}.npz"


def load_rollout(seed: int, label: str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a recorded rollout (`rollout_path`), every one or only `keys`."""
    with np.load(rollout_path(seed, label)) as npz:
        return {key: npz[key] for key in (npz.files if keys is None else keys)}
