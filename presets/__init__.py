"""Named params presets: dotted-key overrides of params.yaml (presets/<name>.yaml).

    python -m presets tiny [--dir DIR]   # the whole pipeline on the tiny preset, in a fresh copy
    python -m presets paper [DVC ARGS]   # dvc exp run -n paper -S ... (e.g. --queue, --temp)
    python -m presets collect REF ...    # one study from other machines' slices of seeds (git refs)
    python -m presets keep NAME [--ref REF]  # results/NAME/: a revision's aggregate kept for the report
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def overrides(name: str) -> dict[str, Any]:
    """The dotted-key overrides of preset `name` (presets/<name>.yaml)."""
    path = ROOT / "presets" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"no preset {name!r}; presets: {', '.join(known)}")
    return yaml.safe_load(path.read_text())


def apply(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` with each dotted key of `changes` set (`train.episodes: 8`)."""
    out = copy.deepcopy(params)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            if key not in node:
                raise KeyError(f"{dotted}: params.yaml has no section {key!r}")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"{dotted}: params.yaml has no key {leaf!r}")
        node[leaf] = value
    return out


def set_args(changes: dict[str, Any]) -> list[str]:
    """`dvc exp run -S` arguments of the overrides (YAML flow values: `seeds=[0, 1, 2]`)."""
    def flow(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    return [arg for key, value in changes.items() for arg in ("-S", f"{key}={flow(value)}")]
