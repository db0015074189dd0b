"""Kink-aware IG vs one fine grid for every step:
`python -m benchmarks.attribution_refinement [--seed 0] [--steps 100] [--max-points 4096]`.

On recorded steps of a trained network (needs `models/seed<N>/agent.pt` and
`data/seed<N>/rollouts_trained.npz`, e.g. after `dvc pull`), integrated gradients of the recorded
action's Q with the `others_zeroed` baseline, integrated (a) with `--max-points` Gauss-Legendre
points for every step (captum over the whole path) and (b) cut at the ReLU kinks, 2 points per
piece, kink grid refined per step (`attribution_study.kink_cut`, the study's
defaults). Prints seconds, the share of steps complete within 1%, the largest relative error and
the mean gradient evaluations per step of each, and the time ratio fixed / kink-aware.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from egolens.analysis.attribution.attribution_study import kink_cut
from egolens.analysis.attribution.attribution_tables import select_steps
from egolens.analysis.attribution.baselines import others_zeroed
from egolens.analysis.attribution.faithfulness import completeness_stats, completeness_table
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.schemes import FixedGrid
from egolens.config import load_params
from stages import DATA
from stages.networks import load_net


def completeness(net: torch.nn.Module, obs: torch.Tensor, base: torch.Tensor, ig: torch.Tensor,
                 action: torch.Tensor) -> str:
    """Share of the steps with |ΔQ| >= 1e-3 whose completeness error is below 1%, and the largest error."""
    stats = completeness_stats(completeness_table(net, obs, base, ig, action))
    return f"within 1%: {stats['fraction_within']:.3f}, max rel error {stats['max_rel_error']:.2e}"


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
        records = select_steps(len(arrays["obs"]), args.steps)
        obs = torch.from_numpy(arrays["obs"][records]).float()
        action = torch.from_numpy(arrays["action"][records]).long()
    base = others_zeroed(obs)

    start = time.perf_counter()
    fixed = integrated_gradients(net, obs, base, action, FixedGrid(args.max_points, internal_batch_size=4096)).attr
    t_fixed = time.perf_counter() - start
    start = time.perf_counter()
    kinked = integrated_gradients(net, obs, base, action, kink_cut(params.attributions))
    t_kinked = time.perf_counter() - start

    print(f"{len(obs)} steps of seed {args.seed}, IG of Q(recorded action), baseline others_zeroed")
    print(f"fixed {args.max_points} points: {t_fixed:6.1f} s, {completeness(net, obs, base, fixed, action)}")
    print(f"kink-aware:          {t_kinked:6.1f} s, {completeness(net, obs, base, kinked.attr, action)}, "
          f"mean gradient evaluations {kinked.points.double().mean():.0f}")
    print(f"time ratio fixed / kink-aware: {t_fixed / t_kinked:.2f}x")


if __name__ == "__main__":
    main()
