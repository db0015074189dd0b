"""rollout@seed: greedy episodes of the trained and the untrained network on held-out env
seeds, with every activation, the scene facts per vehicle, frames and attention videos."""

from __future__ import annotations

import shutil

import pandas as pd
from tqdm import tqdm

from egolens.artifacts import npz_bytes
from egolens.numbers import EXACT
from egolens.rollout import attention_off_ego, play_episodes, rollout_arrays, steps_table, vehicles_table
from egolens.video import episode_media
from stages import DATA, NETWORKS, rollout_path, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_bytes, write_csv


def main() -> None:
    params, seed = seed_args(__doc__)
    deterministic(seed)
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
        write_bytes(rollout_path(seed, label), npz_bytes(arrays))
        write_csv(out / f"steps_{label}.csv", steps_table(episodes, arrays, params.env), EXACT)
        vehicles = vehicles_table(arrays, params.env, scene.horizon, scene.collision_radius, scene.min_ego_speed)
        write_csv(out / f"vehicles_{label}.csv", vehicles, EXACT)
        for path, data in episode_media(label, episodes, arrays, cfg.seconds_per_frame).items():
            write_bytes(out / path, data)
        attention.append(attention_off_ego(arrays).assign(model=label))
        print(f"seed {seed} {label}: {len(arrays['action'])} steps in {len(episodes)} episodes")
    write_csv(seed_results(seed) / "rollout" / "attention_off_ego.csv", pd.concat(attention), EXACT)


if __name__ == "__main__":
    main()
