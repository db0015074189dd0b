"""One study from several machines: merging the dvc.lock entries that each machine's slice of seeds recorded.

A machine runs the per-seed stages of its seeds (`dvc repro --glob '*@3'`) and commits their lock
entries and git-tracked outputs on a branch; the collector takes those entries into its own dvc.lock
(the functions here), checks out the git-tracked outputs, `dvc pull`s the cached ones and runs
`dvc repro`, which then finds every per-seed stage up to date. A lock entry records the params
values and dependency hashes it ran with, so an entry made under other params (another recipe)
or other code is refused by name instead of being mixed into the study.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MISSING = object()
"""A key the workspace's params do not have."""


def is_per_seed(stage: str) -> bool:
    """A stage of a `matrix` over seeds (`train@3`): one machine's work, not the study's."""
    return "@" in stage


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """params["train"]["episodes"] for "train.episodes"; MISSING if any level is absent."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return MISSING
        node = node[key]
    return node


def differing_keys(recorded: Mapping[str, Any], params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value in `recorded` (a lock entry's params of one file, keys possibly dotted
    like `train.episodes` or whole sections like `env`) is not the workspace's value, leaf by leaf."""
    out = []
    for key, value in recorded.items():
        dotted = f"{prefix}{key}"
        mine = lookup(params, dotted)
        if isinstance(value, Mapping) and isinstance(mine, Mapping):
            out += differing_keys(value, params, prefix=f"{dotted}.")
            out += [f"{dotted}.{k}" for k in mine if k not in value]
        elif mine is MISSING or mine != value:
            out.append(dotted)
    return sorted(out)


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes (the hash DVC 3 records for a file dependency)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def entry_mismatches(entry: Mapping[str, Any], params: Mapping[str, Mapping[str, Any]],
                     md5_of: Callable[[str], str | None]) -> list[str]:
    """Why a lock entry was not made by this study: each params key that differs (`agent.gamma`)
    and each dependency the collector has whose hash differs (`code stages/train.py`).

    params: file name -> that file's params; md5_of: a workspace path -> its md5, None for a path
    the collector does not have (an output another stage of the slice makes).
    """
    out = []
    for file, recorded in entry.get("params", {}).items():
        out += differing_keys(recorded, params.get(file, {}))
    for dep in entry.get("deps", []):
        mine = md5_of(dep["path"])
        if mine is not None and mine != dep.get("md5"):
            out.append(f"code {dep['path']}")
    return out


def take_entries(lock: Mapping[str, Any], params: Mapping[str, Mapping[str, Any]],
                 md5_of: Callable[[str], str | None], source: str) -> dict[str, dict]:
    """The entries of another machine's dvc.lock that this study can take: every per-seed stage
    (refused with the differing keys if one was made under other params or code), and each
    study-level stage (validate, reference, ...) made under exactly this study's params and code;
    the others (say an `aggregate` over that machine's seeds only) are left for `dvc repro`."""
    taken, refused = {}, []
    for name, entry in lock.get("stages", {}).items():
        mismatches = entry_mismatches(entry, params, md5_of)
        if not mismatches:
            taken[name] = dict(entry)
        elif is_per_seed(name):
            refused.append(f"{name} ({', '.join(mismatches)})")
    if refused:
        raise ValueError(f"{source} ran under other params or code than this study, so its results are not "
                         f"this study's: {'; '.join(refused)}. Make params.yaml and the code the same as "
                         f"{source}'s, or rerun those stages here.")
    return taken


def merge_entries(stages: Mapping[str, dict], incoming: Mapping[str, dict], source: str) -> dict[str, dict]:
    """`stages` with `incoming` added; a stage both have must be recorded identically."""
    merged = dict(stages)
    for name, entry in incoming.items():
        if name in merged and merged[name] != entry:
            raise ValueError(f"{name}: {source} recorded other outputs than dvc.lock already has")
        merged[name] = entry
    return merged


def output_paths(entries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every output path the entries record, in order."""
    return [out["path"] for entry in entries.values() for out in entry.get("outs", [])]
