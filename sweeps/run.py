"""The recipe sweep with DVC's own tools.

    python -m sweeps.run queue [NAME ...]   # dvc exp run --queue -n <recipe> -S ... <target> (all or NAMEs)
    dvc queue start -j 1            # runs them (each trains with both cores)
    python -m sweeps.run collect    # results/sweep/recipes.csv + recipes.png from `dvc exp show --json`

Recipes live in sweeps/recipes.yaml; the reference policies come from results/reference.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from egolens import plots
from egolens.config import EnvConfig, fingerprint, load_params
from egolens.env import make_runner
from egolens.evaluation import episode_classes, episode_outcomes
from egolens.figures import figure_png
from egolens.numbers import EXACT
from egolens.play import play
from egolens.policies import FASTER, IDLE, constant_policy
from egolens.sweep import (
    cloning_columns,
    env_overrides,
    overrides,
    recipe_table,
    same_episodes,
    versus_idle,
    with_episode_classes,
)
from stages import seed_results
from stages.outputs import write_bytes, write_csv

RECIPES = Path("sweeps/recipes.yaml")
OUT = Path("results/sweep")
REFERENCE = Path("results/reference/metrics.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["queue", "collect"])
    parser.add_argument("names", nargs="*", help="recipes to queue (default: every recipe)")
    args = parser.parse_args()
    spec = yaml.safe_load(RECIPES.read_text())
    if args.action == "queue":
        unknown = sorted(set(args.names) - set(spec["recipes"]))
        if unknown:
            raise SystemExit(f"unknown recipe(s) {unknown}; sweeps/recipes.yaml has {sorted(spec['recipes'])}")
        for name, recipe in spec["recipes"].items():
            if args.names and name not in args.names:
                continue
            sets = [arg for o in overrides(spec["common"], recipe) for arg in ("-S", o)]
            target = spec.get("targets", {}).get(name, spec["target"])
            subprocess.run(["dvc", "exp", "run", "--queue", "-n", name, *sets, target], check=True)
        return
    baselines = _experiment_baselines()
    if not baselines:
        raise SystemExit("no experiment yet (no refs/exps/: run or `dvc exp pull` some first)")
    revs = [arg for rev in baselines for arg in ("--rev", rev)]
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json", *revs], check=True, capture_output=True,
                                      text=True).stdout)
    seeds = yaml.safe_load(str(spec["common"]["seeds"]))
    cloned = {name for name, target in (spec.get("targets") or {}).items() if target == "imitate"}
    table = recipe_table(shown, spec["recipes"], spec["common"], seeds, lambda seed: seed_results(seed).as_posix(),
                         dict.fromkeys(cloned, _imitation_driving))
    if table.empty:
        raise SystemExit("no finished recipe yet")
    episodes = {(row.recipe, row.seed): _episodes_at(row.rev, row.seed, row.recipe in cloned)
                for row in table.itertuples(index=False)}
    if cloned:
        fits = [cloning_columns(_imitation_metrics(row.rev, row.seed) if row.recipe in cloned else None)
                for row in table.itertuples(index=False)]
        table = pd.concat([table, pd.DataFrame(fits, index=table.index)], axis=1)
    reference = pd.read_csv(REFERENCE.parent / "episodes.csv")
    changes = {name: env_overrides(spec["common"], spec["recipes"][name]) for name in table["recipe"].unique()}
    # the reference's episodes classify recipes that play them; a recipe on another simulation is
    # classified by the constant-speed policies on its own env (go / wait: no clairvoyant planner there)
    own = {name: (reference if same_episodes(env) else _constant_policies(env)) for name, env in changes.items()}
    table = with_episode_classes(table, episodes, {name: episode_classes(frame) for name, frame in own.items()})
    idle = {name: frame[frame["policy"] == "constant_idle"] for name, frame in own.items()}
    table = versus_idle(table, episodes, idle, resamples=2000)
    if (OUT / "recipes.csv").exists():       # recipes collected before (their experiments may be gone) stay
        kept = pd.read_csv(OUT / "recipes.csv")
        table = pd.concat([kept[~kept["recipe"].isin(table["recipe"])], table], ignore_index=True)
    write_csv(OUT / "recipes.csv", table)
    reference = json.loads(REFERENCE.read_text())
    figure = plots.recipe_sweep(table, reference)
    write_bytes(OUT / "recipes.png", figure_png(figure))
    columns = ["success_rate", "collision_rate", "timeout_rate", "mean_return", "success_go", "success_wait",
               "success_timing", "idle_success", "success_vs_idle"]
    print(table.groupby("recipe")[columns].mean().round(3).to_string())
    for name, frame in own.items():
        print(f"episode classes of {name}'s env:", episode_classes(frame).value_counts().to_dict())


def _constant_policies(changes: dict) -> pd.DataFrame:
    """Constant IDLE's and constant FASTER's held-out episodes (policy, env_seed, return, outcome) on the
    params.yaml env with `changes` (another simulation than the reference's), each computed once per env
    and kept in results/sweep/<idle|faster>/<env fingerprint>.csv."""
    params = load_params()
    env = EnvConfig.model_validate({**params.env.model_dump(), **changes})
    frames = []
    for name, action in (("idle", IDLE), ("faster", FASTER)):
        path = OUT / name / f"{fingerprint(env.model_dump(mode='json'))}.csv"
        if not path.exists():
            with make_runner(env, 2) as runner:
                results = play(constant_policy(action), runner, params.evaluate.env_seeds)
            write_csv(path, episode_outcomes(results), EXACT)
        frames.append(pd.read_csv(path).assign(policy=f"constant_{name}"))
    return pd.concat(frames, ignore_index=True)


def _experiment_baselines() -> list[str]:
    """The commits experiments (local or pulled: refs/exps/<ab>/<cdef…>/<name>) are based on. `dvc exp
    show` on just these instead of `-A`, which reads every commit of the history (an hour under load)."""
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], check=True,
                          capture_output=True, text=True).stdout.split()
    parts = [ref.split("/") for ref in refs]
    return sorted({p[2] + p[3] for p in parts if len(p) == 5 and len(p[2] + p[3]) == 40})


def _at(rev: str, path: str) -> str | None:
    """A file of an experiment's commit (None if absent)."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def _episodes_at(rev: str, seed: int, cloned: bool = False) -> pd.DataFrame | None:
    """An experiment's held-out episodes of one seed: evaluate_episodes.csv, or for behaviour cloning
    imitation/episodes.csv (its agent as the "trained" model)."""
    if cloned:
        text = _at(rev, f"{seed_results(seed).as_posix()}/imitation/episodes.csv")
        return pd.read_csv(io.StringIO(text)).assign(model="trained") if text is not None else None
    text = _at(rev, f"{seed_results(seed).as_posix()}/evaluate_episodes.csv")
    return pd.read_csv(io.StringIO(text)) if text is not None else None


def _imitation_metrics(rev: str, seed: int) -> dict | None:
    """An experiment's imitation/metrics.json of one seed (None if absent)."""
    text = _at(rev, f"{seed_results(seed).as_posix()}/imitation/metrics.json")
    return json.loads(text) if text is not None else None


def _imitation_driving(rev: str, seed: int) -> dict | None:
    """The behaviour-cloned network's held-out rates of one seed (imitation/metrics.json `driving`)."""
    metrics = _imitation_metrics(rev, seed)
    return metrics["driving"] if metrics is not None else None

if __name__ == "__main__":
    main()
