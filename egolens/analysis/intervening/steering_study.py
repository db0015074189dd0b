"""The steering stage's work: at each site, the directions to steer along (the most selective
safety probe's weights, SLOWER − FASTER, random ones of equal norm), closed-loop episodes for each
(site, direction, α), their paired comparison with α = 0 on the same env seeds, the summary.

α is in units of the site's activation RMS (`steering.activation_scale` over the recorded rows of
the trained network: one per step, or per present other vehicle at the others' embedding). At
α = 0 `steering.steered_net` installs no hook, so the α = 0 episodes, played once and shared by
every direction of every site, are the unsteered network's. No file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from egolens.analysis.intervening.steering import (
    FASTER,
    SLOWER,
    activation_scale,
    mean_difference_direction,
    probe_direction,
    random_directions,
    steered_policy,
    unit,
)
from egolens.analysis.reading.probe_targets import vehicle_rows
from egolens.analysis.reading.probes import ProbeFit, site_features
from egolens.episodes import episode_table, paired_comparison
from egolens.play import play
from egolens.probes_config import probe_site_level
from egolens.runner import EnvRunner
from egolens.sites import json_key

METRICS = ("success", "collision", "timeout")
"""The closed-loop outcomes compared with α = 0."""
PROBE, MEAN_DIFFERENCE, RANDOM = "probe", "slower_minus_faster", "random"
"""Kinds of direction: a probe's weights, the SLOWER − FASTER mean difference, the random control."""


@dataclass(frozen=True)
class Direction:
    """A steering direction at a site: name (unique at the site), kind (`PROBE`, `MEAN_DIFFERENCE`,
    `RANDOM`), what it was made from (the probe's target, else empty) and the unit vector [U]."""

    name: str
    kind: str
    source: str
    vector: np.ndarray


def site_rows(arrays: Mapping[str, np.ndarray], site: str) -> tuple[np.ndarray, np.ndarray]:
    """The recorded rows of `site` [R, U] (one per step, or per present other vehicle at a
    per-vehicle site) and the action the agent chose on each row's step [R]."""
    level = probe_site_level(site)
    acts = site_features(arrays, site, level)
    action = np.asarray(arrays["action"])
    if level == "vehicle":
        action = action[vehicle_rows(arrays["obs"])[0]]
    return acts, action


def site_directions(arrays: Mapping[str, np.ndarray], site: str, probe: ProbeFit, target: str, random_count: int,
                    seed: int) -> list[Direction]:
    """The directions at `site`: the probe's (towards its class 1 / larger values), SLOWER − FASTER
    over the recorded rows (left out when the agent never chose one of the two: a tiny run's agent
    may not), and `random_count` seeded random ones, each of unit length."""
    acts, action = site_rows(arrays, site)
    directions = [Direction(PROBE, PROBE, target, probe_direction(probe))]
    if np.any(action == SLOWER) and np.any(action == FASTER):
        directions.append(Direction(MEAN_DIFFERENCE, MEAN_DIFFERENCE, "",
                                    unit(mean_difference_direction(acts, action))))
    directions += [Direction(f"{RANDOM}_{i}", RANDOM, "", d)
                   for i, d in enumerate(random_directions(acts.shape[1], random_count, seed))]
    return directions


def steering_study(net: nn.Module, runner: EnvRunner, env_seeds: Sequence[int],
                   sites: Mapping[str, tuple[float, list[Direction]]], alphas: Sequence[float], resamples: int,
                   seed: int, progress: Callable[[str], None] = lambda _: None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Play every (site, direction, α) on `env_seeds` and compare it with α = 0.

    sites: site -> (activation scale, directions); alphas must contain 0. Returns (episodes: one
    row per (site, direction, α, episode) of `episodes.episode_table` with site, direction, kind,
    source, alpha; comparison: one row per (site, direction, α, metric of `METRICS`) of
    `episodes.paired_comparison` against the α = 0 episodes, joined on env seed, with
    resamples and seed as given).
    """
    if 0.0 not in [float(a) for a in alphas]:
        raise ValueError(f"alphas = {list(alphas)} must contain 0 (the unsteered reference)")
    progress("unsteered")
    baseline = episode_table(play(net, runner, env_seeds))
    episodes, comparisons = [], []
    for site, (scale, directions) in sites.items():
        for direction in directions:
            for alpha in sorted(float(a) for a in alphas):
                if alpha == 0.0:
                    table = baseline
                else:
                    progress(f"{site} {direction.name} α={alpha:g}")
                    policy = steered_policy(net, site, direction.vector, alpha, scale)
                    table = episode_table(play(policy, runner, env_seeds))
                labels = {"site": site, "direction": direction.name, "kind": direction.kind,
                          "source": direction.source, "alpha": alpha}
                episodes.append(table.assign(**labels))
                compared = paired_comparison(table, baseline, resamples, seed, METRICS)
                comparisons.append(compared.assign(**labels))
    order = ["site", "direction", "kind", "source", "alpha"]
    episode_rows = pd.concat(episodes, ignore_index=True)
    comparison = pd.concat(comparisons, ignore_index=True)
    return (episode_rows[order + [c for c in episode_rows.columns if c not in order]],
            comparison[order + [c for c in comparison.columns if c not in order]])


def monotone(values: Sequence[float]) -> bool:
    """Whether values (in α order) never decrease or never increase, and are not all equal."""
    steps = np.diff(np.asarray(values, dtype=np.float64))
    return bool(np.any(steps != 0) and (np.all(steps >= 0) or np.all(steps <= 0)))


def ends_opposite(rows: pd.DataFrame) -> bool | None:
    """Whether one direction's effect on a metric turns with the sign of α: rows are its
    comparisons with α = 0 (alpha, diff_ci_low, diff_ci_high; one metric) and the paired CI at the
    most negative α lies below 0 while the one at the largest α lies above 0, or the reverse.
    None when the grid has no α of one of the two signs."""
    by_alpha = rows.sort_values("alpha")
    low, high = by_alpha.iloc[0], by_alpha.iloc[-1]
    if not (low["alpha"] < 0 < high["alpha"]):
        return None
    return bool((low["diff_ci_high"] < 0 < high["diff_ci_low"]) or (low["diff_ci_low"] > 0 > high["diff_ci_high"]))


def changes_somewhere(rows: pd.DataFrame) -> bool:
    """Whether some α ≠ 0 of one direction's comparisons (rows as in `ends_opposite`) has a paired
    CI that excludes 0."""
    steered = rows[rows["alpha"] != 0.0]
    return bool(((steered["diff_ci_low"] > 0) | (steered["diff_ci_high"] < 0)).any())


def summarize(comparison: pd.DataFrame, scales: Mapping[str, float]) -> dict:
    """summary.json of the steering stage, per site (JSON key of the site name): the activation
    scale, the probe's target, and for the probe and the mean-difference directions the collision
    and success differences from α = 0 at the smallest and largest α (with CIs), whether the
    collision rate is monotone in α (point values) and whether its paired CIs at the two ends lie
    on opposite sides of 0 (collision_ends_opposite, `ends_opposite`; None without α of both
    signs); for the random directions how many are monotone, how many change the collision rate at
    some α (changing_collision: a paired CI excluding 0, `changes_somewhere`) and the largest
    |collision difference| any reaches; and safety_steers_collisions: the probe direction's
    collision_ends_opposite holds and no random direction changes the collision rate. Plus the
    unsteered collision and success rates."""
    sites = {}
    for site, group in comparison.groupby("site", sort=False):
        entry: dict[str, object] = {"scale": float(scales[site])}
        for kind, rows in group.groupby("kind", sort=False):
            collision = rows[rows["metric"] == "collision"]
            if kind == RANDOM:
                curves = [g.sort_values("alpha")["value"].to_numpy() for _, g in collision.groupby("direction")]
                entry[RANDOM] = {"directions": len(curves), "monotone_collision": sum(monotone(c) for c in curves),
                                 "changing_collision": sum(changes_somewhere(g) for _, g in
                                                           collision.groupby("direction")),
                                 "largest_abs_collision_diff": float(collision["diff"].abs().max())}
                continue
            described: dict[str, object] = {"source": str(rows["source"].iloc[0]),
                                            "monotone_collision": monotone(collision.sort_values("alpha")["value"]),
                                            "collision_ends_opposite": ends_opposite(collision)}
            for metric in ("collision", "success"):
                by_alpha = rows[rows["metric"] == metric].sort_values("alpha")
                for end, row in (("lowest_alpha", by_alpha.iloc[0]), ("highest_alpha", by_alpha.iloc[-1])):
                    described[f"{metric}_diff_{end}"] = {"alpha": float(row["alpha"]), "diff": float(row["diff"]),
                                                         "ci_low": float(row["diff_ci_low"]),
                                                         "ci_high": float(row["diff_ci_high"])}
            entry[kind] = described
        probe, random = entry.get(PROBE), entry.get(RANDOM)
        if isinstance(probe, dict) and isinstance(random, dict):
            opposite = probe["collision_ends_opposite"]
            entry["safety_steers_collisions"] = None if opposite is None else bool(
                opposite and random["changing_collision"] == 0)
        sites[json_key(site)] = entry
    reference = comparison[comparison["alpha"] == 0.0]
    return {"episodes": int(comparison["episodes"].iloc[0]), "sites": sites,
            "unsteered": {f"{m}_rate": float(reference[reference["metric"] == m]["value"].iloc[0])
                          for m in ("success", "collision")}}


def scales_of(arrays: Mapping[str, np.ndarray], sites: Sequence[str]) -> dict[str, float]:
    """Each site's activation RMS over its recorded rows (`site_rows`)."""
    return {site: activation_scale(site_rows(arrays, site)[0]) for site in sites}
