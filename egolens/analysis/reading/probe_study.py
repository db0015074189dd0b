"""The probes stage's work: every (site, target) probe of the trained network beside its three
controls, the table, the summary and the choice of a steering direction.

A recording is a rollout's arrays (`egolens.rollout.rollout_arrays`: obs [N, E, F], episode,
step [N] and every activation by hook name) with its probe targets (`egolens.rollout.probe_arrays`:
the per-vehicle table, one row per (step, present other vehicle) in `vehicle_rows` order, and the
per-step table, one row per step). The trained and untrained networks are recorded on the same
env seeds, so their episode ids name the same episodes and one held-out set serves both.

Controls of each probe (`probes.score_table`): the control task (labels by identity: a vehicle
within its episode for per-vehicle targets, the step number for per-step ones), the raw
observation (scored once per target, shared by every site) and the untrained network at the same
site (from its own rollout). No file I/O.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from egolens.analysis.reading.probe_targets import TARGETS
from egolens.analysis.reading.probes import (
    BASELINE,
    RAW,
    InputScores,
    ProbeData,
    ProbeFit,
    episode_draws,
    fit_held_out,
    held_out_episodes,
    input_scores,
    score_table,
    site_features,
    site_level,
)
from egolens.probes_config import ProbesConfig
from egolens.sites import json_key

PRIMARY = {"binary": "auc", "categorical": "balanced_accuracy", "continuous": "r2"}
"""The score a target's probes are compared and summarised by."""
VEHICLE_SPAN = 100_000
"""Identities of per-vehicle rows are episode · VEHICLE_SPAN + vehicle id (ids restart every episode)."""


@dataclass(frozen=True)
class Recording:
    """One network's rollout: arrays (obs, episode, step and activations by name), vehicles (the
    per-vehicle target table) and steps (the per-step target table)."""

    arrays: Mapping[str, np.ndarray]
    vehicles: pd.DataFrame
    steps: pd.DataFrame


def probe_data(recording: Recording, site: str, target: str) -> ProbeData:
    """The probe input of `target` at `site` (or `probes.RAW`) of a recording: features [R, U] and
    the target, episode and control-task identity of each row [R]."""
    level = TARGETS[target].level
    table = recording.vehicles if level == "vehicle" else recording.steps
    episode = table["episode"].to_numpy()
    if level == "vehicle":
        identity = episode.astype(np.int64) * VEHICLE_SPAN + table["vehicle_id"].to_numpy().astype(np.int64)
    else:
        identity = table["step"].to_numpy()
    return ProbeData(site_features(recording.arrays, site, level), table[target].to_numpy(dtype=np.float64),
                     episode, identity)


def target_sites(target: str, sites: list[str]) -> list[str]:
    """The sites of `sites` with one row per the target's unit (per vehicle or per step), in order."""
    return [s for s in sites if site_level(s) == TARGETS[target].level]


_SHARED: dict[str, object] = {}
"""What `_scored` reads in a worker process: set before the pool forks, so the recordings are not
pickled for every job."""


def _scored(job: tuple[str, str, str]) -> InputScores:
    """One probe and its control task (`probes.input_scores`): job = (target, "trained" or
    "untrained", site or `probes.RAW`), on the held-out episodes and draws in `_SHARED`."""
    target, label, site = job
    cfg, seed = _SHARED["cfg"], _SHARED["seed"]
    kind = TARGETS[target].kind
    penalties = cfg.ridge_alpha if kind == "continuous" else cfg.logistic_c
    return input_scores(probe_data(_SHARED[label], site, target), kind, _SHARED["test"], _SHARED["draws"],
                        seed=seed, folds=cfg.folds, penalties=penalties)


def probe_study(trained: Recording, untrained: Recording, cfg: ProbesConfig, seed: int,
                progress: Callable[[str], None] = lambda _: None) -> pd.DataFrame:
    """Every probe of `cfg.targets` at each of its `cfg.sites`, with its controls: one row per
    (target, site, input, task, metric) of `probes.score_table` (input "site" the trained network,
    "obs" the raw observation, "untrained" the untrained network at the site) and the target's kind
    and level. Held-out episodes: `probes.held_out_episodes(trained episodes, cfg.held_out, seed)`;
    interval draws `episode_draws(..., cfg.bootstrap_resamples, seed)`, shared by every probe. The
    probes are fitted on `cfg.processes` worker processes (forked; each probe is independent and
    deterministic, so the table does not depend on their number)."""
    test = held_out_episodes(np.asarray(trained.arrays["episode"]), cfg.held_out, seed)
    draws = episode_draws(test, cfg.bootstrap_resamples, seed)
    jobs = []
    for target in cfg.targets:
        jobs.append((target, "trained", RAW))
        for site in target_sites(target, cfg.sites):
            jobs += [(target, "trained", site), (target, "untrained", site)]
    _SHARED.update(cfg=cfg, seed=seed, test=test, draws=draws, trained=trained, untrained=untrained)
    try:
        if cfg.processes > 1:
            with multiprocessing.get_context("fork").Pool(cfg.processes) as pool:
                results = {}
                for job, result in zip(jobs, pool.imap(_scored, jobs)):
                    results[job] = result
                    progress(f"{job[0]} at {job[2]} ({job[1]})")
        else:
            results = {job: _scored(job) for job in jobs}
    finally:
        _SHARED.clear()
    tables = []
    for target in cfg.targets:
        kind = TARGETS[target].kind
        for site in target_sites(target, cfg.sites):
            inputs = {"site": results[(target, "trained", site)], RAW: results[(target, "trained", RAW)],
                      "untrained": results[(target, "untrained", site)]}
            tables.append(score_table(inputs, kind).assign(target=target, site=site, kind=kind,
                                                           level=TARGETS[target].level))
    columns = ["target", "site", "kind", "level", "input", "task", "metric", "value", "ci_low", "ci_high",
               "n_train", "n_test", "penalty", "note"]
    return pd.concat(tables, ignore_index=True)[columns]


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a `probe_study` table on each target's `PRIMARY` metric."""
    return table[table["metric"] == table["kind"].map(PRIMARY)]


def _row(table: pd.DataFrame, input_: str, task: str) -> pd.Series:
    return table[(table["input"] == input_) & (table["task"] == task)].iloc[0]


def site_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, site) on the primary metric: the trained probe's score with its CI,
    the control task's, selectivity, the raw observation's and the untrained network's scores, the
    paired differences (site − obs, site − untrained) with their CIs, the constant predictor's
    score (`probes.BASELINE`: majority class or training mean) and probe − baseline with its CI,
    above_controls: every one of selectivity, site − obs and site − untrained has a CI above 0, and
    controls_checked: all three CIs exist (a probe that could not be fitted, or a single held-out
    episode, leaves them NaN)."""
    rows = []
    for (target, site), group in primary_rows(table).groupby(["target", "site"], sort=False):
        probe, control = _row(group, "site", "probe"), _row(group, "site", "control")
        selectivity = _row(group, "site", "selectivity")
        minus = {name: _row(group, name, "site_minus_input") for name in (RAW, "untrained")}
        rows.append({
            "target": target, "site": site, "metric": probe["metric"],
            "score": probe["value"], "score_ci_low": probe["ci_low"], "score_ci_high": probe["ci_high"],
            "control_task": control["value"], "selectivity": selectivity["value"],
            "selectivity_ci_low": selectivity["ci_low"],
            "obs": _row(group, RAW, "probe")["value"], "untrained": _row(group, "untrained", "probe")["value"],
            "minus_obs": minus[RAW]["value"], "minus_obs_ci_low": minus[RAW]["ci_low"],
            "minus_untrained": minus["untrained"]["value"], "minus_untrained_ci_low": minus["untrained"]["ci_low"],
            "baseline": _row(group, "site", BASELINE)["value"],
            "minus_baseline": _row(group, "site", "probe_minus_baseline")["value"],
            "minus_baseline_ci_low": _row(group, "site", "probe_minus_baseline")["ci_low"],
            "above_controls": bool(selectivity["ci_low"] > 0 and minus[RAW]["ci_low"] > 0
                                   and minus["untrained"]["ci_low"] > 0),
            "controls_checked": bool(np.isfinite([selectivity["ci_low"], minus[RAW]["ci_low"],
                                                  minus["untrained"]["ci_low"]]).all()),
        })
    return pd.DataFrame(rows)


def before_output_mlp(site: str) -> bool:
    """Whether a site's activation is computed before the output MLP (not output_layer.*)."""
    return not site.startswith("output_layer.")


def _some_site(group: pd.DataFrame, ci_low: str) -> bool | None:
    """Whether some site's `ci_low` column lies above 0; None when no site has a finite one (no
    probe could be fitted: the question cannot be answered, which is not a no)."""
    lows = group[ci_low].to_numpy(dtype=np.float64)
    return bool(np.any(lows > 0)) if np.isfinite(lows).any() else None


def summarize(table: pd.DataFrame, held_out: int, episodes: int) -> dict:
    """summary.json of the probes stage: per target its metric, the site with the highest
    selectivity and there the score, selectivity, the differences from the raw observation and
    the untrained network, and the constant predictor's score (`probes.BASELINE`) and the
    probe's margin over it; per target whether some site reads it above all three controls (and
    how many sites do); whether some site beats the raw observation alone (above_obs: paired CI
    of site − obs above 0) and whether some site before the output MLP beats the constant
    predictor (above_baseline_before_output: paired CI of probe − baseline above 0), each None
    when no site of the target has the intervals it needs (no probe could be fitted, or a single
    held-out episode); and the held-out / recorded episode counts."""
    verdicts = site_verdicts(table)
    targets = {}
    for target, group in verdicts.groupby("target", sort=False):
        finite = group[np.isfinite(group["selectivity"])]
        best = finite.loc[finite["selectivity"].idxmax()] if len(finite) else group.iloc[0]
        before = group[[before_output_mlp(str(site)) for site in group["site"]]]
        targets[target] = {
            "metric": best["metric"], "best_site": json_key(str(best["site"])), "score": float(best["score"]),
            "selectivity": float(best["selectivity"]), "minus_obs": float(best["minus_obs"]),
            "minus_untrained": float(best["minus_untrained"]), "obs": float(best["obs"]),
            "untrained": float(best["untrained"]),
            "baseline": float(best["baseline"]), "minus_baseline": float(best["minus_baseline"]),
            "sites_above_controls": int(group["above_controls"].sum()),
            "above_controls": bool(group["above_controls"].any()) if group["controls_checked"].any() else None,
            "above_obs": _some_site(group, "minus_obs_ci_low"),
            "above_baseline_before_output": _some_site(before, "minus_baseline_ci_low") if len(before) else None,
        }
    return {"held_out_episodes": held_out, "episodes": episodes, "targets": targets}


def steering_choice(verdicts: pd.DataFrame, site: str, safety_targets: list[str]) -> str:
    """The safety target whose probe at `site` is most selective (`site_verdicts`' selectivity);
    raises if none of `safety_targets` was probed there with a finite score."""
    rows = verdicts[(verdicts["site"] == site) & verdicts["target"].isin(safety_targets)]
    rows = rows[np.isfinite(rows["selectivity"])]
    if rows.empty:
        raise ValueError(f"no safety target of {safety_targets} has a fitted probe at {site}")
    return str(rows.loc[rows["selectivity"].idxmax(), "target"])


def fitted_probe(recording: Recording, site: str, target: str, cfg: ProbesConfig, seed: int) -> ProbeFit:
    """The trained probe of `target` at `site` exactly as `probe_study` fits it (training episodes
    only, the same penalty grid and folds): its weights are a steering direction."""
    kind = TARGETS[target].kind
    test = held_out_episodes(np.asarray(recording.arrays["episode"]), cfg.held_out, seed)
    penalties = cfg.ridge_alpha if kind == "continuous" else cfg.logistic_c
    fit, _ = fit_held_out(probe_data(recording, site, target), kind, test, folds=cfg.folds, penalties=penalties)
    return fit
