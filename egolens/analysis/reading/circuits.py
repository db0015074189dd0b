"""Weights per head: QK and OV circuits, their feature-space projections, trained vs untrained.

Conventions (README, the `circuits@<seed>` row of "The pipeline"): D = feature_size, H heads, d = D / H, F = 7 input
features, A = 3 actions, E entities (row 0 the ego). Linear weights are [out, in]. Head h owns
ROWS h·d … (h+1)·d−1 of W_Q, W_K, W_V and COLUMNS h·d … (h+1)·d−1 of W_O (`attention_combine`):

    score_h(ego, j) = eᵀ · QK^h · E_j / √d,     QK^h = W_Q^hᵀ W_K^h               [D, D]
    h_in = ½·e + Σ_h Σ_j a_hj · OV^h · E_j,     OV^h = ½ · W_O^h W_V^h            [D, D]

with e the ego embedding, E_0 = e, E_j = others_embedding(x_j), a the attention pattern, and
h_in the output MLP's input (`attention_layer.hook_resid`). Feature-space projections replace
each MLP by its linear part (every ReLU treated as the identity): exact only while every
pre-activation is positive, a linearisation otherwise.

Matrices are returned as float64 numpy arrays; tables as tidy pandas DataFrames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from egolens.hooks import HookFn, hooks, run_with_cache
from egolens.model import EgoAttentionNetwork, MultiLayerPerceptron
from egolens.sites import EGO_EMBEDDING, OTHERS_EMBEDDING, PATTERN, mlp_posts
from egolens.vocabulary import ACTIONS, REFERENCE_FEATURES

BIAS = "bias"
"""Name of the constant-1 input appended to the features when a bias path is included."""
N_SINGULAR = 5

Embedding = Literal["ego", "others"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _check_head(net: EgoAttentionNetwork, h: int) -> tuple[slice, float]:
    """Units of head h and √d."""
    heads, d = net.attention_layer.heads, net.attention_layer.features_per_head
    if not 0 <= h < heads:
        raise ValueError(f"head {h} out of range for a net with {heads} heads")
    return slice(h * d, (h + 1) * d), math.sqrt(d)


def head_weights(net: EgoAttentionNetwork, h: int) -> dict[str, np.ndarray]:
    """Head h's slices: W_Q, W_K, W_V [d, D] (rows of the Linear weights), W_O [D, d] (columns)."""
    units, _ = _check_head(net, h)
    att = net.attention_layer
    return {"W_Q": _np(att.query_ego.weight[units]), "W_K": _np(att.key_all.weight[units]),
            "W_V": _np(att.value_all.weight[units]), "W_O": _np(att.attention_combine.weight[:, units])}


def qk_circuit(net: EgoAttentionNetwork, h: int) -> np.ndarray:
    """QK^h = W_Q^hᵀ W_K^h [D, D], rank ≤ d: score_h(ego, j) = eᵀ·QK^h·E_j / √d (unscaled here)."""
    w = head_weights(net, h)
    return w["W_Q"].T @ w["W_K"]


def ov_circuit(net: EgoAttentionNetwork, h: int) -> np.ndarray:
    """OV^h = ½·W_O^h W_V^h [D, D], rank ≤ d: attending fully to E_j adds OV^h·E_j to h_in."""
    w = head_weights(net, h)
    return 0.5 * w["W_O"] @ w["W_V"]


def head_writes(net: EgoAttentionNetwork, obs: torch.Tensor, mask: torch.Tensor | None = None,
                fns: dict[str, HookFn] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Additive decomposition of the layer output over (head, entity) writes plus the direct path.

    obs: [B, E, F]; mask: optional [B, E] (True = absent); fns: optional hooks (as in
    `run_with_hooks`, e.g. a patched `attention_layer.hook_pattern`) active during the run.
    Returns (writes [B, H, E, D] with writes[b, h, j] = a_hj · OV^h · E_j, direct [B, D] = ½·e);
    writes.sum((1, 2)) + direct equals the cached `attention_layer.hook_resid`.
    """
    ego_name = mlp_posts(net, EGO_EMBEDDING)[-1]
    oth_name = mlp_posts(net, OTHERS_EMBEDDING)[-1]
    names = [ego_name, oth_name, PATTERN]
    with hooks(net, fns or {}):
        _, cache = run_with_cache(net, obs, names, mask)
    ego = _np(cache[ego_name])                                                  # [B, 1, D]
    entities = np.concatenate([ego, _np(cache[oth_name])], axis=1)             # [B, E, D]
    pattern = _np(cache[PATTERN])[:, :, 0, :]                                   # [B, H, E]
    ov = np.stack([ov_circuit(net, h) for h in range(net.attention_layer.heads)])  # [H, D, D]
    writes = pattern[..., None] * np.einsum("hmn,ben->bhem", ov, entities)
    return writes, 0.5 * ego[:, 0]


def affine_composite(mlp: MultiLayerPerceptron) -> tuple[np.ndarray, np.ndarray]:
    """The MLP with every ReLU removed, x ↦ W·x + b: W = W_L ⋯ W_0 [out, in], b the bias path [out].

    Includes `predict` when the MLP has one.
    """
    linears = [*mlp.layers] + ([mlp.predict] if mlp.predict is not None else [])
    w = np.eye(linears[0].in_features)
    b = np.zeros(linears[0].in_features)
    for linear in linears:
        weight = _np(linear.weight)
        w, b = weight @ w, weight @ b + _np(linear.bias)
    return w, b


def _embedding(net: EgoAttentionNetwork, which: Embedding) -> MultiLayerPerceptron:
    if which not in ("ego", "others"):
        raise ValueError(f"which must be 'ego' or 'others', not {which!r}")
    return net.ego_embedding if which == "ego" else net.others_embedding


def embedding_composite(net: EgoAttentionNetwork, which: Embedding) -> np.ndarray:
    """C = W1·W0 [D, F] of the ego or others embedding (linear part, ReLUs ignored)."""
    return affine_composite(_embedding(net, which))[0]


def embedding_bias_path(net: EgoAttentionNetwork, which: Embedding) -> np.ndarray:
    """c = W1·b0 + b1 [D]: the embedding's linear part is x ↦ C·x + c."""
    return affine_composite(_embedding(net, which))[1]


def output_composite(net: EgoAttentionNetwork) -> np.ndarray:
    """U = predict·W1·W0 [A, D]: the output MLP's linear part (ReLUs ignored) acting on h_in."""
    return affine_composite(net.output_layer)[0]


def output_bias_path(net: EgoAttentionNetwork) -> np.ndarray:
    """The output MLP's bias path [A]: its linear part is h_in ↦ U·h_in + this."""
    return affine_composite(net.output_layer)[1]


def _features_map(net: EgoAttentionNetwork, which: Embedding, bias: bool) -> np.ndarray:
    """C [D, F], or [C | c] [D, F+1] acting on [x; 1] when bias."""
    w, b = affine_composite(_embedding(net, which))
    return np.concatenate([w, b[:, None]], axis=1) if bias else w


def feature_names(bias: bool = False) -> list[str]:
    """Column names of the feature-space projections: the reference features, plus BIAS when bias."""
    return [*REFERENCE_FEATURES, BIAS] if bias else list(REFERENCE_FEATURES)


def qk_features(net: EgoAttentionNetwork, h: int, bias: bool = False) -> np.ndarray:
    """C_egoᵀ·QK^h·C_oth [F, F] (rows ego features, columns other-vehicle features).

    With bias, the maps are [C | c] and the matrix is [F+1, F+1]: in the linear regime
    score_h(x_ego, x_j) = [x_ego; 1]ᵀ · M · [x_j; 1] / √d for j ≥ 1.
    """
    return _features_map(net, "ego", bias).T @ qk_circuit(net, h) @ _features_map(net, "others", bias)


def ov_features(net: EgoAttentionNetwork, h: int, bias: bool = False) -> np.ndarray:
    """OV^h·C_oth [D, F] (or [D, F+1] with bias): what full attention to vehicle x_j writes into h_in."""
    return ov_circuit(net, h) @ _features_map(net, "others", bias)


def ov_actions(net: EgoAttentionNetwork, h: int, bias: bool = False) -> np.ndarray:
    """U·OV^h·C_oth [A, F] (or [A, F+1] with bias): that write read out as Q-values (linear parts)."""
    return output_composite(net) @ ov_features(net, h, bias)


def circuit_matrix_table(matrix: np.ndarray, row_names: Sequence[str] | None = None,
                         col_names: Sequence[str] | None = None, /, **labels: object) -> pd.DataFrame:
    """Long format of a 2-D matrix [R, C] for heatmaps: columns row, col, value, then one per label.

    Names default to the indices; rows come in row-major order. The first three arguments are
    positional-only, so a label may itself be called `matrix`.
    """
    matrix = np.asarray(matrix)
    rows = list(row_names) if row_names is not None else list(range(matrix.shape[0]))
    cols = list(col_names) if col_names is not None else list(range(matrix.shape[1]))
    if (len(rows), len(cols)) != matrix.shape:
        raise ValueError(f"names {len(rows)}×{len(cols)} do not match the matrix {matrix.shape}")
    table = pd.DataFrame({"row": np.repeat(rows, len(cols)), "col": np.tile(cols, len(rows)),
                          "value": matrix.ravel()})
    for key, value in labels.items():
        table[key] = value
    return table


def feature_circuits(net: EgoAttentionNetwork, bias: bool = True, **labels: object) -> pd.DataFrame:
    """Long table of every head's `qk_features` (ego feature × other feature) and `ov_actions`
    (action × other feature), with columns row, col, value, matrix, head and the labels."""
    names = feature_names(bias)
    tables = []
    for h in range(net.attention_layer.heads):
        tables.append(circuit_matrix_table(qk_features(net, h, bias), names, names,
                                           matrix="QK_features", head=h, **labels))
        tables.append(circuit_matrix_table(ov_actions(net, h, bias), list(ACTIONS), names,
                                           matrix="OV_actions", head=h, **labels))
    return pd.concat(tables, ignore_index=True)


def circuit_matrices(net: EgoAttentionNetwork) -> dict[tuple[str, int | str], np.ndarray]:
    """{(matrix name, head or "-"): matrix}: per-head QK, OV, QK_features, OV_actions; the embedding
    composites, the output-MLP composite, and every raw weight matrix (by parameter name)."""
    out: dict[tuple[str, int | str], np.ndarray] = {}
    for h in range(net.attention_layer.heads):
        out["QK", h] = qk_circuit(net, h)
        out["OV", h] = ov_circuit(net, h)
        out["QK_features", h] = qk_features(net, h)
        out["OV_actions", h] = ov_actions(net, h)
    out["embedding_ego", "-"] = embedding_composite(net, "ego")
    out["embedding_others", "-"] = embedding_composite(net, "others")
    out["output_composite", "-"] = output_composite(net)
    for name, param in net.named_parameters():
        if param.ndim == 2:
            out[name, "-"] = _np(param)
    return out


def effective_rank(singular_values: np.ndarray) -> float:
    """exp of the entropy of σ / Σσ (Roy & Vetterli 2007): between 1 and the number of σ > 0."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _spectrum(matrix: np.ndarray, prefix: str, suffix: str) -> dict[str, float]:
    s = np.linalg.svd(matrix, compute_uv=False)
    top = {f"{prefix}{i + 1}_{suffix}": float(s[i]) if i < s.size else np.nan for i in range(N_SINGULAR)}
    return {f"fro_{suffix}": float(np.linalg.norm(matrix)), f"eff_rank_{suffix}": effective_rank(s), **top}


def compare_circuits(trained_net: EgoAttentionNetwork, untrained_net: EgoAttentionNetwork) -> pd.DataFrame:
    """One row per (matrix, head) of `circuit_matrices`, trained T vs untrained U.

    Columns: matrix, head, shape, fro_trained, fro_untrained, rel_diff = ‖T−U‖_F / ‖U‖_F,
    eff_rank_*, sv1_* … sv5_* (largest singular values, NaN beyond the matrix's rank bound).
    """
    trained, untrained = circuit_matrices(trained_net), circuit_matrices(untrained_net)
    if trained.keys() != untrained.keys() or any(trained[k].shape != untrained[k].shape for k in trained):
        raise ValueError("the two networks do not have the same architecture")
    rows = []
    for (name, head), t in trained.items():
        u = untrained[name, head]
        fro_u = np.linalg.norm(u)
        rel = np.linalg.norm(t - u) / fro_u if fro_u > 0 else np.nan
        rows.append({"matrix": name, "head": head, "shape": "×".join(map(str, t.shape)), "rel_diff": float(rel),
                     **_spectrum(t, "sv", "trained"), **_spectrum(u, "sv", "untrained")})
    table = pd.DataFrame(rows)
    first = ["matrix", "head", "shape", "fro_trained", "fro_untrained", "rel_diff", "eff_rank_trained",
             "eff_rank_untrained"]
    return table[first + [c for c in table.columns if c not in first]]


def scores_by_fact(scores: np.ndarray, facts: dict[str, np.ndarray], fact: str, bins: int | Sequence[float],
                   attention: np.ndarray | None = None) -> pd.DataFrame:
    """Mean pre-mask attention score (and attention) per head and bin of a scene fact.

    scores: [N, H, E] (`attention_layer.hook_scores`[:, :, 0, :]); facts: {name: [N, E]}, NaN
    where the fact does not apply (absent vehicles, the ego); bins: as `pandas.cut` (a count of
    equal-width bins or the edges, right-closed); attention: optional [N, H, E] pattern.
    Returns one row per (head, bin), empty bins included: fact, head, bin, bin_left, bin_right,
    count, mean_score (and mean_attention).
    """
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(facts[fact], dtype=np.float64)
    n, heads, entities = scores.shape
    if values.shape != (n, entities):
        raise ValueError(f"fact {fact!r} has shape {values.shape}, expected {(n, entities)}")
    keep = ~np.isnan(values)                                                       # [N, E]
    binned = pd.cut(values[keep], bins)
    tables = []
    for h in range(heads):
        frame = pd.DataFrame({"bin": binned, "score": scores[:, h][keep]})
        if attention is not None:
            frame["attention"] = np.asarray(attention, dtype=np.float64)[:, h][keep]
        grouped = frame.groupby("bin", observed=False)
        table = grouped.size().rename("count").to_frame()
        table["mean_score"] = grouped["score"].mean()
        if attention is not None:
            table["mean_attention"] = grouped["attention"].mean()
        table = table.reset_index()
        table.insert(0, "head", h)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "fact", fact)
    intervals = pd.IntervalIndex(out["bin"].astype("interval"))
    out.insert(3, "bin_left", intervals.left)
    out.insert(4, "bin_right", intervals.right)
    out["bin"] = out["bin"].astype(str)
    return out


def scores_by_facts(scores: np.ndarray, facts: dict[str, np.ndarray], fact_bins: Mapping[str, int | Sequence[float]],
                    attention: np.ndarray | None = None, **labels: object) -> pd.DataFrame:
    """`scores_by_fact` for each fact of `fact_bins` ({fact: bins}, in that order), one table with the
    `labels` (e.g. model="trained") as its first columns."""
    table = pd.concat([scores_by_fact(scores, facts, fact, bins, attention) for fact, bins in fact_bins.items()],
                      ignore_index=True)
    for i, (key, value) in enumerate(labels.items()):
        table.insert(i, key, value)
    return table


# --------------------------------------------------------------------------------------------
# Trained vs untrained: the circuits stage's tables and summary

MODELS = ("trained", "untrained", "difference")
"""Labels of the two networks' matrices and of their difference (trained − untrained)."""


def _with_difference(trained: np.ndarray, untrained: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(MODELS, (trained, untrained, trained - untrained)))


def head_matrices(trained: EgoAttentionNetwork, untrained: EgoAttentionNetwork) -> pd.DataFrame:
    """QK and OV [D, D] per head of both networks and their difference, long format (row, col,
    value, model, matrix, head)."""
    tables = []
    for h in range(trained.attention_layer.heads):
        for name, fn in (("QK", qk_circuit), ("OV", ov_circuit)):
            tables += [circuit_matrix_table(m, None, None, model=label, matrix=name, head=h)
                       for label, m in _with_difference(fn(trained, h), fn(untrained, h)).items()]
    return pd.concat(tables, ignore_index=True)


def composites(trained: EgoAttentionNetwork, untrained: EgoAttentionNetwork) -> pd.DataFrame:
    """The embedding composites W1·W0 [D, F] (embedding_ego, embedding_others; columns named by
    feature) and the output composite [A, D] (output_composite; rows named by action) of both
    networks and their difference, long format (row, col, value, model, matrix)."""
    getters = {"embedding_ego": lambda n: embedding_composite(n, "ego"),
               "embedding_others": lambda n: embedding_composite(n, "others"),
               "output_composite": output_composite}
    tables = []
    for name, get in getters.items():
        rows = list(ACTIONS) if name == "output_composite" else None
        cols = None if name == "output_composite" else list(REFERENCE_FEATURES)
        tables += [circuit_matrix_table(m, rows, cols, model=label, matrix=name)
                   for label, m in _with_difference(get(trained), get(untrained)).items()]
    return pd.concat(tables, ignore_index=True)


def weight_tables(trained: EgoAttentionNetwork, untrained: EgoAttentionNetwork) -> dict[str, pd.DataFrame]:
    """The circuits stage's tables from the weights alone: compare (`compare_circuits`),
    head_matrices, composites and feature_circuits (`feature_circuits` with the bias path, per
    model)."""
    features = pd.concat([feature_circuits(net, bias=True, model=label)
                          for label, net in (("trained", trained), ("untrained", untrained))], ignore_index=True)
    return {"compare": compare_circuits(trained, untrained), "head_matrices": head_matrices(trained, untrained),
            "composites": composites(trained, untrained), "feature_circuits": features}


SUMMARY_PER_HEAD = ("QK", "OV", "QK_features", "OV_actions")
SUMMARY_WHOLE = ("embedding_ego", "embedding_others", "output_composite")


def summarize(compare: pd.DataFrame) -> dict:
    """The circuits stage's summary.json from a `compare_circuits` table: the relative Frobenius
    difference ‖T−U‖_F / ‖U‖_F of the trained vs the untrained network, rounded to 6 decimals,
    per head (`head<h>`) for QK, OV, QK_features and OV_actions, and for the embedding and output
    composites: {"rel_diff_trained_vs_untrained": {"QK": {"head0": …}, …, "output_composite": …}}.
    """
    out: dict = {}
    for row in compare.itertuples():
        if row.matrix in SUMMARY_PER_HEAD:
            out.setdefault(row.matrix, {})[f"head{row.head}"] = round(row.rel_diff, 6)
        elif row.matrix in SUMMARY_WHOLE:
            out[row.matrix] = round(row.rel_diff, 6)
    return {"rel_diff_trained_vs_untrained": out}
