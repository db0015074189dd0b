"""Figures of attributions: integrated gradients per feature, layer and neuron conductance, and
attention against the attributions and scene facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from egolens.names import MODELS
from egolens.plots.style import (
    DIVERGING,
    EGO_COLOUR,
    ENTITIES,
    MODEL_COLOURS,
    styled,
    symmetric_limit,
    t_interval,
)
from egolens.sites import site
from egolens.vocabulary import ACTIONS


@styled
def ig_features(ig: pd.DataFrame, baseline: str = "others_zeroed", quantity: str = "q") -> Figure:
    """Mean |IG| per input feature, ego vs others (hue), per action (columns), trained / untrained (rows).

    ig: attributions/ig_features.csv of every seed plus `seed`: model, baseline, quantity, action,
    entity (ego, others), feature, mean_abs_attribution (mean over recorded steps of |attribution|, Q units).
    Bars are means over seeds with 95% t-intervals.
    """
    data = ig[(ig["baseline"] == baseline) & (ig["quantity"] == quantity)]
    features = list(pd.unique(data["feature"]))
    actions = [a for a in ACTIONS if a in set(data["action"])]
    n_seeds = data["seed"].nunique()
    fig = Figure(figsize=(14, 7.5), layout="constrained")
    axes = fig.subplots(2, len(actions), sharey="row", sharex=True, squeeze=False)
    for r, model in enumerate(MODELS):
        for c, action in enumerate(actions):
            ax = axes[r, c]
            panel = data[(data["model"] == model) & (data["action"] == action)]
            sns.barplot(panel, x="feature", y="mean_abs_attribution", hue="entity", hue_order=ENTITIES, order=features,
                        errorbar=t_interval, palette={"ego": EGO_COLOUR, "others": MODEL_COLOURS[model]},
                        capsize=0.15, err_kws={"linewidth": 1.2}, ax=ax, legend=False)
            sns.stripplot(panel, x="feature", y="mean_abs_attribution", hue="entity", hue_order=ENTITIES,
                          order=features, dodge=True, palette={"ego": "black", "others": "black"}, size=3,
                          jitter=False, legend=False, ax=ax)
            for entity in ENTITIES:
                if (panel.loc[panel["entity"] == entity, "mean_abs_attribution"] == 0).all():
                    ax.text(0.02, 0.95, f"{entity}: every attribution is 0", transform=ax.transAxes, va="top",
                            fontsize=8)
            ax.set_title(f"{model}, Q({action})")
            ax.set_xlabel("input feature")
            ax.set_ylabel(f"{model}: mean |IG attribution| (Q units)" if c == 0 else "")
            ax.tick_params(axis="x", rotation=45)
        handles = [Patch(color=EGO_COLOUR, label="ego"), Patch(color=MODEL_COLOURS[model], label="others"),
                   Line2D([], [], color="black", marker="o", ms=3, ls="none", label="one seed")]
        axes[r, -1].legend(handles=handles, title="entity", loc="upper right")
    fig.suptitle(f"Integrated gradients per input feature (baseline {baseline}, quantity {quantity})\n"
                 f"bars: mean over {n_seeds} seeds with 95% t-interval, dots: seeds; each row has its own y scale")
    return fig


@styled
def layer_conductance(conductance: pd.DataFrame, action: str = "chosen") -> Figure:
    """Every neuron's mean |conductance| sorted from the largest, one panel per layer, one line per seed and model.

    conductance: attributions/layer_conductance.csv of every seed plus `seed`: model, layer, action,
    neuron, mean_abs_conductance (mean over recorded steps of |conductance|, Q units).
    """
    data = conductance[conductance["action"] == action]
    layers = list(pd.unique(data["layer"]))
    fig = Figure(figsize=(3.2 * len(layers), 4.6), layout="constrained")
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    for ax, layer in zip(axes, layers):
        for model in MODELS:
            for seed, group in data[(data["layer"] == layer) & (data["model"] == model)].groupby("seed"):
                values = np.sort(group["mean_abs_conductance"].to_numpy())[::-1]
                ax.plot(np.arange(1, len(values) + 1), values, color=MODEL_COLOURS[model], lw=1.3, alpha=0.85,
                        label=f"{model}, seed {seed}", marker="o", ms=2)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_title(site(layer).short)
        ax.set_xlabel("neuron rank (1 = largest)")
    axes[0].set_ylabel(f"mean |conductance| of Q({action}) (Q units)")
    for ax in axes[1:]:
        ax.set_ylabel("")
    axes[-1].legend(handles=[Line2D([], [], color=MODEL_COLOURS[m], label=f"{m} (one line per seed)") for m in MODELS],
                    loc="upper right")
    fig.suptitle(f"Layer conductance of Q({action}) per neuron, sorted (log scale; neurons at exactly 0 not drawn)")
    return fig


@styled
def neuron_conductance(conductance: pd.DataFrame) -> Figure:
    """Top neurons' conductance split by input entity × feature; trained and untrained side by side.

    conductance: attributions/neuron_conductance.csv of one seed: model, layer, neuron, rank (0 = most
    conductive in its layer), action, entity (ego, others), feature, mean_conductance (signed, Q units).
    """
    layer_order = list(pd.unique(conductance["layer"]))
    fig = Figure(figsize=(14, 9), layout="constrained")
    axes = fig.subplots(1, len(MODELS), squeeze=False)[0]
    for ax, model in zip(axes, MODELS):
        data = conductance[conductance["model"] == model].sort_values(["layer", "rank"], kind="stable")
        data = data.assign(unit=data["layer"].map(lambda layer: site(layer).short) + " #" + data["neuron"].astype(str),
                           input=data["entity"] + " " + data["feature"])
        firsts = data.drop_duplicates("unit")
        units = (firsts.assign(order=firsts["layer"].map(layer_order.index))
                 .sort_values(["order", "rank"], kind="stable")["unit"].tolist())
        inputs = list(pd.unique(data["input"]))
        mat = data.pivot(index="unit", columns="input", values="mean_conductance").reindex(index=units, columns=inputs)
        limit = symmetric_limit(mat.to_numpy())
        image = ax.imshow(mat.to_numpy(dtype=np.float64), cmap=DIVERGING, vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(inputs)), inputs, rotation=60, ha="right")
        ax.set_yticks(range(len(units)), units)
        per_layer = data.drop_duplicates("unit").groupby("layer", sort=False).size()
        for edge in np.cumsum([per_layer[layer] for layer in layer_order if layer in per_layer])[:-1]:
            ax.axhline(edge - 0.5, color="black", lw=0.8)
        ax.axvline(len([i for i in inputs if i.startswith("ego ")]) - 0.5, color="black", lw=0.8)
        ax.set_title(model)
        ax.set_xlabel("input (entity, feature)")
        ax.set_ylabel("layer, neuron (ranked by conductance)")
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"mean conductance, {model} (Q units; own scale ±{limit:.3g})")
    fig.suptitle("Neuron conductance of the chosen action's Q-value for each layer's top neurons (first seed), "
                 "by input feature")
    return fig


NAIVE_NAMES = {"nearest": "nearest first", "lowest_ttc": "lowest TTC first"}
"""How the attention figure names the naive rankings of ranking_baselines.csv."""


def _ranked_units(agreement: pd.DataFrame, baselines: pd.DataFrame | None,
                  ranks: Mapping[int, Mapping[int, int]] | None) -> pd.DataFrame:
    """agreement rows (per step and head) and the naive rankings' rows (per step and ranking) in one
    table with a `unit` column: "s<seed> head_rank<r>" (by role; "h<i>" without ranks) or
    "s<seed> <ranking name>"."""
    def head(seed: object, h: int) -> str:
        by_head = (ranks or {}).get(seed)
        return f"head_rank{by_head[h]}" if by_head and h in by_head else f"h{h}"

    heads = agreement.assign(unit=[f"s{seed} {head(seed, int(h))}"
                                   for seed, h in zip(agreement["seed"], agreement["head"])], naive=False)
    if baselines is None or baselines.empty:
        return heads
    naive = baselines.assign(unit=[f"s{seed} {NAIVE_NAMES.get(r, r)}"
                                   for seed, r in zip(baselines["seed"], baselines["ranking"])], naive=True)
    return pd.concat([heads, naive], ignore_index=True)


def _unit_order(units: pd.DataFrame) -> list[str]:
    """Per seed: its heads by role, then the naive rankings in `NAIVE_NAMES` order."""
    naive_rank = {f" {name}": i for i, name in enumerate(NAIVE_NAMES.values())}

    def key(unit: str) -> tuple[int, int, str]:
        seed, _, rest = unit.partition(" ")
        return (int(seed[1:]), naive_rank.get(f" {rest}", -1), rest)

    return sorted(pd.unique(units["unit"]), key=key)


@styled
def attention_vs_attribution(agreement: pd.DataFrame, attention_facts: pd.DataFrame,
                             ranking_baselines: pd.DataFrame | None = None,
                             ranks: Mapping[int, Mapping[int, int]] | None = None,
                             explanations: Sequence[tuple[str, str, str]] = (("ig", "others_zeroed", "q"),
                                                                             ("shapley", "ego_alone", "q"))) -> Figure:
    """Per-step Spearman(attention, attribution) per seed·head beside the naive rankings scored the
    same way, the top-1 match rate against its chance level (top), and pooled Spearman(attention, fact)
    (bottom).

    agreement: attributions/agreement.csv of every seed plus `seed`: model, attribution, baseline, quantity,
    head, spearman (per step, over the present vehicles; NaN steps dropped), top1_match, top1_chance.
    ranking_baselines: attributions/ranking_baselines.csv plus `seed` (ranking instead of head; the
    nearest-first and lowest-time-to-collision-first rankings, the baselines attention must beat).
    attention_facts: attributions/attention_facts.csv plus `seed`: model, statistic ('pooled' drawn),
    head, fact, spearman. ranks: seed -> head index -> closed-loop rank (heads named by role).
    The top-1 panel (last explanation) draws each unit's mean match rate and, per seed, the chance level
    (the mean over steps of 1 / the number of vehicles tied for the largest |attribution|).
    """
    units = _ranked_units(agreement, ranking_baselines, ranks)
    data = units.dropna(subset=["spearman"])
    order = _unit_order(units)
    fig = Figure(figsize=(18, 10.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1])
    axes = top.subplots(1, len(explanations) + 1, squeeze=False)[0]
    for ax, (method, baseline, quantity) in zip(axes, explanations):
        rows = data[(data["attribution"] == method) & (data["baseline"] == baseline) & (data["quantity"] == quantity)]
        sns.boxplot(rows, x="unit", y="spearman", hue="model", order=order, hue_order=list(MODELS),
                    palette=MODEL_COLOURS, fliersize=2, ax=ax, legend=False)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"|{method}| ({baseline}, {quantity}): attention and the naive rankings")
        ax.set_xlabel("agent seed · head (by role) or naive ranking")
        ax.set_ylabel("per-step Spearman ρ with |attribution|")
        ax.tick_params(axis="x", rotation=60)
    method, baseline, quantity = explanations[-1]
    rows = units[(units["attribution"] == method) & (units["baseline"] == baseline) & (units["quantity"] == quantity)]
    ax = axes[-1]
    rates = rows.groupby(["unit", "model"])["top1_match"].mean().reset_index()
    sns.barplot(rates, x="unit", y="top1_match", hue="model", order=order, hue_order=list(MODELS),
                palette=MODEL_COLOURS, ax=ax, legend=False, errorbar=None)
    chance = rows[rows["model"] == MODELS[0]].groupby("seed")["top1_chance"].mean()
    for seed, level in chance.items():
        span = [i for i, unit in enumerate(order) if unit.startswith(f"s{seed} ")]
        ax.hlines(level, min(span) - 0.45, max(span) + 0.45, color="black", lw=2, ls="--",
                  label="chance level (a present vehicle at random)")
    ax.set_ylim(0, 1)
    ax.set_title(f"top-1 match with |{method}| against chance")
    ax.set_xlabel("agent seed · head (by role) or naive ranking")
    ax.set_ylabel("share of steps whose top vehicle is the top |attribution|")
    ax.tick_params(axis="x", rotation=60)
    handles = [Patch(facecolor=MODEL_COLOURS[m], edgecolor="#444444", label=m) for m in MODELS]
    handles.append(Line2D([], [], color="black", lw=2, ls="--", label="chance level (trained network's steps)"))
    top.legend(handles=handles, title="network", loc="outside right upper")
    facts = attention_facts[attention_facts["statistic"] == "pooled"]
    facts = _ranked_units(facts, None, ranks)
    fact_order = list(pd.unique(facts["fact"]))
    fact_axes = bottom.subplots(1, len(MODELS), squeeze=False)[0]
    for ax, model in zip(fact_axes, MODELS):
        mat = (facts[facts["model"] == model].pivot(index="unit", columns="fact", values="spearman")
               .reindex(index=_unit_order(facts), columns=fact_order))
        sns.heatmap(mat, vmin=-1, vmax=1, cmap=DIVERGING, annot=True, fmt=".2f", ax=ax, cbar=ax is fact_axes[-1],
                    cbar_kws={"label": "pooled Spearman ρ (attention, fact)"})
        ax.set_title(f"{model}: attention vs scene facts (pooled over steps and vehicles)")
        ax.set_xlabel("scene fact (time-to-collision s, distance m, closing speed m/s)")
        ax.set_ylabel("agent seed · head (by role)")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle("Does attention rank the vehicles like their attributions, and better than distance or "
                 "time-to-collision would? Per seed, heads by role")
    return fig
