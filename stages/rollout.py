"""rollout@seed: greedy episodes of the trained and the untrained network on held-out env
seeds, with every activation, the scene facts per vehicle, frames and attention videos."""

from __future__ import annotations

import shutil
from functools import partial

import pandas as pd
import torch
from tqdm import tqdm

from egolens import checkpoint
from egolens.artifacts import npz_bytes, png_bytes
from egolens.config import Params
from egolens.env import make_env, make_runner
from egolens.model import EgoAttentionNetwork
from egolens.rollout import (
    Episode,
    VehicleTracker,
    attention_off_ego,
    play_episode,
    record_episode,
    rollout_arrays,
    steps_table,
    vehicles_table,
)
from egolens.video import episode_images, gif_bytes
from egolens.vocabulary import present
from stages import DATA, NETWORKS, load_net, seed_args, seed_results


def write_bytes(path, data: bytes) -> None:
    with checkpoint.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def play(params: Params, net: EgoAttentionNetwork, label: str) -> list[Episode]:
    """The first `render_episodes` on a rendered env of their own (once rendered, an env draws every
    intermediate frame of every later step), the others on the runner's envs in parallel."""
    cfg = params.rollout
    seeds = cfg.env_seeds
    rendered = make_env(params.env, render_mode="rgb_array")
    tracker = VehicleTracker(rendered)
    try:
        episodes = [play_episode(net, rendered, tracker, seed, render=True) for seed in seeds[:cfg.render_episodes]]
    finally:
        rendered.close()
    plain = seeds[cfg.render_episodes:]
    with make_runner(params.env, min(cfg.num_envs, max(len(plain), 1))) as runner, \
            tqdm(total=len(plain), desc=label, unit="ep") as bar:
        episodes += runner.map(partial(record_episode, net), plain, progress=lambda: bar.update(1))
    return episodes


def write_videos(out, label: str, episodes: list[Episode], arrays: dict, params: Params) -> None:
    start = 0
    for k, episode in enumerate(episodes):
        steps = slice(start, start + len(episode.action))
        start = steps.stop
        if not episode.frames:
            continue
        for t, frame in enumerate(episode.frames):
            write_bytes(out / "frames" / label / f"episode{k:03d}" / f"step{t:02d}.png", png_bytes(frame))
        images = episode_images(episode.frames, episode.pixels, episode.positions, present(episode.obs),
                                arrays["q"][steps], arrays["action"][steps], arrays["attention"][steps],
                                f"{label}, episode {k}", episode.outcome)
        write_bytes(out / "videos" / f"{label}_episode{k:03d}.gif",
                    gif_bytes(images, params.rollout.seconds_per_frame))


def main() -> None:
    params, seed = seed_args(__doc__)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = DATA / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    scene = params.scene
    attention = []
    for label in NETWORKS:
        net = load_net(params, seed, label)
        episodes = play(params, net, f"rollout seed {seed} {label}")
        arrays = rollout_arrays(episodes, net)
        write_bytes(out / f"rollouts_{label}.npz", npz_bytes(arrays))
        checkpoint.atomic_write_text(out / f"steps_{label}.csv",
                                     steps_table(episodes, arrays, params.env).to_csv(index=False))
        vehicles = vehicles_table(arrays, params.env, scene.horizon, scene.collision_radius, scene.min_ego_speed)
        checkpoint.atomic_write_text(out / f"vehicles_{label}.csv", vehicles.to_csv(index=False))
        write_videos(out, label, episodes, arrays, params)
        attention.append(attention_off_ego(arrays).assign(model=label))
        print(f"seed {seed} {label}: {len(arrays['action'])} steps in {len(episodes)} episodes")
    checkpoint.atomic_write_text(seed_results(seed) / "rollout" / "attention_off_ego.csv",
                                 pd.concat(attention).to_csv(index=False))


if __name__ == "__main__":
    main()
