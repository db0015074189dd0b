"""Recipe sweeps as DVC experiments: the `-S` overrides of each recipe, and the table of what each
recipe's agents do on the held-out episodes, read from `dvc exp show --json`.

Pure functions: `sweeps/run.py` runs DVC and writes the files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
import yaml

from egolens.evaluation import EPISODE_CLASSES, WAIT, paired_versus, success_by_class
from egolens.names import ARRIVED, DRIVING, DRIVING_METRICS, SUMMARIES


def overrides(common: Mapping[str, Any], recipe: Mapping[str, Any]) -> list[str]:
    """The `dvc exp run -S` arguments of a recipe: the common keys, then the recipe's own."""
    merged = {**common, **recipe}
    return [f"{key}={_yaml_value(value)}" for key, value in merged.items()]


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def experiments(exp_show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(experiment name, its newest rev's data) for every *finished* experiment in `dvc exp show
    --json` output. A queued, running or failed experiment is skipped: its workspace still holds
    the base commit's metrics, which are not its own."""
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            state = (experiment.get("executor") or {}).get("state", "success")
            if state == "success" and revs and revs[0].get("data"):
                yield experiment.get("name") or revs[0].get("name"), {**revs[0]["data"], "rev": revs[0].get("rev")}


def recipe_table(exp_show: list[dict[str, Any]], recipes: Mapping[str, Mapping[str, Any]],
                 common: Mapping[str, Any], seeds: list[int], seed_dir: Callable[[int], str],
                 driving_of: Mapping[str, Callable[[str, int], Mapping[str, Any] | None]] | None = None
                 ) -> pd.DataFrame:
    """One row per (recipe, seed) that finished: recipe, seed, overrides (the exact `-S` list),
    and the held-out success/collision/timeout rates and mean return (with CIs) of its agent.

    seed_dir: seed -> the directory of its results as DVC names it (`results/seeds/seed0`), where
    each seed's `names.DRIVING` (its DVC metric) and evaluate.json (the same with CIs: the metric of
    experiments run before driving.json existed) are. An experiment whose metrics of a seed are
    missing (failed or still running) gives no row. driving_of: recipe -> (rev, seed) -> its
    agent's {rate: {mean, ci_low, ci_high}} for a recipe whose agent is not the DQN's (behaviour
    cloning runs `imitate`, so the evaluate metrics its workspace shows are the base commit's).
    """
    rows = []
    for name, data in experiments(exp_show):
        if name not in recipes:
            continue
        metrics = data.get("metrics") or {}
        for seed in seeds:
            if driving_of and name in driving_of:
                own = driving_of[name](data.get("rev"), seed)
                evaluate = {"trained": own} if own else None
                driving = None
            else:
                evaluate = (metrics.get(f"{seed_dir(seed)}/{SUMMARIES['evaluate']}") or {}).get("data")
                driving = (metrics.get(f"{seed_dir(seed)}/{DRIVING}") or {}).get("data")
            if not evaluate and not driving:
                continue
            row = {"recipe": name, "seed": seed, "rev": data.get("rev"),
                   "overrides": " ".join(f"-S '{o}'" for o in overrides(common, recipes[name]))}
            for rate in DRIVING_METRICS:
                values = evaluate["trained"][rate] if evaluate else {"mean": driving[rate]}
                row[rate] = values["mean"]
                row[f"{rate}_ci_low"] = values.get("ci_low", float("nan"))
                row[f"{rate}_ci_high"] = values.get("ci_high", float("nan"))
            rows.append(row)
    return pd.DataFrame(rows)


def with_episode_classes(table: pd.DataFrame, episodes: Mapping[tuple[str, int], pd.DataFrame],
                         classes: pd.Series | Mapping[str, pd.Series]) -> pd.DataFrame:
    """`recipe_table` plus success_<class> for every episode class (`evaluation.episode_classes`) and
    success_wait (the episodes that are not `go`): how often each (recipe, seed) agent arrives in the
    episodes driving on solves and in those that need waiting for the right gap.

    episodes: (recipe, seed) -> its evaluate_episodes.csv. classes: env_seed -> class, one for every
    recipe, or recipe -> its own (a recipe on another simulation is classified on its own env; without
    the clairvoyant planner there its non-`go` episodes are `wait`, and timing/unsolved stay NaN)."""
    rows = []
    for row in table.to_dict("records"):
        frame = episodes.get((row["recipe"], row["seed"]))
        own = classes if isinstance(classes, pd.Series) else classes.get(row["recipe"])
        rates = dict.fromkeys((*EPISODE_CLASSES, WAIT), float("nan"))
        if frame is not None and own is not None:
            trained = frame[frame["model"] == "trained"]
            rates |= success_by_class(trained, own)
            rates[WAIT] = success_by_class(trained, own.where(own == "go", WAIT), (WAIT,))[WAIT]
        rows.append(row | {f"success_{name}": rate for name, rate in rates.items()})
    return pd.DataFrame(rows)


CLONING_COLUMNS = ("bc_accuracy", "bc_accuracy_slower", "bc_success_on_demonstrations",
                   "bc_collision_on_demonstrations")
"""What a behaviour-cloning rung adds to its rows: how well the network fits the planner's steps (all,
and SLOWER: the waiting) and how it drives, closed loop, on the very episodes it was cloned from."""


def cloning_columns(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """`CLONING_COLUMNS` from a seed's imitation/metrics.json (NaN for what it does not hold)."""
    metrics = metrics or {}
    train = metrics.get("train", {})
    own = metrics.get("driving_on_demonstrations", {})
    values = (train.get("accuracy"), train.get("accuracy_by_action", {}).get("action0"),
              own.get("success_rate", {}).get("mean"), own.get("collision_rate", {}).get("mean"))
    return {name: float("nan") if value is None else float(value) for name, value in zip(CLONING_COLUMNS, values)}


# ------------------------------------------------------------------------------ the diagnosis ladder

OBSERVATION_ONLY = ("features", "observe_intentions")
"""env keys that change what the agent sees but not the simulation: a recipe that changes only these
plays the very episodes of the study's reference policies."""


def env_overrides(common: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's `env.*` overrides as YAML values (`-S` strings parsed as DVC parses them)."""
    merged = {**common, **recipe}
    return {key.removeprefix("env."): yaml.safe_load(_yaml_value(value))
            for key, value in merged.items() if key.startswith("env.")}


def same_episodes(changes: Mapping[str, Any]) -> bool:
    """True when env `changes` leave the simulation as it is (the reference's episodes are the agent's)."""
    return all(key in OBSERVATION_ONLY for key in changes)


def versus_idle(table: pd.DataFrame, episodes: Mapping[tuple[str, int], pd.DataFrame | None],
                idle: Mapping[str, pd.DataFrame], resamples: int) -> pd.DataFrame:
    """`recipe_table` plus, per (recipe, seed), constant IDLE's success on the recipe's own env and
    episodes (`idle_success`) and the agent's paired success difference against it with its 95%
    bootstrap interval over episodes (`success_vs_idle`, `_ci_low`, `_ci_high`; joined on env seed).

    idle: recipe -> constant IDLE's episode table (env_seed, return, outcome) on that recipe's env."""
    rows = []
    for row in table.to_dict("records"):
        frame, reference = episodes.get((row["recipe"], row["seed"])), idle.get(row["recipe"])
        extra = dict.fromkeys(("idle_success", "success_vs_idle", "success_vs_idle_ci_low",
                               "success_vs_idle_ci_high"), float("nan"))
        if frame is not None and reference is not None:
            trained = frame[frame["model"] == "trained"]
            paired = paired_versus(trained, reference, resamples, row["seed"])["success"]
            extra = {"idle_success": float(reference["outcome"].eq(ARRIVED).mean()),
                     "success_vs_idle": paired["diff"], "success_vs_idle_ci_low": paired["ci_low"],
                     "success_vs_idle_ci_high": paired["ci_high"]}
        rows.append(row | extra)
    return pd.DataFrame(rows)
