"""Figures of interventions: closed-loop ablations and activation / path patching."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from egolens import stats
from egolens.names import MEASURE_HALF, reported_half
from egolens.plots.style import (
    seed_palette,
    styled,
    t_interval,
)
from egolens.sites import site


def _slot(i: int, n: int) -> float:
    """Vertical offset of the i-th of n points dodged around a label's row (slot n - 1: the pooled point)."""
    return (i - (n - 1) / 2) * 0.75 / max(n, 1)


def _per_seed_points(ax: Axes, data: pd.DataFrame, labels: list[str], x: str, low: str, high: str,
                     seeds: list, palette: dict) -> None:
    """Horizontal point + interval per (label, seed), seeds dodged vertically around each label (the
    last slot left for the pooled point, `_pooled_points`)."""
    position = {label: i for i, label in enumerate(labels)}
    for s, seed in enumerate(seeds):
        rows = data[data["seed"] == seed]
        y = rows["label"].map(position).to_numpy(dtype=np.float64) + _slot(s, len(seeds) + 1)
        mid, lo, hi = (rows[c].to_numpy(dtype=np.float64) for c in (x, low, high))
        ax.errorbar(mid, y, xerr=[mid - lo, hi - mid], fmt="o", ms=4,
                    color=palette[seed], elinewidth=1.2, capsize=2, label=f"seed {seed}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)


VEHICLE_NAMES = {"most_attended": "most-attended", "random": "random", "nearest": "nearest",
                 "lowest_ttc": "lowest time-to-collision"}
"""How the ablations figure names each removed vehicle (interventions/closed_loop.csv `target` of kind vehicle)."""


def ablation_label(row: Mapping[str, object], ranks: Mapping[int, int] | None = None) -> str:
    """A reader's name for one closed-loop condition (a row of interventions/closed_loop.csv); heads
    are named by their closed-loop role in that seed (head_rank<r>, `ranks`: head index -> rank) as
    in the report, or by index without ranks."""
    kind, target, mode = str(row["kind"]), str(row["target"]), str(row["mode"])

    def head(name: str) -> str:
        index = int(name.removeprefix("head"))
        return f"head_rank{ranks[index]}" if ranks and index in ranks else f"head {index}"

    units = str(row.get("units", "")).split() if isinstance(row.get("units"), str) else []
    ablated = {"zero": "zeroed", "mean": "mean-ablated", "resample": "resample-ablated"}
    held_out = " (held-out half)" if row.get("half") == MEASURE_HALF else ""
    if kind == "head":
        return f"{head(target)} {ablated.get(mode, mode)}{held_out}"
    if kind == "branch":
        return f"attention branch {ablated.get(mode, mode)}"
    if kind == "neurons":
        count = f"{len(units)} " if units else ""
        if mode == "top":
            return f"{site(target).label}: {count}top-conductance neurons mean-ablated"
        which = int(mode.removeprefix("random")) + 1
        return f"{site(target).label}: {count}random neurons (set {which}) mean-ablated"
    if kind == "vehicle":
        return f"{VEHICLE_NAMES.get(target, target)} vehicle removed"
    if kind == "edit":
        return "rank-one brake edit" if mode == "rank_one" else f"{head(target)} output scaled {mode}{held_out}"
    return str(row["condition"])


def pooled_over_seeds(data: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    """Per `by` group: the mean over seeds of each seed's mean `value` (a pooled estimate) and its 95%
    t-interval over seeds (a point when one seed). data: rows with `seed`, `by` and `value`.
    Returns by, mean, low, high, n_seeds."""
    per_seed = data.groupby([by, "seed"], sort=False)[value].mean().reset_index()
    rows = []
    for key, group in per_seed.groupby(by, sort=False):
        values = group[value].to_numpy(dtype=np.float64)
        low, high = t_interval(values)
        rows.append({by: key, "mean": float(np.nanmean(values)), "low": low, "high": high, "n_seeds": len(values)})
    return pd.DataFrame(rows, columns=[by, "mean", "low", "high", "n_seeds"])


def _pooled_points(ax: Axes, pooled: pd.DataFrame, labels: list[str], n_seeds: int, by: str = "label") -> None:
    """The pooled estimate per label: a black diamond with its interval over seeds, in the last slot of
    the label's row (below its `n_seeds` seeds' points)."""
    position = {label: i for i, label in enumerate(labels)}
    y = pooled[by].map(position).to_numpy(dtype=np.float64) + _slot(n_seeds, n_seeds + 1)
    mid, lo, hi = (pooled[c].to_numpy(dtype=np.float64) for c in ("mean", "low", "high"))
    ax.errorbar(mid, y, xerr=[mid - lo, hi - mid], fmt="D", ms=6, color="black", mfc="white", mew=1.5,
                elinewidth=2.2, capsize=0, zorder=5, label="pooled: mean over seeds (95% t-interval)")


@styled
def ablations(closed_loop: pd.DataFrame, metrics: Sequence[str] = ("success", "collision"),
              ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """Each ablation's change in `metrics` vs the unablated agent with its stored paired CI, per seed,
    and the pooled value over seeds.

    closed_loop: interventions/closed_loop.csv of every seed plus `seed`: condition, kind, target, mode,
    units, half, metric, value, diff, diff_ci_low, diff_ci_high (rate differences, fractions of episodes).
    Each condition is drawn on the half its effect is reported on (`names.reported_half`: heads on the
    held-out half, the rest on all episodes). The control row (kind 'none', the unablated agent on all
    episodes) is the 0 line; its rate, mean over seeds, is written in each panel's title. ranks: seed ->
    head index -> closed-loop rank, so that a head is named by its role in its own seed (head_rank1 of
    one seed and of another play the same role); the pooled diamond is the mean over seeds of each
    seed's difference (`pooled_over_seeds`, by role), drawn beside the seeds' own points.
    """
    control = closed_loop[(closed_loop["kind"] == "none") & (closed_loop["half"] == "all")]
    data = closed_loop[(closed_loop["kind"] != "none") & closed_loop["metric"].isin(metrics)]
    data = data[data["half"] == data["target"].map(reported_half)]
    labels_of = [ablation_label(row, (ranks or {}).get(row["seed"])) for row in data.to_dict("records")]
    data = data.assign(label=labels_of)
    labels = list(pd.unique(data["label"]))
    seeds = sorted(data["seed"].unique())
    palette = seed_palette(seeds)
    fig = Figure(figsize=(6 * len(metrics) + 5, 0.32 * len(labels) + 2.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        rows = data[data["metric"] == metric]
        _per_seed_points(ax, rows, labels, "diff", "diff_ci_low", "diff_ci_high", seeds, palette)
        _pooled_points(ax, pooled_over_seeds(rows, "label", "diff"), labels, len(seeds))
        base = control.loc[control["metric"] == metric, "value"].astype(float)
        rate = f"{base.mean():.2f}" if len(base) else "n/a"
        ax.axvline(0, color="black", lw=1.6, label="unablated agent (the 0 line; its rate, mean over seeds, in each "
                                                   "panel's title)")
        ax.set_title(f"{metric} rate: unablated agent {rate} (the 0 line)")
        ax.set_xlabel(f"Δ {metric} rate vs unablated (fraction of episodes)")
    axes[0].set_ylabel("intervention")
    handles, legend_labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, legend_labels, title="agent seed / pooled / control", loc="outside lower center",
               ncols=min(len(handles), 4), fontsize=8)
    fig.suptitle("Closed-loop interventions: paired difference to the unablated agent on the same episodes,\nper seed "
                 "(95% bootstrap CIs) and pooled over seeds (heads named by their role in each seed)")
    return fig


def _head_name(head: int, ranks: Mapping[int, int] | None) -> str:
    """A head by its closed-loop role in its seed (head_rank<r>), or by index without ranks."""
    return f"head_rank{ranks[head]}" if ranks and head in ranks else f"head {head}"


def _site_label(row: Mapping[str, object], ranks: Mapping[int, int] | None = None) -> str:
    head = int(row["head"])
    named = f" {_head_name(head, ranks)}" if head >= 0 else ""
    return f"{site(str(row['site'])).short}{named} [{row['role']}]"


def _no_data(title: str, reason: str, xlabel: str, ylabel: str) -> Figure:
    """A figure that says why it is empty (a tiny run can lack what a figure needs), axes labelled."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.text(0.5, 0.5, f"No data: {reason}.", ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xticks=[], yticks=[])
    return fig


def _path_label(row: Mapping[str, object], ranks: Mapping[int, int] | None = None) -> str:
    head = int(row["head"])
    return "sender (all heads)" if head < 0 else f"{_head_name(head, ranks)}: {str(row['path']).replace('_', '+')}"


RESTORED_WINDOW = (-0.5, 1.5)
"""The restored-fraction axis of the patching figure: points beyond it are drawn at its edge, marked."""


def seed_means(data: pd.DataFrame, value: str, n_boot: int) -> pd.DataFrame:
    """Per (label, seed) the mean of `value` over the pairs and its 95% percentile bootstrap interval
    over pairs (`stats.bootstrap_ci`, seed 0): label, seed, mean, low, high."""
    rows = []
    for (label, seed), group in data.groupby(["label", "seed"], sort=False):
        mean, low, high = stats.bootstrap_ci(group[value].to_numpy(dtype=np.float64), n_boot, 0)
        rows.append({"label": label, "seed": seed, "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["label", "seed", "mean", "low", "high"])


def _clipped(ax: Axes, points: pd.DataFrame, labels: list[str], seeds: list, palette: dict,
             window: tuple[float, float]) -> None:
    """Per-seed points and intervals (`_per_seed_points`) clipped to `window`; a point beyond it is drawn
    at the edge as a hollow triangle pointing outwards."""
    lo, hi = window
    clipped = points.assign(**{c: points[c].clip(lo, hi) for c in ("mean", "low", "high")})
    _per_seed_points(ax, clipped, labels, "mean", "low", "high", seeds, palette)
    position = {label: i for i, label in enumerate(labels)}
    outside = points[(points["mean"] < lo) | (points["mean"] > hi)]
    for edge, marker in ((lo, "<"), (hi, ">")):
        rows = outside[(outside["mean"] < lo) if edge == lo else (outside["mean"] > hi)]
        if rows.empty:
            continue
        y = [position[r.label] + _slot(seeds.index(r.seed), len(seeds) + 1) for r in rows.itertuples()]
        ax.scatter([edge] * len(rows), y, marker=marker, s=70, facecolors="none", edgecolors="black", zorder=6,
                   label=f"mean beyond the axis ({lo:g} … {hi:g}), drawn at its edge")
    ax.set_xlim(lo - 0.05, hi + 0.05)


@styled
def patching(patching_table: pd.DataFrame, path_patching: pd.DataFrame, n_boot: int = 1000,
             ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """Mean restored fraction per site (top row) and per head path (bottom row), per kind (columns): each
    seed's mean and the pooled mean over seeds.

    patching_table: interventions/patching.csv of every seed plus `seed`: kind, pair, site, head (−1 none),
    role (ego, other, target, all), site_class, restored (fraction of the clean − corrupted metric
    restored by the patch: 0 = the corrupted run, 1 = the clean run). Whole-site and target/ego patches
    are drawn; single neurons and non-target vehicles ('other', 'neuron') are not. path_patching:
    interventions/path_patching.csv plus `seed`: kind, pair, head, path, restored. ranks: seed -> head
    index -> closed-loop rank (heads named by role). Per seed: the mean over pairs with a 95% percentile
    bootstrap interval over pairs (`seed_means`); pooled: the mean over seeds of the seeds' means with
    its t-interval (`pooled_over_seeds`). The axis is `RESTORED_WINDOW`: a mean beyond it is marked at
    the edge, so one outlier does not squash the rest.
    """
    if patching_table.empty and path_patching.empty:
        return _no_data("Activation and path patching", "no clean/corrupted pairs were found in this run's rollouts",
                        "restored fraction of Q(SLOWER) − Q(FASTER) (0 = corrupted, 1 = clean)", "site")

    def named(table: pd.DataFrame, label: Callable[..., str]) -> pd.DataFrame:
        return table.assign(label=[label(row, (ranks or {}).get(row["seed"])) for row in table.to_dict("records")])

    sites = named(patching_table[(patching_table["role"] != "other") & (patching_table["site_class"] != "neuron")],
                  _site_label)
    paths = named(path_patching, _path_label)
    kinds = list(pd.unique(patching_table["kind"]))
    seeds = sorted(patching_table["seed"].unique())
    palette = seed_palette(seeds)
    site_order = list(pd.unique(patching_table["site"]))
    ordered = sites.assign(o_site=sites["site"].map(site_order.index),
                           o_role=sites["role"].map({"ego": 0, "target": 1, "all": 2}))
    site_labels = list(pd.unique(ordered.sort_values(["o_site", "label", "o_role"], kind="stable")["label"]))
    path_labels = sorted(pd.unique(paths["label"]))
    fig = Figure(figsize=(5.2 * len(kinds) + 2, 0.3 * (len(site_labels) + len(path_labels)) + 3.4),
                 layout="constrained")
    axes = fig.subplots(2, len(kinds), sharex=True, sharey="row", squeeze=False,
                        height_ratios=[max(len(site_labels), 1), max(len(path_labels), 1)])
    for c, kind in enumerate(kinds):
        for r, (data, labels) in enumerate(((sites, site_labels), (paths, path_labels))):
            ax = axes[r, c]
            rows = data[data["kind"] == kind]
            means = seed_means(rows, "restored", n_boot)
            _clipped(ax, means, labels, seeds, palette, RESTORED_WINDOW)
            pooled = pooled_over_seeds(means.rename(columns={"mean": "restored"}), "label", "restored")
            _pooled_points(ax, pooled.assign(**{k: pooled[k].clip(*RESTORED_WINDOW) for k in ("mean", "low", "high")}),
                           labels, len(seeds))
            ax.axvline(1, color="black", lw=0.8, ls=":")
            ax.set_title(f"{kind}: {'activation patching per site' if r == 0 else 'path patching per head and path'}")
            ax.set_xlabel("restored fraction of Q(SLOWER) − Q(FASTER)\n(0 = corrupted run, 1 = clean run)")
            ax.set_ylabel(("site [patched entities]" if r == 0 else "path") if c == 0 else "")
    handles = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), title="agent seed / pooled", loc="outside lower center",
               ncols=min(len(handles), 3), fontsize=8)
    fig.suptitle("Patching clean activations into corrupted runs: the share of Q(SLOWER) − Q(FASTER) restored "
                 "(0 = corrupted, 1 = fully restored),\nper seed (95% bootstrap CI over pairs) and pooled over seeds "
                 "(heads named by their role in each seed)")
    return fig
