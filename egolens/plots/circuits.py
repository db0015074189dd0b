"""Figures of the weights per head: QK and OV circuits projected to the input features, and the
embedding composites (trained vs untrained)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from egolens.names import MODELS
from egolens.plots.style import (
    DIVERGING,
    as_matrix,
    styled,
    symmetric_limit,
)


def _rank_name(seed: object, head: int, ranks: Mapping | None) -> str:
    by_head = (ranks or {}).get(seed)
    return f"head_rank{by_head[head]}" if by_head and head in by_head else f"head {head}"


def _projected_circuits(features: pd.DataFrame, raw: pd.DataFrame, matrix: str, raw_matrix: str,
                        ranks: Mapping | None, title: str, ylabel: str, xlabel: str, raw_labels: tuple[str, str],
                        ) -> Figure:
    """Top: per seed (rows) and head (by role) the trained and untrained circuit projected onto the
    input features, each network on its own symmetric scale (shared by its panels, one colour bar each).
    Bottom: the first seed's raw trained matrices."""
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
    # one colour scale per network: at a shared scale the untrained panels (weights ~100x smaller) are blank
    limits = {m: symmetric_limit(*(mat for (_, _, model), mat in mats.items() if model == m)) for m in MODELS}
    cell = 0.42
    width = max(len(cols_order) * cell * len(heads) * 2 + 2.5, 9.0)
    top_height = len(seeds) * (len(rows_order) * cell + 1.0)
    fig = Figure(figsize=(width, top_height + 4.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, 4.2])
    axes = top.subplots(len(seeds), 2 * len(heads), squeeze=False)
    images: dict[str, AxesImage] = {}
    for r, seed in enumerate(seeds):
        for c, (h, model) in enumerate((h, m) for m in MODELS for h in order[seed]):
            ax = axes[r, c]
            images[model] = ax.imshow(mats[seed, h, model], cmap=DIVERGING, vmin=-limits[model], vmax=limits[model],
                                      interpolation="nearest", aspect="auto")
            ax.set_title(f"seed {seed}, {_rank_name(seed, h, ranks)}, {model}", fontsize=9)
            ax.set_yticks(range(len(rows_order)), rows_order if c == 0 else [""] * len(rows_order), fontsize=8)
            ax.set_xticks(range(len(cols_order)), cols_order if r == len(seeds) - 1 else [""] * len(cols_order),
                          rotation=60, fontsize=8)
            ax.set_ylabel(ylabel if c == 0 else ylabel.split(" (")[0], fontsize=8)
            ax.set_xlabel(xlabel if r == len(seeds) - 1 else xlabel.split(" (")[0], fontsize=8)
            ax.grid(False)
    for m, model in enumerate(MODELS):
        columns = list(range(m * len(heads), (m + 1) * len(heads)))
        top.colorbar(images[model], ax=axes[:, columns].ravel().tolist(), shrink=0.8, pad=0.01,
                     label=f"{model} entry (own scale ±{limits[model]:.3g})")
    first = seeds[0]
    raw_table = raw[(raw["matrix"] == raw_matrix) & (raw["model"] == "trained")]
    raw_heads = order[first]
    raw_axes = bottom.subplots(1, len(raw_heads), squeeze=False)[0]
    raw_mats = {h: as_matrix(raw_table[raw_table["head"] == h].sort_values(["row", "col"])) for h in raw_heads}
    raw_limit = symmetric_limit(*raw_mats.values())
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


@styled
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


@styled
def ov_circuits(feature_circuits: pd.DataFrame, head_matrices: pd.DataFrame,
                ranks: Mapping[int, Mapping[int, int]] | None = None) -> Figure:
    """OV circuits read out as Q-values per action, projected onto the vehicle features, for every
    seed; inputs as `qk_circuits`."""
    projected, title, ylabel, xlabel, raw_labels = CIRCUIT_VIEWS["OV"]
    return _projected_circuits(feature_circuits, head_matrices, projected, "OV", ranks, title, ylabel, xlabel,
                               raw_labels)


@styled
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
        mats = {m: as_matrix(table[table["model"] == m], rows, features) for m in (*MODELS, "difference")}
        shared, diff = symmetric_limit(mats["trained"], mats["untrained"]), symmetric_limit(mats["difference"])
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
