"""Probes and steering stage cost for one seed without a study: `python -m benchmarks.probe_stages
[--episodes 50] [--steering-episodes 50] [--skip-probes] [--skip-steering] [--params params.yaml]`.

Times the library functions the `probes` and `steering` stages run (`probe_study`, then the probe
fit, the directions and `steering_study`), on the params file's probes / steering settings, and
prints wall time, CPU time (this process and its finished children: the probe workers and the env
workers) and the load average (`os.getloadavg`) beside each, with the ratio to the budget per
seed (issue 23: probes 5 min, steering 12 min with 2 envs).

No trained network is needed: the "trained" network is a freshly initialised reference network
(torch seed `--seed`), the "untrained" one another (`--seed` + 1), and their rollouts are
recorded here with the library (`egolens.rollout`, no rendering) on the rollout stage's held-out
env seeds. The probes' cost depends on the number of rows, not on the weights; a trained agent's
episodes are longer than a random network's, so its rollouts have more rows. Steering plays
closed-loop episodes, whose length depends on the policy: the time here is for an untrained
policy. With `--steering-episodes` below the params' `steering.episodes` the steering time is also
printed extrapolated linearly to the full count (marked as such).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from typing import TypeVar

import pandas as pd
import torch

from egolens.analysis.intervening.steering_study import scales_of, site_directions, steering_study
from egolens.analysis.reading.probe_study import Recording, fitted_probe, probe_study, site_verdicts, steering_choice
from egolens.config import Params, held_out_seeds, load_params
from egolens.env import make_runner
from egolens.model import EgoAttentionNetwork
from egolens.rollout import play_episodes, probe_arrays, rollout_arrays
from egolens.routes import replay_routes

BUDGET_S = {"probes": 300.0, "steering": 720.0}
"""Issue 23's budgets per seed on this 2-core machine with default params."""
T = TypeVar("T")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(name: str, work: Callable[[], T]) -> tuple[T, float, float]:
    """Run `work`; print its wall and CPU seconds with the load average before and after."""
    load_before, cpu, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    result = work()
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    print(f"{name}: {wall:7.1f} s wall, {used:7.1f} s CPU; load average (1 min) {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after", flush=True)
    return result, wall, used


def record(params: Params, seed: int, episodes: int) -> Recording:
    """A freshly initialised network (torch seed `seed`) played on the first `episodes` rollout env
    seeds, recorded as the rollout stage records it (activations and probe targets)."""
    torch.manual_seed(seed)
    net = EgoAttentionNetwork.from_config(params.agent, len(params.env.features)).eval()
    env_seeds = params.rollout.env_seeds[:episodes]
    played = play_episodes(net, params.env, env_seeds, 0, params.rollout.num_envs)
    arrays = rollout_arrays(played, net)
    with make_runner(params.env, min(params.rollout.num_envs, len(played))) as runner:
        routes = runner.map(replay_routes, [(e.env_seed, e.action, e.obs) for e in played])
    targets = probe_arrays(played, arrays, routes, params.env, params.scene, params.probe_targets)
    tables = {level: pd.DataFrame({key.split(".", 1)[1]: value for key, value in targets.items()
                                   if key.startswith(f"{level}.")}) for level in ("vehicle", "step")}
    return Recording(arrays, tables["vehicle"], tables["step"])


def report(stage: str, wall: float, cpu: float, factor: float = 1.0) -> None:
    budget = BUDGET_S[stage]
    label = "measured" if factor == 1.0 else f"extrapolated x{factor:g} from the measured run"
    print(f"{stage} ({label}): {wall * factor / 60:5.1f} min wall ({wall * factor / budget:.2f}x the "
          f"{budget / 60:g}-minute budget), {cpu * factor / 60:5.1f} min CPU", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=None, help="rollout episodes (default: rollout.episodes)")
    parser.add_argument("--steering-episodes", type=int, default=None,
                        help="closed-loop episodes per condition (default: steering.episodes)")
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--skip-steering", action="store_true")
    args = parser.parse_args()
    params = load_params(args.params)
    torch.set_num_threads(1)
    episodes = args.episodes or params.rollout.episodes
    print(f"uptime: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15-min load); {os.cpu_count()} cores",
          flush=True)
    recordings, _, _ = timed(f"rollouts ({episodes} episodes, 2 fresh networks)",
                             lambda: {label: record(params, args.seed + i, episodes)
                                      for i, label in enumerate(("trained", "untrained"))})
    rows = {label: len(r.arrays["action"]) for label, r in recordings.items()}
    print(f"rows: {rows} steps, {len(recordings['trained'].vehicles)} (step, vehicle) rows of the 'trained' one")
    table = None
    if not args.skip_probes:
        table, wall, cpu = timed("probes", lambda: probe_study(recordings["trained"], recordings["untrained"],
                                                                params.probes, args.seed))
        report("probes", wall, cpu)
    if args.skip_steering:
        return
    cfg = params.steering
    trained = recordings["trained"]
    if table is None:
        raise SystemExit("steering needs the probes' table: drop --skip-probes")
    count = args.steering_episodes or cfg.episodes

    def steer() -> None:
        verdicts = site_verdicts(table)
        scales = scales_of(trained.arrays, cfg.sites)
        sites = {}
        for site in cfg.sites:
            target = steering_choice(verdicts, site, cfg.safety_targets)
            probe = fitted_probe(trained, site, target, params.probes, args.seed)
            sites[site] = (scales[site], site_directions(trained.arrays, site, probe, target, cfg.random_directions,
                                                         args.seed))
        torch.manual_seed(args.seed)
        net = EgoAttentionNetwork.from_config(params.agent, len(params.env.features)).eval()
        env_seeds = held_out_seeds(params.interventions.env_seed, count)
        with make_runner(params.env, cfg.num_envs) as runner:
            played, comparison = steering_study(net, runner, env_seeds, sites, cfg.alphas, cfg.bootstrap_resamples,
                                                args.seed)
        conditions = comparison[["site", "direction", "alpha"]].drop_duplicates().shape[0]
        print(f"steering: {conditions} conditions x {count} episodes (α = 0 once per site and direction in the "
              f"table, played once), mean episode length {played['length'].mean():.1f} steps", flush=True)

    _, wall, cpu = timed(f"steering ({count} episodes per condition, {cfg.num_envs} envs)", steer)
    report("steering", wall, cpu, cfg.episodes / count)


if __name__ == "__main__":
    main()
