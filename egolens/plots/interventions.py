"""Figures of interventions: closed-loop ablations and activation / path patching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from egolens.names import MEASURE_HALF, reported_half
from egolens.plots.style import (
    seed_palette,
    styled,
)
from egolens.sites import site


def _per_seed_points(ax: Axes, data: pd.DataFrame, labels: list[str], x: str, low: str, high: str,
                     seeds: list, palette: dict) -> None:
    """Horizontal point + interval per (label, seed), seeds dodged vertically around each label."""
    position = {label: i for i, label in enumerate(labels)}
    step = 0.7 / max(len(seeds), 1)
    for s, seed in enumerate(seeds):
        rows = data[data["seed"] == seed]
        y = rows["label"].map(position).to_numpy(dtype=np.float64) + (s - (len(seeds) - 1) / 2) * step
        mid, lo, hi = (rows[c].to_numpy(dtype=np.float64) for c in (x, low, high))
        ax.errorbar(mid, y, xerr=[mid - lo, hi - mid], fmt="o", ms=4,
                    color=palette[seed], elinewidth=1.2, capsize=2, label=f"seed {seed}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)


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
        return f"{'most-attended' if target == 'most_attended' else 'random'} vehicle removed"
    if kind == "edit":
        return "rank-one brake edit" if mode == "rank_one" else f"{head(target)} output scaled {mode}{held_out}"
    return str(row["condition"])


@styled
def ablations(closed_loop: pd.DataFrame, metrics: Sequence[str] = ("success", "collision"),
              ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """Each ablation's change in `metrics` vs the unablated agent with its stored paired CI, per seed.

    closed_loop: interventions/closed_loop.csv of every seed plus `seed`: condition, kind, target, mode,
    units, half, metric, diff, diff_ci_low, diff_ci_high (rate differences, fractions of episodes). Each
    condition is drawn on the half its effect is reported on (`names.reported_half`: heads on the
    held-out half, the rest on all episodes). The control row (kind 'none') is not drawn. ranks: seed ->
    head index -> closed-loop rank, so that a head is named by its role in its own seed (head_rank1 of
    one seed and of another play the same role); seeds are drawn side by side, never averaged.
    """
    data = closed_loop[(closed_loop["kind"] != "none") & closed_loop["metric"].isin(metrics)]
    data = data[data["half"] == data["target"].map(reported_half)]
    labels_of = [ablation_label(row, (ranks or {}).get(row["seed"])) for row in data.to_dict("records")]
    data = data.assign(label=labels_of)
    labels = list(pd.unique(data["label"]))
    seeds = sorted(data["seed"].unique())
    palette = seed_palette(seeds)
    fig = Figure(figsize=(6 * len(metrics) + 5, 0.32 * len(labels) + 2), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        _per_seed_points(ax, data[data["metric"] == metric], labels, "diff", "diff_ci_low", "diff_ci_high", seeds,
                         palette)
        ax.set_title(f"{metric} rate")
        ax.set_xlabel(f"Δ {metric} rate vs unablated (fraction of episodes)")
    axes[0].set_ylabel("intervention")
    axes[-1].legend(title="agent seed", loc="lower right")
    fig.suptitle("Closed-loop interventions: paired difference to the unablated agent with 95% bootstrap CIs, "
                 "per seed (heads named by their role in each seed)")
    return fig


def _site_label(row: pd.Series) -> str:
    head = f" h{row['head']}" if row["head"] >= 0 else ""
    return f"{site(row['site']).short}{head} [{row['role']}]"


def _no_data(title: str, reason: str, xlabel: str, ylabel: str) -> Figure:
    """A figure that says why it is empty (a tiny run can lack what a figure needs), axes labelled."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.text(0.5, 0.5, f"No data: {reason}.", ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xticks=[], yticks=[])
    return fig


def _path_label(row: pd.Series) -> str:
    return "sender (all heads)" if row["head"] < 0 else f"head {row['head']}: {row['path']}"


@styled
def patching(patching_table: pd.DataFrame, path_patching: pd.DataFrame, n_boot: int = 1000) -> Figure:
    """Mean restored fraction per site (top row) and per head path (bottom row), per kind (columns) and seed.

    patching_table: interventions/patching.csv of every seed plus `seed`: kind, pair, site, head (−1 none),
    role (ego, other, target, all), site_class, restored (fraction of the clean − corrupted metric
    restored by the patch). Whole-site and target/ego patches are drawn; single neurons and non-target
    vehicles ('other', 'neuron') are not. path_patching: interventions/path_patching.csv plus `seed`:
    kind, pair, head, path, restored. Intervals: 95% percentile bootstrap over pairs (seaborn, seed 0).
    """
    if patching_table.empty and path_patching.empty:
        return _no_data("Activation and path patching", "no clean/corrupted pairs were found in this run's rollouts",
                        "restored fraction of Q(SLOWER) − Q(FASTER) (1 = clean)", "site")
    sites = patching_table[(patching_table["role"] != "other") & (patching_table["site_class"] != "neuron")]
    sites = sites.assign(label=sites.apply(_site_label, axis=1))
    paths = path_patching.assign(label=path_patching.apply(_path_label, axis=1))
    kinds = list(pd.unique(patching_table["kind"]))
    seeds = sorted(patching_table["seed"].unique())
    palette = seed_palette(seeds)
    site_order = list(pd.unique(patching_table["site"]))
    ordered = sites.assign(o_site=sites["site"].map(site_order.index),
                           o_role=sites["role"].map({"ego": 0, "target": 1, "all": 2}))
    site_labels = list(pd.unique(ordered.sort_values(["o_site", "head", "o_role"], kind="stable")["label"]))
    path_labels = sorted(pd.unique(paths["label"]))
    fig = Figure(figsize=(5.2 * len(kinds) + 2, 0.28 * (len(site_labels) + len(path_labels)) + 3),
                 layout="constrained")
    axes = fig.subplots(2, len(kinds), sharex=True, sharey="row", squeeze=False,
                        height_ratios=[len(site_labels), len(path_labels)])
    for c, kind in enumerate(kinds):
        for r, (data, labels) in enumerate(((sites, site_labels), (paths, path_labels))):
            ax = axes[r, c]
            sns.pointplot(data[data["kind"] == kind], x="restored", y="label", hue="seed", order=labels,
                          hue_order=seeds, palette=palette, orient="h", dodge=0.5 if len(seeds) > 1 else False,
                          linestyle="none",
                          errorbar=("ci", 95), n_boot=n_boot, seed=0, markersize=4, err_kws={"linewidth": 1.2},
                          ax=ax, legend=(r, c) == (0, len(kinds) - 1))
            ax.axvline(0, color="black", lw=0.8)
            ax.axvline(1, color="black", lw=0.8, ls=":")
            ax.set_title(f"{kind}: {'activation patching per site' if r == 0 else 'path patching'}")
            ax.set_xlabel("restored fraction of Q(SLOWER) − Q(FASTER) (1 = clean)")
            ax.set_ylabel(("site [patched entities]" if r == 0 else "path") if c == 0 else "")
    axes[0, -1].legend(title="agent seed", loc="lower right")
    fig.suptitle("Patching clean activations into corrupted runs: mean restored fraction per seed, "
                 "95% bootstrap CI over pairs")
    return fig
