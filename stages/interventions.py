"""interventions@seed: what the trained network uses. Ablations of heads, the attention branch,
top-conductance (the attributions stage's neuron ranking) vs random neurons, and vehicles (open
loop on recorded steps, closed loop on held-out env seeds paired with the unablated agent);
activation and path patching on clean/corrupted pairs; perturbation sweeps per layer; a rank-one
edit and a head-scaling edit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from egolens import checkpoint
from egolens.analysis import intervention_study as study
from egolens.artifacts import json_text
from egolens.env import make_runner
from egolens.scene import scene_facts
from egolens.sites import neuron_layers
from stages import DATA, load_net, seed_args, seed_results


def main() -> None:
    params, seed = seed_args(__doc__)
    cfg = params.interventions
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    net = load_net(params, seed, "trained")
    with np.load(DATA / f"seed{seed}" / "rollouts_trained.npz") as data:
        arrays = {name: data[name] for name in data.files}
    facts = scene_facts(arrays["obs"], params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    ranking = pd.read_csv(seed_results(seed) / "attributions" / "neuron_ranking.csv")
    with make_runner(params.env, min(cfg.num_envs, len(cfg.env_seeds))) as runner:
        tables = study.run_interventions(net, arrays, facts, ranking[ranking["model"] == "trained"], cfg, runner,
                                         seed, progress=lambda items, desc: tqdm(items, desc=desc))

    out = seed_results(seed) / "interventions"
    for name, table in tables.files().items():
        checkpoint.atomic_write_text(out / name, table.to_csv(index=False, float_format="%.6g"))
    summary = study.summarize(tables, net.attention_layer.heads, neuron_layers(net), cfg.notebook_size)
    checkpoint.atomic_write_text(out / "summary.json", json_text(summary))


if __name__ == "__main__":
    main()
