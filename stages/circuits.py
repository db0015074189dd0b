"""circuits@seed: QK/OV circuits per head, feature projections, embedding and output-MLP
composites, trained vs untrained vs difference; attention scores grouped by scene facts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from egolens import checkpoint
from egolens.analysis import circuits
from egolens.artifacts import json_text
from egolens.scene import scene_facts
from egolens.sites import SCORES
from stages import DATA, NETWORKS, load_net, seed_args, seed_results


def main() -> None:
    params, seed = seed_args(__doc__)
    torch.set_num_threads(1)
    nets = {label: load_net(params, seed, label) for label in NETWORKS}
    out = seed_results(seed) / "circuits"
    tables = circuits.weight_tables(nets["trained"], nets["untrained"])
    by_fact = []
    for label in nets:
        with np.load(DATA / f"seed{seed}" / f"rollouts_{label}.npz") as arrays:
            obs, scores = arrays["obs"], arrays[SCORES][:, :, 0, :]
            attention = arrays["attention"]
        facts = scene_facts(obs, params.env, params.scene.horizon, params.scene.collision_radius,
                            params.scene.min_ego_speed)
        by_fact.append(circuits.scores_by_facts(scores, facts, params.circuits.fact_bins.model_dump(), attention,
                                                model=label))
    tables["scores_by_fact"] = pd.concat(by_fact, ignore_index=True)
    for name, table in tables.items():
        checkpoint.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
    checkpoint.atomic_write_text(out / "summary.json", json_text(circuits.summarize(tables["compare"])))


if __name__ == "__main__":
    main()
