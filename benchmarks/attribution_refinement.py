"""Per-step IG refinement vs one fine grid for every step:
`python -m benchmarks.attribution_refinement [--seed 0] [--steps 100] [--max-points 4096]`.

On recorded steps of a trained network (needs `models/seed<N>/agent.pt` and
`data/seed<N>/rollouts_trained.npz`, e.g. after `dvc pull`), integrated gradients of the recorded
action's Q with the `others_zeroed` baseline, integrated (a) with `--max-points` points for every
step and (b) refined per step from 64 points (`attribution.adaptive_integrated_gradients`).
Prints seconds, the share of steps complete within 1% and the mean points per step of each, and
the time ratio fixed / refined.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from egolens.analysis import attribution as attr
from egolens.config import load_params
from stages import DATA, load_net


def within(net: torch.nn.Module, obs: torch.Tensor, base: torch.Tensor, ig: torch.Tensor,
           action: torch.Tensor) -> float:
    """Share of the steps with |ΔQ| >= 1e-3 whose completeness error is below 1%."""
    table = attr.completeness_table(net, obs, base, ig, action)
    return attr.completeness_stats(table)["fraction_within"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-points", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params("params.yaml")
    net = load_net(params, args.seed, "trained")
    with np.load(DATA / f"seed{args.seed}" / "rollouts_trained.npz") as arrays:
        records = attr.select_steps(len(arrays["obs"]), args.steps)
        obs = torch.from_numpy(arrays["obs"][records]).float()
        action = torch.from_numpy(arrays["action"][records]).long()
    base = attr.others_zeroed(obs)

    start = time.perf_counter()
    fixed, _ = attr.integrated_gradients(net, obs, action, base, args.max_points, 4096,
                                         method=attr.quadrature(args.max_points))
    t_fixed = time.perf_counter() - start
    start = time.perf_counter()
    refined = attr.adaptive_integrated_gradients(net, obs, action, base, 64, args.max_points, 4096)
    t_refined = time.perf_counter() - start

    print(f"{len(obs)} steps of seed {args.seed}, IG of Q(recorded action), baseline others_zeroed")
    print(f"fixed {args.max_points} points: {t_fixed:6.1f} s, within 1%: {within(net, obs, base, fixed, action):.3f}")
    print(f"refined 64..{args.max_points}:  {t_refined:6.1f} s, within 1%: "
          f"{within(net, obs, base, refined.attr, action):.3f}, mean points {refined.points.double().mean():.0f}")
    print(f"time ratio fixed / refined: {t_fixed / t_refined:.2f}x")


if __name__ == "__main__":
    main()
