"""python -m presets tiny [--dir DIR] | python -m presets <name> [dvc exp run args]
| python -m presets collect GIT_REF ... (one study from the slices of seeds other machines ran)
| python -m presets remote [shared PATH | s3 URL [--endpoint-url URL]] [--local] (the DVC remote)
| python -m presets keep NAME [--ref REF] [--force] (results/NAME/: REF's aggregate, kept for the report)"""

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

from egolens import checkpoint, kept, remotes, sharing
from egolens.recipes import recipe_text
from presets import ROOT, apply, overrides, set_args

COPIED = ("egolens", "stages", "presets", "sweeps", "dvc.yaml", ".gitignore", ".dvcignore", "results/paper",
          "results/faithful")
SHIPPED_DVC_CONFIG = ROOT / ".dvc" / "config"
"""Copied over `dvc init`'s (the project's DVC settings: no analytics)."""


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
    shutil.copy(SHIPPED_DVC_CONFIG, dest / ".dvc" / "config")
    return dest


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def _tracked(ref: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{ref}:{path}"], capture_output=True).returncode == 0


def collect(refs: list[str]) -> None:
    """Take into ./dvc.lock the stages that the git refs (other machines' slice branches) ran under
    this study's params and code, and check out their git-tracked outputs; `dvc pull` then fetches
    the cached ones and `dvc repro` runs only what no slice ran (aggregate, plots, report)."""
    params = {"params.yaml": yaml.safe_load(Path("params.yaml").read_text())}
    head = set(_git("ls-files").splitlines())

    def md5_of(path: str) -> str | None:
        return sharing.file_md5(Path(path)) if path in head and Path(path).is_file() else None

    lock_path = Path("dvc.lock")
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {"schema": "2.0", "stages": {}}
    stages = lock.get("stages") or {}
    taken = {}
    for ref in refs:
        theirs = yaml.safe_load(_git("show", f"{ref}:dvc.lock"))
        try:
            entries = sharing.take_entries(theirs, params, md5_of, ref)
            stages = sharing.merge_entries(stages, entries, ref)
        except ValueError as error:
            raise SystemExit(f"collect: {error}") from None
        taken[ref] = entries
    for ref, entries in taken.items():
        paths = sharing.output_paths(entries)
        ignores = {str(Path(p).parent / ".gitignore") for p in paths}
        tracked = [p for p in [*paths, *sorted(ignores)] if _tracked(ref, p)]
        if tracked:
            _git("checkout", ref, "--", *tracked)
        print(f"{ref}: {len(entries)} stages ({', '.join(entries)})")
    lock["stages"] = stages
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))


def _dvc() -> str:
    """The dvc next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def remote(args: list[str]) -> None:
    """Without arguments: the default DVC remote, or the one message that says what to configure.
    With a kind and a URL: make it the default remote (`dvc remote add --default`)."""
    parser = argparse.ArgumentParser(prog="python -m presets remote", description=remote.__doc__)
    parser.add_argument("kind", nargs="?", choices=sorted(remotes.KINDS))
    parser.add_argument("url", nargs="?")
    parser.add_argument("--endpoint-url", help="s3: the endpoint of an S3-compatible service that is not AWS")
    parser.add_argument("--local", action="store_true", help="write .dvc/config.local (git-ignored)")
    options = parser.parse_args(args)
    if options.kind is None:
        default = subprocess.run([_dvc(), "remote", "default"], capture_output=True, text=True)
        if default.returncode != 0:
            raise SystemExit(remotes.what_to_configure())
        name = default.stdout.strip()
        listed = subprocess.run([_dvc(), "remote", "list"], capture_output=True, text=True, check=True).stdout
        print(next((line for line in listed.splitlines() if line.split()[:1] == [name]), name))
        return
    if options.url is None:
        parser.error(f"{options.kind}: give the URL, e.g. {remotes.KINDS[options.kind].example}")
    try:
        commands = remotes.configure_commands(options.kind, options.url, options.endpoint_url, options.local)
    except ValueError as error:
        parser.error(str(error))
    for command in commands:
        subprocess.run([_dvc(), *command[1:]], check=True)


def keep(args: list[str]) -> None:
    """Write results/NAME/: the aggregate (headline.json, holds.csv, summary.csv) of git revision REF's
    results/, its recipe.json (from REF's params.yaml) and a README saying where it came from."""
    parser = argparse.ArgumentParser(prog="python -m presets keep", description=keep.__doc__)
    parser.add_argument("name", help="results/NAME/ (its preset too, if presets/NAME.yaml exists)")
    parser.add_argument("--ref", default="HEAD", help="a commit, branch or DVC experiment ref (refs/exps/...)")
    parser.add_argument("--force", action="store_true", help="replace results/NAME/ if it exists")
    options = parser.parse_args(args)
    if not options.name.replace("_", "").replace("-", "").isalnum():
        parser.error(f"{options.name!r}: a kept study's name is letters, digits, '-' and '_' (a folder of results/)")
    folder, ref = Path("results") / options.name, options.ref
    missing = [path for path in (*(f"results/{name}" for name in kept.KEPT_FILES), "params.yaml")
               if not _tracked(ref, path)]
    if missing:
        raise SystemExit(f"keep: {ref} has no {', '.join(missing)} (not a revision with a study's aggregate?)")
    if folder.exists() and not options.force:
        raise SystemExit(f"keep: {folder} exists; pass --force to replace it")
    params = yaml.safe_load(_git("show", f"{ref}:params.yaml"))
    code = _git("log", "-1", "--format=%h", ref, "--", "results/headline.json").strip()
    preset = options.name if (ROOT / "presets" / f"{options.name}.yaml").exists() else None
    try:
        files = kept.code_files(yaml.safe_load(_git("show", f"{ref}:dvc.lock")) if _tracked(ref, "dvc.lock") else {})
    except ValueError as error:
        raise SystemExit(f"keep: {ref}: {error}") from error
    recipe = kept.kept_recipe(options.name, params, code, preset, files or None)
    for name in kept.KEPT_FILES:
        checkpoint.atomic_write_text(folder / name, _git("show", f"{ref}:results/{name}"))
    checkpoint.atomic_write_text(folder / "recipe.json", kept.recipe_json(recipe))
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
    checkpoint.atomic_write_text(folder / "README.md", kept.kept_readme(recipe, ref, commit))
    print(f"{folder}/: {ref}'s aggregate (code {code}), {recipe_text(recipe)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a preset in presets/ (tiny, paper, ...)")
    parser.add_argument("--dir", type=Path, help="tiny: where to build the study (default: a new temp dir)")
    args, dvc_args = parser.parse_known_args()
    if args.name == "collect":
        collect(dvc_args)
        return
    if args.name == "remote":
        remote(dvc_args)
        return
    if args.name == "keep":
        keep(dvc_args)
        return
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
