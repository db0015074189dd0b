"""rollout@seed: greedy episodes of the trained and the untrained network on held-out env
seeds, with every activation, the scene facts per vehicle, frames and attention videos."""

from __future__ import annotations

import shutil

import pandas as pd
import torch
from tqdm import tqdm

from egolens import checkpoint
from egolens.artifacts import npz_bytes
from egolens.rollout import attention_off_ego, play_episodes, rollout_arrays, steps_table, vehicles_table
from egolens.video import episode_media
from stages import DATA, NETWORKS, load_net, seed_args, seed_results


def write_bytes(path, data: bytes) -> None:
    with checkpoint.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def main() -> None:
    params, seed = seed_args(__doc__)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = DATA / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    scene, cfg = params.scene, params.rollout
    attention = []
    for label in NETWORKS:
        net = load_net(params, seed, label)
        unrendered = len(cfg.env_seeds) - cfg.render_episodes
        with tqdm(total=unrendered, desc=f"rollout seed {seed} {label}", unit="ep") as bar:
            episodes = play_episodes(net, params.env, cfg.env_seeds, cfg.render_episodes, cfg.num_envs,
                                     progress=lambda: bar.update(1))
        arrays = rollout_arrays(episodes, net)
        write_bytes(out / f"rollouts_{label}.npz", npz_bytes(arrays))
        checkpoint.atomic_write_text(out / f"steps_{label}.csv",
                                     steps_table(episodes, arrays, params.env).to_csv(index=False))
        vehicles = vehicles_table(arrays, params.env, scene.horizon, scene.collision_radius, scene.min_ego_speed)
        checkpoint.atomic_write_text(out / f"vehicles_{label}.csv", vehicles.to_csv(index=False))
        for path, data in episode_media(label, episodes, arrays, cfg.seconds_per_frame).items():
            write_bytes(out / path, data)
        attention.append(attention_off_ego(arrays).assign(model=label))
        print(f"seed {seed} {label}: {len(arrays['action'])} steps in {len(episodes)} episodes")
    checkpoint.atomic_write_text(seed_results(seed) / "rollout" / "attention_off_ego.csv",
                                 pd.concat(attention).to_csv(index=False))


if __name__ == "__main__":
    main()
