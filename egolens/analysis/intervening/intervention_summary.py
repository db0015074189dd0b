"""summary.json of the interventions stage from its tables: head and branch effects on the measure
half, no-effect tests with their resolution, neuron sets, vehicle removals, patching and edits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from egolens.analysis.intervening import interventions as iv
from egolens.sites import json_key
from egolens.stats import equivalence_test, paired_bootstrap_ci

if TYPE_CHECKING:
    pass
from egolens.analysis.intervening.closed_loop import ALL, MEASURE, action_shares, diffs, most_affecting_head
from egolens.analysis.intervening.intervention_study import VEHICLE_CONTROLS, Tables


def episode_differences(episodes: pd.DataFrame, treated: str, control: str, metric: str,
                        half: str | None = None) -> np.ndarray:
    """Per-episode differences treated − control of `metric` on the same env seeds ([n], in env
    seed order), from closed_loop_episodes.csv (condition, half, env_seed, metric); half None: both."""
    rows = episodes if half is None else episodes[episodes["half"] == half]

    def of(condition: str) -> pd.Series:
        return rows[rows["condition"] == condition].set_index("env_seed")[metric].sort_index()

    a, b = of(treated), of(control)
    if not a.index.equals(b.index) or a.empty:
        raise ValueError(f"{treated} and {control} were not played on the same env seeds")
    return a.to_numpy(dtype=np.float64) - b.to_numpy(dtype=np.float64)


def resolution(episodes: int, alpha: float = 0.05) -> float:
    """The smallest rate a sample of `episodes` paired episodes can rule out at level `alpha`: with no
    discordant pair seen, the exact one-sided bound on their rate is 1 − alpha^(1/n) (≈ 3/n). A rate
    difference smaller than this cannot be shown absent, whatever the bootstrap says (a sample with
    no discordant pair has a bootstrap interval of width 0)."""
    return 1.0 - alpha ** (1.0 / episodes) if episodes > 0 else math.nan


def no_effect(differences: np.ndarray, margin: float, resamples: int, seed: int) -> dict[str, float]:
    """Whether paired per-episode rate differences [n] (each −1, 0 or 1) show no effect:
    `stats.equivalence_test` (TOST at 5%: the 90% interval inside ±margin) and non_inferior (its lower
    bound above −margin: one-sided, "not lower by more than the margin"), each only when the sample
    can resolve the margin at all (resolved: `resolution` <= margin); the detectable effect at 80%
    power, the resolution and the number of episodes."""
    test = equivalence_test(differences, margin, resamples, seed)
    resolved = resolution(differences.size) <= margin
    return {"diff": test["mean"], "tost_ci_low": test["ci_low"], "tost_ci_high": test["ci_high"], "margin": margin,
            "equivalent": int(bool(test["equivalent"]) and resolved),
            "non_inferior": int(test["ci_low"] > -margin and resolved),
            "detectable_effect": test["detectable_effect"], "resolution": resolution(differences.size),
            "resolved": int(resolved), "episodes": int(differences.size)}


def summarize(tables: Tables, heads: int, neuron_layers: Sequence[str], notebook_size: float, margin: float,
              resamples: int, seed: int) -> dict[str, Any]:
    """summary.json of the interventions stage from its tables.

    heads: the network's heads; neuron_layers: `sites.neuron_layers(net)`; notebook_size: the size
    of the uniform perturbation reported (cfg.notebook_size); margin: the largest closed-loop rate
    difference counted as no effect (cfg.equivalence_margin); resamples, seed: of the paired
    intervals computed here. Sections (closed loop on all episodes unless said):
    - closed_loop_baseline: the unablated agent's success, collision, timeout rates, action shares
      (action_slower, action_idle, action_faster) and episodes;
    - head_ablation.<mode> (zero, mean, resample): the head chosen on the rank half
      (`most_affecting_head`), its success / collision diffs with CIs on the measure half, the same
      diffs on the rank half (in_sample_…: inflated by the choice), its action shares on the
      measure half and its open-loop flip rate;
    - head_no_effect.head<h>.<mode>: `no_effect` of the head's success difference on the measure half;
    - branch_ablation.<mode>: diffs, action shares and open-loop flip rate of the attention branch;
    - neuron_ablation.<layer>: the top set's and the random sets' mean open-loop flip rate,
      |ΔQ| and closed-loop success / collision diffs, and top_minus_random_abs_dq (paired over steps);
    - vehicle_removal.{most_attended,random,nearest,lowest_ttc}: closed-loop diffs, open-loop flip rate
      and |ΔQ| (the last two when the stage ran them), and most_attended_vs_random: the paired
      collision difference of the two removals with its CI;
    - patching_restored.<kind>: pairs, mean restored fraction per site class (and role), over
      sites whose entity is present, the largest mean over one neuron (neuron_max);
    - path_patching_restored.<kind>: mean restored fraction per head and path (and the sender);
    - perturbation_notebook.<layer>: |ΔQ| and flip rate of +notebook_size on every unit;
    - editing.<edit>: every measure of editing.csv, with its CI where it has one, and for the
      rank-one edit collision_no_effect (`no_effect` of its collision difference).
    """
    open_loop, closed, act, path = tables.open_loop, tables.closed_loop, tables.patching, tables.path_patching
    perturb, edit_table, episodes = tables.perturbation, tables.editing, tables.closed_loop_episodes
    base = closed[(closed.condition == "none") & (closed.half == ALL)].set_index("metric")
    ol = open_loop.set_index("condition")
    out: dict[str, Any] = {"closed_loop_baseline": {f"{m}_rate": base.loc[m, "value"]
                                                    for m in ("success", "collision", "timeout")}
                           | action_shares(closed, "none") | {"episodes": int(base.loc["success", "episodes"])}}
    head_ablation = {}
    for mode in iv.MODES:
        h, in_sample = most_affecting_head(closed, heads, mode)
        head_ablation[mode] = {"head": h, **diffs(closed, f"head{h}_{mode}", MEASURE),
                               **{f"in_sample_{k}": v for k, v in in_sample.items() if "_ci_" not in k},
                               **action_shares(closed, f"head{h}_{mode}", MEASURE),
                               "flip_rate": ol.loc[f"head{h}_{mode}", "flip_rate"]}
    out["head_ablation"] = head_ablation
    out["head_no_effect"] = {f"head{h}": {mode: no_effect(episode_differences(episodes, f"head{h}_{mode}", "none",
                                                                              "success", MEASURE),
                                                          margin, resamples, seed)
                                          for mode in iv.MODES} for h in range(heads)}
    out["branch_ablation"] = {
        mode: diffs(closed, f"branch_{mode}") | action_shares(closed, f"branch_{mode}")
        | {"flip_rate": ol.loc[f"branch_{mode}", "flip_rate"]}
        for mode in iv.MODES}
    neurons = {}
    for layer in neuron_layers:
        rows = open_loop[open_loop.target == layer]
        top, rand = rows[rows["mode"] == "top"].iloc[0], rows[rows["mode"] != "top"]
        entry = {"top_flip_rate": top["flip_rate"], "random_flip_rate": rand["flip_rate"].mean(),
                 "top_abs_dq": top["abs_dq"], "random_abs_dq": rand["abs_dq"].mean(),
                 "top_minus_random_abs_dq": top["abs_dq_vs_random"],
                 "top_minus_random_abs_dq_ci_low": top["abs_dq_vs_random_ci_low"],
                 "top_minus_random_abs_dq_ci_high": top["abs_dq_vs_random_ci_high"]}
        top_c = diffs(closed, top["condition"])
        rand_c = [diffs(closed, c) for c in rand["condition"]]
        for metric in ("success", "collision"):
            entry[f"top_{metric}_diff"] = top_c[f"{metric}_diff"]
            entry[f"random_{metric}_diff"] = float(np.mean([r[f"{metric}_diff"] for r in rand_c]))
        neurons[json_key(layer)] = entry
    out["neuron_ablation"] = neurons
    out["vehicle_removal"] = {
        target: diffs(closed, f"vehicle_{target}") | {"flip_rate": ol.loc[f"vehicle_{target}", "flip_rate"],
                                                        "abs_dq": ol.loc[f"vehicle_{target}", "abs_dq"]}
        for target in ("most_attended", "random", *VEHICLE_CONTROLS) if f"vehicle_{target}" in ol.index}
    diff, low, high = paired_bootstrap_ci(
        episode_differences(episodes, "vehicle_most_attended", "none", "collision"),
        episode_differences(episodes, "vehicle_random", "none", "collision"), resamples, seed)
    out["vehicle_removal"]["most_attended_vs_random"] = {"collision_diff": diff, "collision_diff_ci_low": low,
                                                        "collision_diff_ci_high": high}
    patch: dict[str, Any] = {}
    if len(act):
        used = act[act["entity_present"].astype(bool)]
        for kind, group in used.groupby("kind", sort=True):
            entry: dict[str, float] = {"pairs": int(group["pair"].nunique())}
            for (cls, role), g in group.groupby(["site_class", "role"], sort=True):
                entry[cls if role == "all" else f"{cls}_{role}"] = g["restored"].mean()
            neuron_means = group[group.site_class == "neuron"].groupby(["site", "neuron"])["restored"].mean()
            if len(neuron_means):
                entry["neuron_max"] = neuron_means.max()
            patch[kind] = entry
    out["patching_restored"] = patch
    paths: dict[str, Any] = {}
    for kind, group in (path.groupby("kind", sort=True) if len(path) else []):
        paths[kind] = {("sender" if h < 0 else f"head{h}_{p}"): g["restored"].mean()
                       for (h, p), g in group.groupby(["head", "path"], sort=True)}
    out["path_patching_restored"] = paths
    notebook = perturb[(perturb.direction == "uniform") & np.isclose(perturb["size"], notebook_size)]
    out["perturbation_notebook"] = {json_key(r.layer): {"abs_dq": r.mean_abs_dq, "flip_rate": r.flip_rate}
                                    for r in notebook.itertuples()}
    edits: dict[str, Any] = {}
    for name, group in edit_table.groupby("edit", sort=True):
        entry = {}
        for r in group.itertuples():
            entry[r.measure] = r.value
            if isinstance(r.ci_low, float) and math.isfinite(r.ci_low):
                entry[f"{r.measure}_ci_low"], entry[f"{r.measure}_ci_high"] = r.ci_low, r.ci_high
        edits[name] = entry
    if "edit_rank_one" in edits:
        edits["edit_rank_one"]["collision_no_effect"] = no_effect(
            episode_differences(episodes, "edit_rank_one", "none", "collision"), margin, resamples, seed)
    out["editing"] = edits
    return out
