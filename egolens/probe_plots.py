"""The probes and steering stages' figures: tidy tables in, a matplotlib Figure out, sites and
targets named in words (`site_words`, `probe_targets.TARGETS` labels); no file I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from egolens.analysis.reading.probe_targets import TARGETS
from egolens.sites import ATTENTION, site

MODEL_COLOURS = {"trained": "#4C72B0", "untrained": "#A5A5A5"}
_ATTENTION_WORDS = {"hook_q": "attention query", "hook_k": "attention keys (per vehicle)",
                    "hook_v": "attention values (per vehicle)", "hook_z": "attention output per head",
                    "hook_combined": "attention output (heads combined)", "hook_resid": "attention layer output"}


def site_words(name: str) -> str:
    """A reader's name for a hook site: "others embedding, layer 2", "attention keys (per vehicle)"."""
    prefix = f"{ATTENTION}."
    if name.startswith(prefix) and name[len(prefix):] in _ATTENTION_WORDS:
        return _ATTENTION_WORDS[name[len(prefix):]]
    return site(name).label


def _wrap(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def _probe_panel(ax: Axes, rows: pd.DataFrame, target: str) -> None:
    sites = list(pd.unique(rows["site"]))
    x = np.arange(len(sites))
    for offset, (input_, task, label, colour, marker) in zip(
            (-0.15, 0.0, 0.15), (("site", "probe", "trained network", MODEL_COLOURS["trained"], "o"),
                                 ("untrained", "probe", "untrained network", MODEL_COLOURS["untrained"], "s"),
                                 ("site", "control", "control task (trained)", "#C44E52", "x"))):
        part = rows[(rows["input"] == input_) & (rows["task"] == task)].set_index("site").reindex(sites)
        value = part["value"].to_numpy(dtype=float)
        error = np.abs(np.vstack([value - part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float) - value]))
        ax.errorbar(x + offset, value, yerr=np.nan_to_num(error), fmt=marker, color=colour, label=label, capsize=3)
    if not np.isfinite(rows["value"].to_numpy(dtype=float)).any():
        note = next((n for n in rows["note"] if isinstance(n, str) and n), "no score")
        ax.text(0.5, 0.5, _wrap(f"not fitted: {note}"), ha="center", va="center", transform=ax.transAxes, fontsize=8)
    raw = rows[(rows["input"] == "obs") & (rows["task"] == "probe")]["value"]
    if len(raw) and np.isfinite(raw.iloc[0]):
        ax.axhline(float(raw.iloc[0]), color="#55A868", linestyle="--", label="raw observation")
    ax.set_xticks(x, [_wrap(site_words(s), 18) for s in sites], fontsize=7)
    ax.set_title(_wrap(TARGETS[target].label), fontsize=9)
    ax.set_ylabel(str(rows["metric"].iloc[0]).replace("_", " "))


def probe_scores(primary: pd.DataFrame) -> Figure:
    """Held-out probe score per site, one panel per target, with 95% bootstrap CIs over held-out
    episodes: the trained network, the untrained network at the same site, the control task on the
    trained network, and the raw observation (a dashed line).

    primary: the probes table's rows on each target's primary metric (`probe_study.primary_rows`):
    target, site, input, task, metric, value, ci_low, ci_high, note (why a probe was not fitted)."""
    targets = list(pd.unique(primary["target"]))
    columns = min(3, len(targets))
    rows_n = int(np.ceil(len(targets) / columns))
    fig = Figure(figsize=(5.2 * columns, 3.6 * rows_n + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows_n, columns, squeeze=False)).ravel()
    with sns.axes_style("whitegrid"):
        for ax, target in zip(axes, targets):
            _probe_panel(ax, primary[primary["target"] == target], target)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("What a linear probe reads at each layer (held-out episodes; AUC for yes/no facts, balanced "
                 "accuracy for categories, R² for quantities)")
    return fig


def steering_dose_response(comparison: pd.DataFrame, metrics: tuple[str, ...] = ("collision", "success")) -> Figure:
    """Closed-loop rate per α (in units of the site's activation RMS), one column per site and one row
    per metric: the probe direction and the SLOWER − FASTER direction with their 95% bootstrap CIs,
    and the band the random directions span (min to max over them).

    comparison: the steering table (`steering_study`): site, direction, kind, source, alpha, metric,
    value, value_ci_low, value_ci_high."""
    sites = list(pd.unique(comparison["site"]))
    fig = Figure(figsize=(max(5.2 * len(sites), 7.0), 3.4 * len(metrics) + 0.8), layout="constrained")
    axes = fig.subplots(len(metrics), len(sites), squeeze=False)
    palette = sns.color_palette("deep", 4)
    for column, name in enumerate(sites):
        for row, metric in enumerate(metrics):
            ax = axes[row, column]
            data = comparison[(comparison["site"] == name) & (comparison["metric"] == metric)]
            random = data[data["kind"] == "random"].groupby("alpha")["value"]
            if len(random):
                ax.fill_between(random.min().index, random.min().to_numpy(), random.max().to_numpy(),
                                color="#BBBBBB", alpha=0.6, label="random directions (range)")
            steered = data[data["kind"] != "random"].groupby("direction", sort=False)
            for colour, (_, part) in zip(palette, steered):
                part = part.sort_values("alpha")
                source = part["source"].iloc[0]
                label = f"probe: {TARGETS[source].label}" if source else "SLOWER − FASTER mean difference"
                ax.errorbar(part["alpha"], part["value"],
                            yerr=np.abs(np.vstack([part["value"] - part["value_ci_low"],
                                                   part["value_ci_high"] - part["value"]])),
                            marker="o", color=colour, capsize=3, label=_wrap(label, 45))
            ax.axvline(0.0, color="black", linewidth=0.6)
            ax.set(xlabel="α (site activation RMS)", ylabel=f"{metric} rate", ylim=(-0.05, 1.05))
            if row == 0:
                ax.set_title(_wrap(site_words(name), 45))
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(_wrap("Steering in closed loop: outcome rate against the steering strength α, 95% bootstrap CIs "
                       "over episodes", 70))
    return fig
