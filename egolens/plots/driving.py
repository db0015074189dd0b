"""Figures of driving: learning curves, held-out evaluation beside the reference policies, and the
recipe sweep."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from egolens.names import MODELS
from egolens.plots.style import (
    MODEL_COLOURS,
    REFERENCE_STYLES,
    seed_palette,
    styled,
)


def evaluation_rows(metrics: Mapping[int, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> pd.DataFrame:
    """Every seed's evaluate.json ({model: {metric: {mean, ci_low, ci_high}}}, by seed) as rows:
    seed, model, metric, mean, ci_low, ci_high (the input of `evaluation`)."""
    return pd.DataFrame([{"seed": seed, "model": model, "metric": metric, **values}
                         for seed, by_model in metrics.items() for model, by_metric in by_model.items()
                         for metric, values in by_metric.items()])


def reference_rows(metrics: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """results/reference/metrics.json as rows: policy, metric, mean, ci_low, ci_high."""
    return pd.DataFrame([{"policy": policy, "metric": metric, **values} for policy, by_metric in metrics.items()
                         for metric, values in by_metric.items() if isinstance(values, dict)])


def reference_returns(reference: pd.DataFrame) -> dict[str, float]:
    """Held-out mean return of constant IDLE and of the clairvoyant planner (`reference_rows`), the
    learning curves' reference lines."""
    table = reference.set_index(["policy", "metric"])["mean"]
    return {policy: float(table[(policy, "mean_return")]) for policy in ("constant_idle", "clairvoyant")}


@styled
def learning_curves(returns: pd.DataFrame, window: int = 100,
                    reference: Mapping[str, float] | None = None) -> Figure:
    """Training return per episode: every seed's trailing mean over `window` episodes (top), then one panel
    per seed with the raw returns (faint) under that seed's trailing mean; `reference` (policy ->
    mean return on the held-out episodes, results/reference) drawn as horizontal lines in every panel.

    returns: results/seeds/seed<N>/train/plots/metrics/return.tsv of every seed plus `seed`: step
    (training episode, in finish order), return (undiscounted episode return).
    """
    seeds = sorted(returns["seed"].unique())
    palette = seed_palette(seeds)
    runs = {seed: returns[returns["seed"] == seed].sort_values("step") for seed in seeds}
    window = max(1, min(window, min(len(run) for run in runs.values())))      # a short run: a shorter window
    smooth = {seed: run["return"].rolling(window, min_periods=window).mean() for seed, run in runs.items()}
    fig = Figure(figsize=(11, 3.2 + 2.4 * len(seeds)), layout="constrained")
    axes = fig.subplots(len(seeds) + 1, 1, sharex=True, height_ratios=[1.4] + [1] * len(seeds))
    for seed, run in runs.items():
        axes[0].plot(run["step"], smooth[seed], color=palette[seed], lw=1.8, label=f"seed {seed}")
    axes[0].set_title(f"trailing mean over {window} episodes, all seeds")
    axes[0].legend(title="agent seed", loc="lower right")
    for ax, (seed, run) in zip(axes[1:], runs.items()):
        ax.plot(run["step"], run["return"], color=palette[seed], lw=0.4, alpha=0.25, label="raw")
        ax.plot(run["step"], smooth[seed], color="black", lw=1.5, label=f"trailing mean ({window})")
        ax.set_title(f"seed {seed}")
        ax.legend(loc="lower right", ncols=2)
    for ax in axes:
        for policy, value in (reference or {}).items():
            label, colour, style = REFERENCE_STYLES[policy]
            ax.axhline(value, color=colour, ls=style, lw=1.2, label=f"{label} (held-out)")
        ax.set_ylabel("return (undiscounted)")
    if reference:
        axes[0].legend(loc="lower right", ncols=2, fontsize="small")
    axes[-1].set_xlabel("training episode")
    fig.suptitle(f"Learning curves: training return per episode, trailing mean over {window} episodes")
    return fig


EVALUATION_METRICS = {"success_rate": "success rate (fraction of episodes)",
                      "collision_rate": "collision rate (fraction of episodes)",
                      "timeout_rate": "timeout rate (fraction of episodes)",
                      "mean_return": "mean return (undiscounted, per episode)"}


@styled
def evaluation(evaluation_table: pd.DataFrame, reference: pd.DataFrame | None = None) -> Figure:
    """Bars per seed (x) and network (hue) for each metric (panels), with the stored 95% CIs; the
    reference policies on the same held-out episodes as horizontal lines.

    evaluation_table: one row per (seed, model, metric) from results/seeds/seed<N>/evaluate.json:
    seed, model (trained, untrained), metric (success_rate, ...), mean, ci_low, ci_high.
    reference: one row per (policy, metric) from results/reference/metrics.json: policy, metric, mean.
    """
    seeds = sorted(evaluation_table["seed"].unique())
    metrics = [m for m in EVALUATION_METRICS if m in set(evaluation_table["metric"])]
    fig = Figure(figsize=(4.2 * len(metrics), 5.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.38
    for ax, metric in zip(axes, metrics):
        for i, model in enumerate(MODELS):
            rows = (evaluation_table[(evaluation_table["metric"] == metric) & (evaluation_table["model"] == model)]
                    .set_index("seed").reindex(seeds))
            x = np.arange(len(seeds)) + (i - 0.5) * width
            ax.bar(x, rows["mean"], width=width, color=MODEL_COLOURS[model], label=f"{model} network")
            ax.errorbar(x, rows["mean"], yerr=[rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]],
                        fmt="none", ecolor="black", elinewidth=1.2, capsize=3)
        if reference is not None:
            for policy, (label, colour, style) in REFERENCE_STYLES.items():
                value = reference[(reference["policy"] == policy) & (reference["metric"] == metric)]["mean"]
                if len(value):
                    ax.axhline(float(value.iloc[0]), color=colour, ls=style, lw=1.6, label=label)
        ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
        ax.set_xlabel("agent seed")
        ax.set_ylabel(EVALUATION_METRICS[metric])
        ax.set_title(metric.replace("_", " "))
        if metric.endswith("_rate"):
            ax.set_ylim(0, 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    fig.suptitle("Greedy evaluation on held-out episodes: each seed's trained and untrained network (bars, 95% "
                 "bootstrap CIs over episodes) beside reference policies on the same episodes (lines)")
    return fig


SWEEP_METRICS = {"success_rate": "success", "collision_rate": "collision", "timeout_rate": "timeout",
                 "mean_return": "mean return", "success_go": "success where driving on arrives",
                 "success_wait": "success where no constant speed arrives"}


@styled
def recipe_sweep(table: pd.DataFrame, reference: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """Each recipe's held-out outcomes: one dot per seed and the mean over seeds (bar), per metric
    (panels), beside the reference policies on the same episodes (lines).

    table: results/sweep/recipes.csv (recipe, seed, success_rate, collision_rate, timeout_rate,
    mean_return, and when present success_go / success_wait: success within the episodes a constant
    speed solves / does not solve, and idle_success: constant IDLE on the recipe's own env, drawn as a
    cross on the success panel); reference: results/reference/metrics.json (policy -> metric ->
    {mean, ...}) of the study's env: a recipe on another simulation is judged against its own cross.
    """
    recipes = list(dict.fromkeys(table["recipe"]))
    metrics = {metric: title for metric, title in SWEEP_METRICS.items() if metric in table}
    fig = Figure(figsize=(3.6 * len(metrics), 2.4 + 0.55 * len(recipes)), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True)
    for ax, (metric, title) in zip(axes, metrics.items()):
        means = table.groupby("recipe", sort=False)[metric].mean().reindex(recipes)
        ax.barh(range(len(recipes)), means, color="#4C72B0", alpha=0.45, label="mean over seeds")
        y = [recipes.index(r) for r in table["recipe"]]
        ax.scatter(table[metric], y, color="#4C72B0", s=22, zorder=3, label="one seed")
        if metric == "success_rate" and "idle_success" in table:
            idle = table.groupby("recipe", sort=False)["idle_success"].mean().reindex(recipes)
            ax.scatter(idle, range(len(recipes)), marker="x", color="black", s=30, zorder=4,
                       label="constant IDLE on the recipe's env")
        for policy in ("constant_idle", "rule_based", "clairvoyant"):
            label, colour, style = REFERENCE_STYLES[policy]
            if policy in reference and metric in reference[policy]:
                ax.axvline(reference[policy][metric]["mean"], color=colour, ls=style, lw=1.6, label=label)
        ax.set_yticks(range(len(recipes)), recipes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of episodes" if metric != "mean_return" else "return")
        if metric != "mean_return":
            ax.set_xlim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    fig.suptitle("Recipe sweep: held-out greedy episodes of each recipe's agents (dots: seeds) beside the reference "
                 "policies on the same episodes")
    return fig
