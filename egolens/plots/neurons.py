"""Figures of what the layers hold: neuron activations over an episode, and the logit / tuned lens."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from egolens.names import HEAD, MODELS
from egolens.plots.style import (
    styled,
    t_interval,
)
from egolens.sites import site


@styled
def neuron_activations(over_time: pd.DataFrame, steps: pd.DataFrame | None = None) -> Figure:
    """Heatmaps neuron × step of the recorded neurons over one episode, models (rows) × layers (columns).

    over_time: neurons/over_time.csv of one seed: model, layer, episode (one), step, neuron, activation.
    steps: optional data/seed<N>/steps_<model>.csv rows with model, episode, step, action (names): the
    chosen action is written under each step.
    """
    layers = list(pd.unique(over_time["layer"]))
    episode = int(over_time["episode"].iloc[0])
    fig = Figure(figsize=(3.6 * len(layers), 10), layout="constrained")
    axes = fig.subplots(len(MODELS), len(layers), squeeze=False)
    for c, layer in enumerate(layers):
        in_layer = over_time[over_time["layer"] == layer]
        vmax = float(in_layer["activation"].max()) or 1.0
        for r, model in enumerate(MODELS):
            ax = axes[r, c]
            data = in_layer[in_layer["model"] == model]
            mat = data.pivot(index="neuron", columns="step", values="activation")
            mat = mat.reindex(index=list(pd.unique(data["neuron"])), columns=sorted(mat.columns))
            image = ax.imshow(mat.to_numpy(dtype=np.float64), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                              interpolation="nearest")
            labels = [str(s) for s in mat.columns]
            if steps is not None:
                chosen = steps[(steps["model"] == model) & (steps["episode"] == episode)].set_index("step")["action"]
                labels = [f"{s}\n{str(chosen.get(s, '?'))[:1]}" for s in mat.columns]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(mat.index)), [str(n) for n in mat.index])
            ax.set_title(f"{model}, {site(layer).short}")
            ax.set_xlabel("step" + (" / action (S, I, F)" if steps is not None else ""))
            ax.set_ylabel("neuron")
            ax.grid(False)
        fig.colorbar(image, ax=axes[:, c].tolist(), orientation="horizontal", shrink=0.8,
                     label=f"activation ({site(layer).short}, shared by both models)")
    fig.suptitle(f"Post-ReLU activations of the most variable neurons over episode {episode} (first seed)")
    return fig


def _sites_by_role(table: pd.DataFrame, ranks: Mapping[int, Mapping[int, int]] | None) -> pd.DataFrame:
    """`table` with each site `head<i>` of a seed renamed `head_rank<r>` (its closed-loop role in that seed)."""
    if not ranks:
        return table

    def rename(seed: object, name: str) -> str:
        by_head = ranks.get(seed)  # type: ignore[call-overload]
        return HEAD.sub(lambda m: f"head_rank{by_head[int(m.group(1))]}" if by_head else m.group(0), name)

    return table.assign(site=[rename(seed, str(site)) for seed, site in zip(table["seed"], table["site"])])


@styled
def logit_lens(lens_summary: pd.DataFrame, tuned_lens: pd.DataFrame, min_steps: int = 20,
               ranks: Mapping[int, Mapping[int, int]] | None = None,
               controls: pd.DataFrame | None = None) -> Figure:
    """Agreement of decoded Q with the final action per site (bars) and with k vehicles added (lines).

    lens_summary: neurons/lens_summary.csv of every seed plus `seed`: model, site, k (vehicles added,
    NaN for fixed sites), agreement (fraction of steps), n (steps). tuned_lens: neurons/tuned_lens.csv
    likewise plus split (train, held_out; only held_out is drawn). Rows with n < `min_steps` are dropped.
    Means over seeds with 95% t-intervals. ranks: seed -> head index -> closed-loop rank, so that a
    head's site is averaged over seeds by role (head_rank<r>), never by index. controls:
    neurons/lens_controls.csv plus `seed` (model, lens, quantity, value): each lens's majority baseline
    (the most frequent final action's share of the same steps), mean over seeds, drawn as a dashed line.
    """
    lenses = {"logit lens": _sites_by_role(lens_summary, ranks),
              "tuned lens (held out)": _sites_by_role(tuned_lens[tuned_lens["split"] == "held_out"], ranks)}
    data = pd.concat([t[["seed", "model", "site", "k", "agreement", "n"]].assign(lens=name)
                      for name, t in lenses.items()], ignore_index=True)
    data = data[data["n"] >= min_steps]
    fixed = data[data["k"].isna() & ~data["site"].str.endswith("_added")]
    sites = sorted((s for s in pd.unique(lenses["logit lens"]["site"]) if s in set(fixed["site"])),
                   key=lambda s: (s != "ego", s == "full", s))
    added = data[data["site"] == "added"]
    palette = dict(zip(lenses, sns.color_palette("deep", 4)[2:4]))
    fig = Figure(figsize=(15, 5), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True, width_ratios=[1, 1, 1.3])
    for ax, model in zip(axes[:2], MODELS):
        sns.barplot(fixed[fixed["model"] == model], x="site", y="agreement", hue="lens", order=sites,
                    hue_order=list(lenses), errorbar=t_interval, palette=palette, capsize=0.15, ax=ax, legend=False)
        if controls is not None and not controls.empty:
            majority = controls[(controls["model"] == model) & (controls["quantity"] == "majority_rate")]
            for name, lens in (("logit lens", "logit"), ("tuned lens (held out)", "tuned")):
                level = majority.loc[majority["lens"] == lens, "value"].mean()
                ax.axhline(level, color=palette[name], lw=1.8, ls="--",
                           label=f"majority action, {name} steps (mean over seeds)")
        ax.set_title(f"{model}: fixed sites")
        ax.set_xlabel("site (ego alone, ego + one head's write, full network)")
        ax.set_ylabel("fraction of steps where decoded argmax = final action")
    sns.lineplot(added, x="k", y="agreement", hue="lens", style="model", hue_order=list(lenses), style_order=MODELS,
                 errorbar=t_interval, palette=palette, markers=True, ax=axes[2], legend=False)
    axes[2].set_title(f"vehicles added in attention order (rows with n < {min_steps} steps dropped)")
    axes[2].set_xlabel("k, vehicles added to the ego alone (count)")
    axes[2].set_ylabel("fraction of steps where decoded argmax = final action")
    axes[0].set_ylim(0, 1.05)
    markers = dict(zip(MODELS, ("o", "X")))
    majority = ([Line2D([], [], color="0.3", ls="--", lw=1.8, label="majority-action baseline (same steps, per lens)")]
                if controls is not None and not controls.empty else [])
    fig.legend(handles=[*[Patch(color=palette[name], label=name) for name in lenses], *majority,
                        *[Line2D([], [], color="black", marker=markers[m], ls="-" if m == "trained" else "--",
                                 label=f"{m} (right panel)") for m in MODELS]],
               loc="outside lower center", ncols=4)
    fig.suptitle(f"Logit lens vs tuned lens: mean over {data['seed'].nunique()} seeds with 95% t-intervals, "
                 "heads by role, against always choosing the most frequent action")
    return fig
