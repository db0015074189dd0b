"""interventions@seed: what the trained network uses. Ablations (zero, mean, resample) of heads, the attention branch,
top-conductance (the attributions stage's neuron ranking) vs random neurons, and vehicles (open
loop on recorded steps, closed loop on held-out env seeds paired with the unablated agent, heads
chosen on one half of those episodes and measured on the other, with each condition's action shares);
activation and path patching on clean/corrupted pairs; perturbation sweeps per layer; a rank-one
edit and a head-scaling edit."""

from __future__ import annotations

import pandas as pd
from tqdm import tqdm

from egolens.analysis.intervening import intervention_study as study
from egolens.env import make_runner
from egolens.scene import scene_facts
from egolens.sites import neuron_layers
from stages import load_rollout, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    cfg = params.interventions
    deterministic(seed)
    net = load_net(params, seed, "trained")
    arrays = load_rollout(seed, "trained")
    facts = scene_facts(arrays["obs"], params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    ranking = pd.read_csv(seed_results(seed) / "attributions" / "neuron_ranking.csv")
    with make_runner(params.env, min(cfg.num_envs, len(cfg.env_seeds))) as runner:
        tables = study.run_interventions(net, arrays, facts, ranking[ranking["model"] == "trained"], cfg, runner,
                                         seed, progress=lambda items, desc: tqdm(items, desc=desc))

    out = seed_results(seed) / "interventions"
    for name, table in tables.files().items():
        write_csv(out / name, table)
    summary = study.summarize(tables, net.attention_layer.heads, neuron_layers(net), cfg.notebook_size,
                              cfg.equivalence_margin, cfg.bootstrap_resamples, seed)
    write_json(out / "summary.json", summary)


if __name__ == "__main__":
    main()
