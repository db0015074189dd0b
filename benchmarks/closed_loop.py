"""Closed-loop intervention cost: `python -m benchmarks.closed_loop [--episodes N] [--checkpoint PATH]`.

Prints the wall time of one closed-loop condition (N greedy episodes on held-out env seeds) for
the unablated agent, a head ablation (a hook: zero, and resample, which draws a recorded step per
forward), a vehicle removal (an observation edit that needs an extra forward pass to find the most
attended vehicle), an edited copy, and the unablated agent played as the stage plays every condition
(the env seeds in two halves, actions counted), each with num_envs = 1 and 2; then the ratios: each
condition over the unablated agent, and the speed-up of 2 envs over 1. The interventions stage runs
38 conditions per seed at the default params.
"""

from __future__ import annotations

import argparse
import time

import torch

from egolens import checkpoint
from egolens.analysis.intervening import editing
from egolens.analysis.intervening import intervention_study as study
from egolens.analysis.intervening import interventions as iv
from egolens.config import Params
from egolens.env import make_runner
from egolens.hooks import run_with_cache
from egolens.model import EgoAttentionNetwork
from egolens.play import play
from egolens.sites import Z

HALVES = "none, two halves counted (as the stage)"


def timed(policy: torch.nn.Module, params: Params, num_envs: int, seeds: list[int],
          halves: bool = False) -> tuple[float, int]:
    """(seconds, env steps) of one condition: every episode of `seeds` on a fresh vector env (in the
    stage's two halves with actions counted when `halves`)."""
    envs = make_runner(params.env, num_envs)
    try:
        envs.reset(dict.fromkeys(range(num_envs), 0))   # worker start-up is not part of a condition
        start = time.perf_counter()
        if halves:
            results = study.play_halves(policy, envs, study.split_halves(seeds)).episodes[study.ALL]
        else:
            with torch.no_grad():
                results = play(policy, envs, seeds)
        return time.perf_counter() - start, sum(r.length for r in results)
    finally:
        envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--checkpoint", default=None, help="an agent.pt (default: a randomly initialised net)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = Params()
    net = EgoAttentionNetwork.from_config(params.agent)
    if args.checkpoint:
        checkpoint.load_network(args.checkpoint, net)
    net.eval()
    seeds = [params.interventions.env_seed + i for i in range(args.episodes)]
    reference = torch.rand(512, 15, 7) * 2 - 1                          # stands in for the recorded steps
    reference[:, :, 0] = (reference[:, :, 0] > 0).float()
    reference[:, 0, 0] = 1.0
    _, cache = run_with_cache(net, reference, [Z])
    policies = {
        "none": iv.Intervened(net),
        HALVES: iv.Intervened(net),
        "head0_zero (hook)": iv.Intervened(net, iv.head_ablation(0)),
        "head0_resample (hook)": iv.Intervened(net, iv.head_ablation(0, "resample", reference_z=cache[Z], seed=0)),
        "vehicle_most_attended (obs edit)": iv.Intervened(net, obs_edit=iv.remove_most_attended(net)),
        "edit_head_scale (copy)": iv.Intervened(editing.scale_head_output(net, 0, 2.0)),
    }
    times: dict[tuple[str, int], float] = {}
    for num_envs in (1, 2):
        for name, policy in policies.items():
            seconds, steps = timed(policy, params, num_envs, seeds, halves=name == HALVES)
            times[name, num_envs] = seconds
            print(f"num_envs={num_envs} {name:34s}: {seconds:6.2f} s/condition, "
                  f"{seconds / args.episodes:5.2f} s/episode, {steps / seconds:5.1f} steps/s")
    for name in policies:
        print(f"{name:34s}: {times[name, 2] / times['none', 2]:.2f}x the unablated agent's time (num_envs=2); "
              f"speed-up of 2 envs over 1: {times[name, 1] / times[name, 2]:.2f}x")


if __name__ == "__main__":
    main()
