"""circuits@seed: QK/OV circuits per head, feature projections, embedding and output-MLP
composites, trained vs untrained vs difference; attention scores grouped by scene facts."""

from __future__ import annotations

import pandas as pd

from egolens.analysis.reading import circuits
from egolens.scene import scene_facts
from egolens.sites import SCORES
from stages import NETWORKS, load_rollout, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    deterministic(seed)
    nets = {label: load_net(params, seed, label) for label in NETWORKS}
    out = seed_results(seed) / "circuits"
    tables = circuits.weight_tables(nets["trained"], nets["untrained"])
    by_fact = []
    for label in nets:
        arrays = load_rollout(seed, label, ("obs", SCORES, "attention"))
        obs, scores, attention = arrays["obs"], arrays[SCORES][:, :, 0, :], arrays["attention"]
        facts = scene_facts(obs, params.env, params.scene.horizon, params.scene.collision_radius,
                            params.scene.min_ego_speed)
        by_fact.append(circuits.scores_by_facts(scores, facts, params.circuits.fact_bins.model_dump(), attention,
                                                model=label))
    tables["scores_by_fact"] = pd.concat(by_fact, ignore_index=True)
    for name, table in tables.items():
        write_csv(out / f"{name}.csv", table)
    write_json(out / "summary.json", circuits.summarize(tables["compare"]))


if __name__ == "__main__":
    main()
