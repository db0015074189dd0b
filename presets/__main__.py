"""python -m presets tiny [--dir DIR] | python -m presets <name> [dvc exp run args]"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from presets import ROOT, apply, overrides, set_args

COPIED = ("egolens", "stages", "dvc.yaml", ".gitignore", ".dvcignore", "results/paper")


def study_copy(dest: Path, params: dict) -> Path:
    """The repository's code and pipeline in a fresh git + DVC repo at `dest`, with `params`."""
    dest.mkdir(parents=True, exist_ok=False)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    for cmd in (["git", "init", "-q"],
                ["git", "-c", "user.name=egolens", "-c", "user.email=egolens@localhost", "commit", "-q",
                 "--allow-empty", "-m", "init"],
                [str(bin_dir / "dvc"), "init", "-q"],
                [str(bin_dir / "dvc"), "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a preset in presets/ (tiny, paper, ...)")
    parser.add_argument("--dir", type=Path, help="tiny: where to build the study (default: a new temp dir)")
    args, dvc_args = parser.parse_known_args()
    changes = overrides(args.name)
    if args.name != "tiny":
        subprocess.run(["dvc", "exp", "run", "-n", args.name, *set_args(changes), *dvc_args], check=True)
        return
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    dest = args.dir or Path(tempfile.mkdtemp(prefix="egolens-tiny-")) / "study"
    study_copy(dest, apply(base, changes))
    start = time.monotonic()
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=dest, check=True,
                   env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    print(f"\ntiny study done in {time.monotonic() - start:.0f} s: {dest}/results/report.md")


if __name__ == "__main__":
    main()
