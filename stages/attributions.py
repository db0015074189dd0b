"""attributions@seed: integrated gradients, layer and neuron conductance, vehicle Shapley values,
deletion/insertion curves, attention vs attribution and vs scene facts, and the model-parameter
randomisation check, on evenly spaced recorded steps of the trained and the untrained network
(egolens.analysis.attribution.attribution_study); summary.json from egolens.analysis.attribution.attribution_summary."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from egolens.analysis.attribution.attribution_study import OUTPUTS, NetworkAnalysis, Steps, combine
from egolens.analysis.attribution.attribution_summary import summarize
from egolens.config import Params
from stages import NETWORKS, load_rollout, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_csv, write_json


def analyse(params: Params, seed: int, label: str) -> dict[str, list[pd.DataFrame]]:
    """Every table of one network's analysis (the trained one's with the randomisation check)."""
    deterministic(seed)
    net = load_net(params, seed, label)
    steps = Steps.from_rollouts(load_rollout(seed, label), params.attributions.max_steps)
    analysis = NetworkAnalysis(net, steps, params.attributions, params.env, params.scene, seed=seed, label=label)
    analysis.run()
    if label == "trained":
        analysis.randomisation(load_net(params, seed, "untrained"))
    return analysis.tables


def main() -> None:
    params, seed = seed_args(__doc__)
    out = seed_results(seed) / "attributions"
    # The two networks' analyses are independent (every random draw is seeded inside them): one
    # process each, so the stage uses both cores. The results do not depend on it.
    with ProcessPoolExecutor(max_workers=len(NETWORKS), mp_context=mp.get_context("fork")) as pool:
        jobs = {label: pool.submit(analyse, params, seed, label) for label in NETWORKS}
        tables = combine({label: job.result() for label, job in jobs.items()})
    for name in OUTPUTS:
        write_csv(out / f"{name}.csv", tables[name])
    write_json(out / "summary.json", summarize(tables, list(NETWORKS), params.attributions.bootstrap_resamples, seed))


if __name__ == "__main__":
    main()
