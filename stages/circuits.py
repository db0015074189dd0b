"""circuits@seed: QK/OV circuits per head, feature projections, embedding and output-MLP
composites, trained vs untrained vs difference; attention scores grouped by scene facts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from egolens import checkpoint
from egolens.analysis import circuits
from egolens.artifacts import json_text
from egolens.model import EgoAttentionNetwork
from egolens.scene import scene_facts
from egolens.vocabulary import ACTIONS, REFERENCE_FEATURES
from stages import DATA, NETWORKS, load_net, seed_args, seed_results

FACT_BINS = {
    "distance": [0, 10, 20, 30, 40, 60, 100, 150],
    "ttc": [0, 1, 2, 3, 5, 8, 13, np.inf],
    "bearing_deg": [-180, -135, -90, -45, -15, 15, 45, 90, 135, 180],
}


def head_matrices(nets: dict[str, EgoAttentionNetwork]) -> pd.DataFrame:
    """QK and OV per head for trained, untrained and their difference, long format."""
    tables = []
    for h in range(nets["trained"].attention_layer.heads):
        for name, fn in (("QK", circuits.qk_circuit), ("OV", circuits.ov_circuit)):
            values = {label: fn(net, h) for label, net in nets.items()}
            values["difference"] = values["trained"] - values["untrained"]
            tables += [circuits.circuit_matrix_table(m, None, None, model=label, matrix=name, head=h)
                       for label, m in values.items()]
    return pd.concat(tables, ignore_index=True)


def composites(nets: dict[str, EgoAttentionNetwork]) -> pd.DataFrame:
    """Embedding composites W1·W0 [64, 7] (ego, others) and the output composite [3, 64]."""
    tables = []
    getters = {"embedding_ego": lambda n: circuits.embedding_composite(n, "ego"),
               "embedding_others": lambda n: circuits.embedding_composite(n, "others"),
               "output_composite": circuits.output_composite}
    for name, get in getters.items():
        values = {label: get(net) for label, net in nets.items()}
        values["difference"] = values["trained"] - values["untrained"]
        for label, m in values.items():
            rows = list(ACTIONS) if name == "output_composite" else None
            cols = None if name == "output_composite" else list(REFERENCE_FEATURES)
            tables.append(circuits.circuit_matrix_table(m, rows, cols, model=label, matrix=name))
    return pd.concat(tables, ignore_index=True)


def scores_by_facts(params, seed: int, label: str) -> pd.DataFrame:
    """Recorded pre-mask scores and attention, grouped by distance, time-to-collision and bearing."""
    with np.load(DATA / f"seed{seed}" / f"rollouts_{label}.npz") as arrays:
        obs, scores = arrays["obs"], arrays["attention_layer.hook_scores"][:, :, 0, :]
        attention = arrays["attention"]
    facts = scene_facts(obs, params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    tables = [circuits.scores_by_fact(scores, facts, fact, bins, attention) for fact, bins in FACT_BINS.items()]
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "model", label)
    return table


def summary(compare: pd.DataFrame) -> dict:
    """Relative Frobenius difference trained vs untrained per matrix (and head)."""
    out: dict = {}
    for row in compare.itertuples():
        if row.matrix in ("QK", "OV", "QK_features", "OV_actions"):
            out.setdefault(row.matrix, {})[f"head{row.head}"] = round(row.rel_diff, 6)
        elif row.matrix in ("embedding_ego", "embedding_others", "output_composite"):
            out[row.matrix] = round(row.rel_diff, 6)
    return {"rel_diff_trained_vs_untrained": out}


def main() -> None:
    params, seed = seed_args(__doc__)
    torch.set_num_threads(1)
    nets = {label: load_net(params, seed, label) for label in NETWORKS}
    out = seed_results(seed) / "circuits"
    compare = circuits.compare_circuits(nets["trained"], nets["untrained"])
    features = pd.concat([circuits.feature_circuits(net, bias=True, model=label) for label, net in nets.items()],
                         ignore_index=True)
    by_fact = pd.concat([scores_by_facts(params, seed, label) for label in nets], ignore_index=True)
    tables = {"compare.csv": compare, "head_matrices.csv": head_matrices(nets), "composites.csv": composites(nets),
              "feature_circuits.csv": features, "scores_by_fact.csv": by_fact}
    for name, table in tables.items():
        checkpoint.atomic_write_text(out / name, table.to_csv(index=False, float_format="%.6g"))
    checkpoint.atomic_write_text(out / "summary.json", json_text(summary(compare)))


if __name__ == "__main__":
    main()
