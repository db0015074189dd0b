"""The study's figures: one pure function per figure, tidy tables in, a matplotlib Figure out.

Every function takes the tables the stages wrote (the per-seed ones concatenated with a `seed`
column where a figure spans seeds) and only draws: no file I/O, no analysis beyond the means,
intervals and orderings a figure needs to show its table. `egolens.names.FIGURES` maps each
figure's file stem (the name of the function that draws it) to its caption;
`egolens.figures.figure_png` renders a figure to PNG bytes that depend only on its content.

Intervals: "95% t-interval over seeds" is mean ± t(0.975, n−1)·sd/√n of the per-seed values
(`t_interval`); interval columns stored in a table (bootstrap CIs over episodes or pairs) are
drawn as stored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from egolens import stats
from egolens.config import EnvConfig
from egolens.figures import VEHICLE_SIZE, draw_vehicle, head_colour, scene_axes
from egolens.names import MODELS
from egolens.scene import denormalize
from egolens.sites import site
from egolens.vocabulary import ACTIONS

ENTITIES = ["ego", "others"]
MODEL_COLOURS = {"trained": "#4C72B0", "untrained": "#A5A5A5"}
REFERENCE_STYLES = {"constant_slower": ("constant SLOWER", "#8C8C8C", ":"),
                    "constant_idle": ("constant IDLE", "#DD8452", "--"),
                    "constant_faster": ("constant FASTER", "#C44E52", ":"),
                    "rule_based": ("rule-based driver", "#8172B3", "-."),
                    "clairvoyant": ("clairvoyant planner (ceiling)", "#55A868", "-")}
"""Label, colour and line style of each reference policy (results/reference)."""
DIVERGING = "RdBu_r"
EGO_COLOUR, OTHER_COLOUR, ROAD_COLOUR = "#2CA02C", "#7F7F7F", "#E6E6E6"
LANE_WIDTH = 4.0
"""m; intersection-v0's roads have one lane each way, so they are drawn 2·LANE_WIDTH wide."""

P = ParamSpec("P")


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% Student-t interval (low, high) of the mean of `values` (NaNs dropped; seaborn's
    `errorbar` callable); a point at the mean if n < 2. The interval of `egolens.aggregate`."""
    mean, low, high, _ = stats.t_interval(np.asarray(values, dtype=np.float64))
    return (mean, mean) if np.isnan(low) else (low, high)


def _styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw under seaborn's whitegrid style and notebook context without touching global rcParams."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with mpl.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}):
            return draw(*args, **kwargs)
    return wrapper


def _matrix(table: pd.DataFrame, rows: Sequence | None = None, cols: Sequence | None = None) -> np.ndarray:
    """A (row, col, value) table as a 2-d array, rows and columns in the given (else appearance) order."""
    pivot = table.pivot(index="row", columns="col", values="value")
    return pivot.reindex(index=pd.unique(table["row"]) if rows is None else rows,
                         columns=pd.unique(table["col"]) if cols is None else cols).to_numpy(dtype=np.float64)


def _symmetric_limit(*arrays: np.ndarray) -> float:
    return max(float(np.nanmax(np.abs(a))) for a in arrays) or 1.0


# ---------------------------------------------------------------------------------------------- circuits

def _rank_name(seed: object, head: int, ranks: Mapping | None) -> str:
    by_head = (ranks or {}).get(seed)
    return f"head_rank{by_head[head]}" if by_head and head in by_head else f"head {head}"


def _projected_circuits(features: pd.DataFrame, raw: pd.DataFrame, matrix: str, raw_matrix: str,
                        ranks: Mapping | None, title: str, ylabel: str, xlabel: str, raw_labels: tuple[str, str],
                        ) -> Figure:
    """Top: per seed (rows) and head (by role) the trained and untrained circuit projected onto the
    input features, one shared symmetric scale. Bottom: the first seed's raw trained matrices."""
    table = features[features["matrix"] == matrix]
    seeds = sorted(table["seed"].unique())
    heads = sorted(table["head"].unique())
    order = {seed: sorted(heads, key=lambda h: _rank_name(seed, h, ranks)) for seed in seeds}
    rows_order = list(pd.unique(table["row"]))
    cols_order = list(pd.unique(table["col"]))

    def panel(seed: object, head: int, model: str) -> np.ndarray:
        part = table[(table["seed"] == seed) & (table["head"] == head) & (table["model"] == model)]
        return part.pivot(index="row", columns="col", values="value").reindex(index=rows_order,
                                                                          columns=cols_order).to_numpy()

    mats = {(seed, h, m): panel(seed, h, m) for seed in seeds for h in heads for m in MODELS}
    limit = _symmetric_limit(*mats.values())
    cell = 0.42
    width = max(len(cols_order) * cell * len(heads) * 2 + 2.5, 9.0)
    top_height = len(seeds) * (len(rows_order) * cell + 1.0)
    fig = Figure(figsize=(width, top_height + 4.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, 4.2])
    axes = top.subplots(len(seeds), 2 * len(heads), squeeze=False)
    image = None
    for r, seed in enumerate(seeds):
        for c, (h, model) in enumerate((h, m) for h in order[seed] for m in MODELS):
            ax = axes[r, c]
            image = ax.imshow(mats[seed, h, model], cmap=DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest",
                              aspect="auto")
            ax.set_title(f"seed {seed}, {_rank_name(seed, h, ranks)}, {model}", fontsize=9)
            ax.set_yticks(range(len(rows_order)), rows_order if c == 0 else [""] * len(rows_order), fontsize=8)
            ax.set_xticks(range(len(cols_order)), cols_order if r == len(seeds) - 1 else [""] * len(cols_order),
                          rotation=60, fontsize=8)
            ax.set_ylabel(ylabel if c == 0 else ylabel.split(" (")[0], fontsize=8)
            ax.set_xlabel(xlabel if r == len(seeds) - 1 else xlabel.split(" (")[0], fontsize=8)
            ax.grid(False)
    top.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=f"entry (shared scale ±{limit:.3g})")
    first = seeds[0]
    raw_table = raw[(raw["matrix"] == raw_matrix) & (raw["model"] == "trained")]
    raw_heads = order[first]
    raw_axes = bottom.subplots(1, len(raw_heads), squeeze=False)[0]
    raw_mats = {h: _matrix(raw_table[raw_table["head"] == h].sort_values(["row", "col"])) for h in raw_heads}
    raw_limit = _symmetric_limit(*raw_mats.values())
    for ax, h in zip(raw_axes, raw_heads):
        image = ax.imshow(raw_mats[h], cmap=DIVERGING, vmin=-raw_limit, vmax=raw_limit, interpolation="nearest")
        ax.set_title(f"seed {first}, {_rank_name(first, h, ranks)}, trained (raw)", fontsize=9)
        ax.set_ylabel(raw_labels[0])
        ax.set_xlabel(raw_labels[1])
        ax.grid(False)
    bottom.colorbar(image, ax=raw_axes.tolist(), shrink=0.8, label=f"raw entry (±{raw_limit:.3g})")
    bottom.suptitle(f"Secondary: the raw {raw_matrix} matrices in embedding dimensions (first seed, trained)",
                    fontsize=10)
    fig.suptitle(title)
    return fig


CIRCUIT_VIEWS = {
    "QK": ("QK_features", "QK circuits projected onto the input features: which ego features (rows) make a head "
           "attend to a vehicle with which features (columns); linear parts of the embeddings",
           "ego feature (query side)", "vehicle feature (key side)",
           ("ego (query-side) embedding dim", "vehicle (key-side) embedding dim")),
    "OV": ("OV_actions", "OV circuits projected onto the input features: what attending to a vehicle with each "
           "feature (columns) writes into each action's Q-value (rows); linear parts of the network",
           "action (Q-value written)", "vehicle feature (value side)",
           ("attention-output dim", "vehicle (value-side) embedding dim")),
}
"""Raw matrix -> (projected matrix in feature_circuits.csv, title, y label, x label, raw panel labels)."""


@_styled
def qk_circuits(feature_circuits: pd.DataFrame, head_matrices: pd.DataFrame,
                ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """QK circuits projected onto the input features for every seed, heads named by role.

    feature_circuits: circuits/feature_circuits.csv of every seed plus `seed`: row, col (feature names,
    'bias' for the constant), value, matrix (QK_features, OV_actions), head, model (trained, untrained).
    head_matrices: circuits/head_matrices.csv of the first seed (raw matrices, the secondary panel).
    ranks: seed -> head index -> closed-loop rank.
    """
    projected, title, ylabel, xlabel, raw_labels = CIRCUIT_VIEWS["QK"]
    return _projected_circuits(feature_circuits, head_matrices, projected, "QK", ranks, title, ylabel, xlabel,
                               raw_labels)


@_styled
def ov_circuits(feature_circuits: pd.DataFrame, head_matrices: pd.DataFrame,
                ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """OV circuits read out as Q-values per action, projected onto the vehicle features, for every
    seed; inputs as `qk_circuits`."""
    projected, title, ylabel, xlabel, raw_labels = CIRCUIT_VIEWS["OV"]
    return _projected_circuits(feature_circuits, head_matrices, projected, "OV", ranks, title, ylabel, xlabel,
                               raw_labels)


@_styled
def embedding_composites(composites: pd.DataFrame) -> Figure:
    """Ego and others embedding composites (rows) × trained / untrained / difference (columns).

    composites: circuits/composites.csv of one seed: row (neuron index as text), col (input feature),
    value, model (trained, untrained, difference), matrix (embedding_ego, embedding_others, ...).
    """
    names = {"embedding_ego": "ego embedding", "embedding_others": "others embedding"}
    fig = Figure(figsize=(11.5, 12), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False)
    for r, (matrix, label) in enumerate(names.items()):
        table = composites[composites["matrix"] == matrix]
        features = list(pd.unique(table["col"]))
        rows = sorted(pd.unique(table["row"]), key=int)
        mats = {m: _matrix(table[table["model"] == m], rows, features) for m in (*MODELS, "difference")}
        shared, diff = _symmetric_limit(mats["trained"], mats["untrained"]), _symmetric_limit(mats["difference"])
        images = {}
        for c, model in enumerate((*MODELS, "difference")):
            limit = diff if model == "difference" else shared
            ax = axes[r, c]
            images[model] = ax.imshow(mats[model], cmap=DIVERGING, vmin=-limit, vmax=limit, aspect="auto",
                                      interpolation="nearest")
            ax.set_xticks(range(len(features)), features, rotation=45, ha="right")
            name = "trained − untrained" if model == "difference" else model
            ax.set_title(f"{label}, {name}\nmax |weight| {np.nanmax(np.abs(mats[model])):.3g}")
            ax.set_xlabel("input feature")
            ax.set_ylabel("embedding neuron (2nd layer)")
            ax.grid(False)
        fig.colorbar(images["trained"], ax=axes[r, :2].tolist(), shrink=0.9,
                     label=f"weight (trained and untrained: shared scale ±{shared:.3g})")
        fig.colorbar(images["difference"], ax=axes[r, 2], shrink=0.9,
                     label=f"trained − untrained (own scale ±{diff:.3g})")
    fig.suptitle("Embedding composites W1·W0 (ReLUs removed, first seed): how each input feature drives each neuron")
    return fig


# ---------------------------------------------------------------------------------------------- attributions

@_styled
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


@_styled
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


@_styled
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
        limit = _symmetric_limit(mat.to_numpy())
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


# ---------------------------------------------------------------------------------------------- neurons

@_styled
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


# ---------------------------------------------------------------------------------------------- scene

SCENE_POINTS = 330.0
"""Width in points a scene panel of `attention_scene` has at least (label placement errs on the side of space)."""
LABEL_SIZE = 8


def label_offsets(centres: np.ndarray, names: Sequence[str], metres_per_point: float,
                  tips: np.ndarray | None = None) -> list[tuple[float, float]]:
    """Offsets (points, x right / y up) for labels of vehicles at centres [N, 2] (metres, y down the
    screen as drawn), chosen greedily, nearest vehicles first, so no two label boxes overlap each other,
    a vehicle or a velocity arrow (centre -> tips [N, 2]): each label tries rings of 8 directions at
    growing distances and takes the first free spot."""
    def to_screen(points: np.ndarray) -> np.ndarray:
        return np.column_stack([points[:, 0], -points[:, 1]]) / metres_per_point          # points, y up

    screen = to_screen(centres)
    car = np.array(VEHICLE_SIZE) / metres_per_point / 2 + 2.0
    taken = [(x - car[0], y - car[0], x + car[0], y + car[0]) for x, y in screen]        # vehicles, any heading
    if tips is not None:
        taken += [(min(a[0], b[0]) - 2, min(a[1], b[1]) - 2, max(a[0], b[0]) + 2, max(a[1], b[1]) + 2)
                  for a, b in zip(screen, to_screen(tips))]
    order = np.argsort(np.hypot(*(screen - screen[:1]).T), kind="stable")
    height = LABEL_SIZE * 1.3
    offsets: list[tuple[float, float]] = [(0.0, 0.0)] * len(names)
    rings = [(radius * np.cos(angle), radius * np.sin(angle)) for radius in (6, 14, 24, 36, 50, 66, 84)
             for angle in np.radians([45, 135, -45, -135, 0, 180, 90, -90])]
    for i in order:
        width = 0.62 * LABEL_SIZE * len(names[i]) + 2

        def box(dx: float, dy: float, x: float = screen[i, 0], y: float = screen[i, 1],
                w: float = width) -> tuple[float, float, float, float]:
            x0 = x + dx - (w if dx < 0 else 0)
            return x0, y + dy - height / 2, x0 + w, y + dy + height / 2

        def free(b: tuple[float, float, float, float]) -> bool:
            return not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)

        # nowhere free: the farthest ring's first spot, up-right
        dx, dy = next((spot for spot in rings if free(box(*spot))), rings[-8])
        offsets[i] = (float(dx), float(dy))
        taken.append(box(dx, dy))
    return offsets


@_styled
def attention_scene(obs: np.ndarray, attention: np.ndarray, action: np.ndarray, q: np.ndarray,
                    vehicle_id: np.ndarray, steps: Sequence[int], env: EnvConfig, title: str) -> Figure:
    """For each of `steps` (rows): the scene (left) and each head's attention over the present vehicles (right).

    obs: [T, E, F] normalised observations of one episode (row 0 the ego); attention: [T, heads, E];
    action: [T] action indices; q: [T, actions]; vehicle_id: [T, E] simulator id of each row (−1 empty);
    steps: indices into T; env: the env config whose features_range denormalises the observation.
    Positions are in metres with y down the screen, as highway-env draws them.
    """
    kin = denormalize(obs, env)
    heads = attention.shape[1]
    shown = np.asarray(steps)
    present = kin.present[shown]
    half = min(float(np.max(np.abs(np.concatenate([kin.x[shown][present], kin.y[shown][present]])))) + 12.0, 110.0)
    fig = Figure(figsize=(13, 5.6 * len(shown) + 0.8), layout="constrained")
    axes = fig.subplots(len(shown), 2, width_ratios=[1.15, 1], squeeze=False)
    for r, t in enumerate(shown):
        scene, bars = axes[r]
        rows = np.nonzero(kin.present[t])[0]
        names = {j: "ego" if j == 0 else f"car {vehicle_id[t, j]}" for j in rows}
        scene.axhspan(-LANE_WIDTH, LANE_WIDTH, color=ROAD_COLOUR, zorder=0)
        scene.axvspan(-LANE_WIDTH, LANE_WIDTH, color=ROAD_COLOUR, zorder=0)
        ego = np.array([kin.x[t, 0], kin.y[t, 0]])
        for h in range(heads):
            for j in rows[1:]:
                weight = float(attention[t, h, j])
                if weight >= 0.01:
                    scene.plot([ego[0], kin.x[t, j]], [ego[1], kin.y[t, j]], color=head_colour(h),
                               lw=0.5 + 5 * weight, alpha=0.25 + 0.6 * weight, zorder=1)
        for j in rows:
            centre = np.array([kin.x[t, j], kin.y[t, j]])
            draw_vehicle(scene, centre[0], centre[1], kin.cos_h[t, j], kin.sin_h[t, j],
                         EGO_COLOUR if j == 0 else OTHER_COLOUR, lw=0.6, zorder=3, label=names[j])
            scene.annotate("", xy=(centre[0] + kin.vx[t, j], centre[1] + kin.vy[t, j]), xytext=tuple(centre),
                           arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.0}, zorder=4)
        centres = np.stack([kin.x[t, rows], kin.y[t, rows]], axis=1)
        tips = centres + np.stack([kin.vx[t, rows], kin.vy[t, rows]], axis=1)
        offsets = label_offsets(centres, [names[j] for j in rows], 2 * half / SCENE_POINTS, tips)
        for j, offset in zip(rows, offsets):
            scene.annotate(names[j], (float(kin.x[t, j]), float(kin.y[t, j])), xytext=offset,
                           textcoords="offset points", fontsize=LABEL_SIZE, zorder=5, va="center",
                           ha="left" if offset[0] >= 0 else "right",
                           arrowprops={"arrowstyle": "-", "color": "0.35", "lw": 0.6}
                           if np.hypot(*offset) > 9 else None)
        scene_axes(scene, 0.0, 0.0, half, f"step {t}: chose {ACTIONS[int(action[t])]}")
        order = sorted(rows, key=lambda j: (j != 0, vehicle_id[t, j]))
        width = 0.8 / heads
        for h in range(heads):
            drawn = bars.bar(np.arange(len(order)) + (h - (heads - 1) / 2) * width, attention[t, h, order],
                             width=width, color=head_colour(h), label=f"head {h}")
            bars.bar_label(drawn, labels=[f"{w:.2f}" if w >= 0.01 else "" for w in attention[t, h, order]],
                           fontsize=7, padding=1)
        bars.set_xticks(range(len(order)), [names[j] for j in order], rotation=45, ha="right")
        bars.set_ylim(0, 1.05)
        bars.set_ylabel("attention weight")
        bars.set_xlabel("vehicle (simulator id)")
        q_text = ", ".join(f"{name} {q[t, a]:.2f}" for a, name in enumerate(ACTIONS))
        bars.set_title(f"Q: {q_text}  →  {ACTIONS[int(action[t])]}")
        bars.legend(loc="upper right", title="attention")
    fig.legend(handles=[Patch(facecolor=EGO_COLOUR, edgecolor="black", label="ego"),
                        Patch(facecolor=OTHER_COLOUR, edgecolor="black", label="other vehicle"),
                        Line2D([], [], color="black", marker=">", label="1 s of travel"),
                        *[Line2D([], [], color=head_colour(h), lw=3, label=f"head {h} attention")
                          for h in range(heads)]],
               loc="outside lower center", ncols=3 + heads)
    fig.suptitle(title)
    return fig


SCENE_STEPS = 4
"""Steps of the first recorded episode drawn by `first_episode_scene` (evenly spaced)."""


def first_episode_scene(arrays: Mapping[str, np.ndarray], env: EnvConfig, seed: int) -> dict[str, object]:
    """The `attention_scene` arguments for SCENE_STEPS evenly spaced steps of the first recorded episode.

    arrays: a rollout's episode [N], obs, attention [N, H, E], action, q and vehicle_id rows."""
    episode = int(arrays["episode"].min())
    rows = np.nonzero(arrays["episode"] == episode)[0]
    steps = np.unique(np.linspace(0, len(rows) - 1, SCENE_STEPS).round().astype(int))
    return {**{key: arrays[key][rows] for key in ("obs", "attention", "action", "q", "vehicle_id")},
            "steps": list(steps), "env": env,
            "title": f"Trained network, seed {seed}, recorded episode {episode}: the scene and each head's attention"}


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


# ---------------------------------------------------------------------------------------------- logit lens

@_styled
def logit_lens(lens_summary: pd.DataFrame, tuned_lens: pd.DataFrame, min_steps: int = 20) -> Figure:
    """Agreement of decoded Q with the final action per site (bars) and with k vehicles added (lines).

    lens_summary: neurons/lens_summary.csv of every seed plus `seed`: model, site, k (vehicles added,
    NaN for fixed sites), agreement (fraction of steps), n (steps). tuned_lens: neurons/tuned_lens.csv
    likewise plus split (train, held_out; only held_out is drawn). Rows with n < `min_steps` are dropped.
    Means over seeds with 95% t-intervals.
    """
    lenses = {"logit lens": lens_summary,
              "tuned lens (held out)": tuned_lens[tuned_lens["split"] == "held_out"]}
    data = pd.concat([t[["seed", "model", "site", "k", "agreement", "n"]].assign(lens=name)
                      for name, t in lenses.items()], ignore_index=True)
    data = data[data["n"] >= min_steps]
    fixed = data[data["k"].isna() & ~data["site"].str.endswith("_added")]
    sites = [s for s in pd.unique(lens_summary["site"]) if s in set(fixed["site"])]
    added = data[data["site"] == "added"]
    palette = dict(zip(lenses, sns.color_palette("deep", 4)[2:4]))
    fig = Figure(figsize=(15, 5), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True, width_ratios=[1, 1, 1.3])
    for ax, model in zip(axes[:2], MODELS):
        sns.barplot(fixed[fixed["model"] == model], x="site", y="agreement", hue="lens", order=sites,
                    hue_order=list(lenses), errorbar=t_interval, palette=palette, capsize=0.15, ax=ax, legend=False)
        ax.set_title(f"{model}: fixed sites")
        ax.set_xlabel("site (ego alone, one head's write, full network)")
        ax.set_ylabel("fraction of steps where decoded argmax = final action")
    sns.lineplot(added, x="k", y="agreement", hue="lens", style="model", hue_order=list(lenses), style_order=MODELS,
                 errorbar=t_interval, palette=palette, markers=True, ax=axes[2], legend=False)
    axes[2].set_title(f"vehicles added in attention order (rows with n < {min_steps} steps dropped)")
    axes[2].set_xlabel("k, vehicles added to the ego alone (count)")
    axes[2].set_ylabel("fraction of steps where decoded argmax = final action")
    axes[0].set_ylim(0, 1.05)
    markers = dict(zip(MODELS, ("o", "X")))
    fig.legend(handles=[*[Patch(color=palette[name], label=name) for name in lenses],
                        *[Line2D([], [], color="black", marker=markers[m], ls="-" if m == "trained" else "--",
                                 label=f"{m} (right panel)") for m in MODELS]],
               loc="outside lower center", ncols=4)
    fig.suptitle(f"Logit lens vs tuned lens: mean over {data['seed'].nunique()} seeds with 95% t-intervals "
                 "(head k of one seed is not head k of another)")
    return fig


# ---------------------------------------------------------------------------------------------- interventions

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


def _seed_palette(seeds: Sequence) -> dict:
    return dict(zip(seeds, sns.color_palette("colorblind", len(seeds))))


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
    if kind == "head":
        return f"{head(target)} {'zeroed' if mode == 'zero' else 'mean-ablated'}"
    if kind == "branch":
        return f"attention branch {'zeroed' if mode == 'zero' else 'mean-ablated'}"
    if kind == "neurons":
        count = f"{len(units)} " if units else ""
        if mode == "top":
            return f"{site(target).label}: {count}top-conductance neurons mean-ablated"
        which = int(mode.removeprefix("random")) + 1
        return f"{site(target).label}: {count}random neurons (set {which}) mean-ablated"
    if kind == "vehicle":
        return f"{VEHICLE_NAMES.get(target, target)} vehicle removed"
    if kind == "edit":
        return "rank-one brake edit" if mode == "rank_one" else f"{head(target)} output scaled {mode}"
    return str(row["condition"])


@_styled
def ablations(closed_loop: pd.DataFrame, metrics: Sequence[str] = ("success", "collision"),
              ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """Each ablation's change in `metrics` vs the unablated agent with its stored paired CI, per seed.

    closed_loop: interventions/closed_loop.csv of every seed plus `seed`: condition, kind, target, mode,
    units, metric, diff, diff_ci_low, diff_ci_high (rate differences, fractions of episodes). The control
    row (kind 'none') is not drawn. ranks: seed -> head index -> closed-loop rank, so that a head is
    named by its role in its own seed (head_rank1 of one seed and of another play the same role); seeds
    are drawn side by side, never averaged.
    """
    data = closed_loop[(closed_loop["kind"] != "none") & closed_loop["metric"].isin(metrics)]
    labels_of = [ablation_label(row, (ranks or {}).get(row["seed"])) for row in data.to_dict("records")]
    data = data.assign(label=labels_of)
    labels = list(pd.unique(data["label"]))
    seeds = sorted(data["seed"].unique())
    palette = _seed_palette(seeds)
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


@_styled
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
    palette = _seed_palette(seeds)
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


# ---------------------------------------------------------------------------------------------- training, evaluation

@_styled
def learning_curves(returns: pd.DataFrame, window: int = 100,
                    reference: Mapping[str, float] | None = None) -> Figure:
    """Training return per episode: every seed's trailing mean over `window` episodes (top), then one panel
    per seed with the raw returns (faint) under that seed's trailing mean; `reference` (policy ->
    mean return on the held-out episodes, results/reference) drawn as horizontal lines in every panel.

    returns: results/seeds/seed<N>/train/plots/metrics/return.tsv of every seed plus `seed`: step
    (training episode, in finish order), return (undiscounted episode return).
    """
    seeds = sorted(returns["seed"].unique())
    palette = _seed_palette(seeds)
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


@_styled
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
                 "success_timing": "success where only waiting for a gap arrives"}


@_styled
def recipe_sweep(table: pd.DataFrame, reference: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """Each recipe's held-out outcomes: one dot per seed and the mean over seeds (bar), per metric
    (panels), beside the reference policies on the same episodes (lines).

    table: results/sweep/recipes.csv (recipe, seed, success_rate, collision_rate, timeout_rate,
    mean_return, and success_go / success_timing when present: success within the episodes a
    constant policy solves / only the clairvoyant planner solves); reference:
    results/reference/metrics.json (policy -> metric -> {mean, ...}).
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


# ---------------------------------------------------------------------------------------------- attention

@_styled
def attention_vs_attribution(agreement: pd.DataFrame, attention_facts: pd.DataFrame,
                             explanations: Sequence[tuple[str, str, str]] = (("ig", "others_zeroed", "q"),
                                                                             ("shapley", "ego_alone", "q"))) -> Figure:
    """Per-step Spearman(attention, attribution) per seed·head (top) and pooled Spearman(attention, fact) (bottom).

    agreement: attributions/agreement.csv of every seed plus `seed`: model, attribution, baseline, quantity,
    head, spearman (per step, over the present vehicles; NaN steps dropped). attention_facts:
    attributions/attention_facts.csv plus `seed`: model, statistic ('pooled' drawn), head, fact, spearman.
    Heads are labelled per seed (s0 h1 = seed 0's head 1): heads of different seeds are unrelated.
    """
    data = agreement.dropna(subset=["spearman"])
    data = data.assign(unit="s" + data["seed"].astype(str) + " h" + data["head"].astype(str))
    units = sorted(pd.unique(data["unit"]))
    fig = Figure(figsize=(14, 10), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    axes = top.subplots(1, len(explanations), sharey=True, squeeze=False)[0]
    for ax, (method, baseline, quantity) in zip(axes, explanations):
        rows = data[(data["attribution"] == method) & (data["baseline"] == baseline) & (data["quantity"] == quantity)]
        sns.boxplot(rows, x="unit", y="spearman", hue="model", order=units, hue_order=list(MODELS),
                    palette=MODEL_COLOURS, fliersize=2, ax=ax, legend=False)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{method} ({baseline}, {quantity}) vs attention")
        ax.set_xlabel("agent seed · head")
        ax.set_ylabel("per-step Spearman ρ (attention, attribution)")
    top.legend(handles=[Patch(facecolor=MODEL_COLOURS[m], edgecolor="#444444", label=m) for m in MODELS],
               title="network", loc="outside right upper")
    facts = attention_facts[attention_facts["statistic"] == "pooled"]
    facts = facts.assign(unit="s" + facts["seed"].astype(str) + " h" + facts["head"].astype(str))
    fact_order = list(pd.unique(facts["fact"]))
    fact_axes = bottom.subplots(1, len(MODELS), squeeze=False)[0]
    for ax, model in zip(fact_axes, MODELS):
        mat = (facts[facts["model"] == model].pivot(index="unit", columns="fact", values="spearman")
               .reindex(index=sorted(pd.unique(facts["unit"])), columns=fact_order))
        sns.heatmap(mat, vmin=-1, vmax=1, cmap=DIVERGING, annot=True, fmt=".2f", ax=ax, cbar=ax is fact_axes[-1],
                    cbar_kws={"label": "pooled Spearman ρ (attention, fact)"})
        ax.set_title(f"{model}: attention vs scene facts (pooled over steps and vehicles)")
        ax.set_xlabel("scene fact (time-to-collision s, distance m, closing speed m/s)")
        ax.set_ylabel("agent seed · head")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle("Attention vs attribution and scene facts, per seed and head")
    return fig


def _unsafe_spans(ax: Axes, sweep: pd.DataFrame) -> None:
    """Shade the gaps at which going now collides (half a grid step either side of each such gap)."""
    gaps = np.sort(pd.unique(sweep["gap"]))
    half = float(np.min(np.diff(gaps))) / 2 if len(gaps) > 1 else 0.25
    for gap in sorted(pd.unique(sweep.loc[sweep["go_outcome"] == "collision", "gap"])):
        ax.axvspan(gap - half, gap + half, color="#F4B6B6", alpha=0.5, lw=0, zorder=0)


@_styled
def designed_scenes(scenes: pd.DataFrame, heads: pd.DataFrame) -> Figure:
    """Designed scenes, one row per sweep (the conflicting vehicle's route, observed or not): the networks'
    Q(SLOWER) − Q(FASTER) against the gap (its arrival at the conflict point minus the ego's), each head's
    attention on that vehicle, and the change of Q(SLOWER) − Q(FASTER) when the head is mean-ablated over
    the sweep, one line per seed; red bands: going now collides; triangles: the clairvoyant planner brakes.

    scenes: scenes/scenes.csv of every seed plus `seed` (route, visible, model, ego_to_junction, ego_speed,
    other_speed, gap, q_slower_minus_faster, go_outcome, clairvoyant_action); heads: scenes/heads.csv plus
    `seed` (route, visible, model, gap, head_role, attention, ablation, effect). Heads are named by role
    (head_rank1 in every seed).
    """
    sweeps = list(scenes[["route", "visible"]].drop_duplicates().itertuples(index=False, name=None))
    fig = Figure(figsize=(16, 3.8 * len(sweeps) + 1), layout="constrained")
    axes = fig.subplots(len(sweeps), 3, squeeze=False, sharex=True)
    trained = heads[heads["model"] == "trained"]
    roles = sorted(pd.unique(trained["head_role"].astype(str)))
    palette = {role: head_colour(i) for i, role in enumerate(roles)}
    for (route, visible), row in zip(sweeps, axes):
        sweep = scenes[(scenes["route"] == route) & (scenes["visible"] == visible)]
        name = f"route {route}, destination {'observed' if visible else 'hidden'}"
        q_ax, att_ax, abl_ax = row
        for ax in row:
            _unsafe_spans(ax, sweep[sweep["model"] == "trained"])
            ax.set_xlabel("gap (s): the vehicle's arrival at the conflict point − the ego's")
        sns.lineplot(sweep, x="gap", y="q_slower_minus_faster", hue="model", hue_order=list(MODELS), units="seed",
                     estimator=None, palette=MODEL_COLOURS, marker="o", markersize=3, ax=q_ax, legend=False)
        brakes = sweep[(sweep["model"] == "trained") & (sweep["clairvoyant_action"] == "SLOWER")].drop_duplicates("gap")
        top = float(np.nanmax(sweep["q_slower_minus_faster"])) if len(sweep) else 1.0
        q_ax.scatter(brakes["gap"], np.full(len(brakes), top), marker="v", color="#55A868", zorder=3)
        q_ax.axhline(0, color="black", lw=0.8)
        q_ax.set_ylabel("Q(SLOWER) − Q(FASTER)\n(> 0: prefers braking)")
        q_ax.set_title(f"{name}\nthe networks' preference")
        sweep_heads = trained[(trained["route"] == route) & (trained["visible"] == visible)]
        attention = sweep_heads[sweep_heads["ablation"] == "mean_over_sweep"]
        sns.lineplot(attention, x="gap", y="attention", hue="head_role", hue_order=roles, units="seed",
                     estimator=None, palette=palette, ax=att_ax, legend=False)
        att_ax.set_ylim(0, 1)
        att_ax.set_ylabel("attention on the vehicle")
        att_ax.set_title(f"{name}\nthe trained heads' attention")
        sns.lineplot(attention, x="gap", y="effect", hue="head_role", hue_order=roles, units="seed",
                     estimator=None, palette=palette, ax=abl_ax, legend=False)
        abl_ax.axhline(0, color="black", lw=0.8)
        abl_ax.set_ylabel("Δ Q(SLOWER) − Q(FASTER)\nhead mean-ablated over the sweep")
        abl_ax.set_title(f"{name}\nwhat each trained head contributes")
    handles = [Line2D([], [], color=MODEL_COLOURS[m], marker="o", label=f"{m} network") for m in MODELS]
    handles += [Line2D([], [], color=palette[r], label=r) for r in roles]
    handles += [Patch(facecolor="#F4B6B6", label="going now collides"),
                Line2D([], [], color="#55A868", marker="v", lw=0, label="clairvoyant planner brakes")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    first = scenes.iloc[0]
    fig.suptitle(f"Designed scenes: the ego {first['ego_to_junction']:g} m before the junction at "
                 f"{first['ego_speed']:g} m/s, one conflicting vehicle at {first['other_speed']:g} m/s swept over "
                 "its arrival gap (one line per seed)")
    return fig
