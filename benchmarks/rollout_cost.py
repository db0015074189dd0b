"""Rollout recording cost: `python -m benchmarks.rollout_cost [--episodes N]`.

Prints seconds per recorded step without and with rendering (frames + attention video), the
rendering slow-down ratio, and the size of the recording per 1000 steps.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from egolens.artifacts import npz_bytes, png_bytes
from egolens.config import EnvConfig
from egolens.env import make_env
from egolens.model import EgoAttentionNetwork
from egolens.play import play
from egolens.rollout import rollout_arrays, steps_table, vehicles_table
from egolens.runner import EnvRunner
from egolens.video import episode_images, gif_bytes
from egolens.vocabulary import present


def record(net: EgoAttentionNetwork, episodes: int, render: bool) -> tuple[float, int, int, int]:
    """(seconds, steps, npz bytes, frame + video bytes) for `episodes` recorded episodes."""
    cfg = EnvConfig()
    runner = EnvRunner([partial(make_env, cfg, render_mode="rgb_array" if render else None)])
    start = time.perf_counter()
    with runner:
        played = play(net, runner, [950_000_000 + i for i in range(episodes)], record="frames" if render else "steps")
    arrays = rollout_arrays(played, net)
    npz = npz_bytes(arrays)
    steps_table(played, arrays, cfg).to_csv()
    vehicles_table(arrays, cfg, 5.0, 5.0, 4.5).to_csv()
    media = 0
    if render:
        first = 0
        for episode in played:
            rows = slice(first, first + len(episode.action))
            first = rows.stop
            media += sum(len(png_bytes(f)) for f in episode.frames)
            images = episode_images(episode.frames, episode.pixels, episode.positions, present(episode.obs),
                                    arrays["q"][rows], arrays["action"][rows], arrays["attention"][rows], "", "")
            media += len(gif_bytes(images))
    seconds = time.perf_counter() - start
    return seconds, len(arrays["action"]), len(npz), media


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = EgoAttentionNetwork().eval()
    plain_s, plain_n, npz, _ = record(net, args.episodes, render=False)
    render_s, render_n, _, media = record(net, args.episodes, render=True)
    per_plain, per_render = plain_s / plain_n, render_s / render_n
    print(f"recorded step, no rendering:   {per_plain * 1000:7.1f} ms ({plain_n} steps)")
    print(f"recorded step, with rendering: {per_render * 1000:7.1f} ms ({render_n} steps)")
    print(f"rendering slow-down: {per_render / per_plain:.1f}x")
    print(f"rollouts npz per 1000 steps: {npz / plain_n * 1000 / 1e6:.1f} MB")
    print(f"frames + video per 1000 rendered steps: {media / render_n * 1000 / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
