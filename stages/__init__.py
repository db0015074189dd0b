"""DVC stages: `python -m stages.<name>`; each reads params, calls egolens, writes its outs."""

from __future__ import annotations

import argparse
from pathlib import Path

from egolens.config import Params, ParamsError, load_params

MODELS = Path("models")
RESULTS = Path("results")
DATA = Path("data")
RESUME = Path(".resume")


def seed_args(description: str) -> tuple[Params, int]:
    """Parse `--seed N [--params FILE]`, validate params before any work; exit 2 on bad params."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
    except ParamsError as err:
        parser.exit(2, f"error: {err}\n")
    if args.seed not in params.seeds:
        parser.exit(2, f"error: --seed {args.seed} is not in params seeds {params.seeds}\n")
    return params, args.seed
