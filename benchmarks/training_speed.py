"""Training throughput: `python -m benchmarks.training_speed [--episodes N] [--env-steps N]`.

Prints, in one run on this machine:
- env-only steps/s (random actions, resets included) of one simulator, and of two
  simulators side by side in two processes (the physical limit of two cores);
- training steps/s (transitions collected with learning on) for num_envs = 1 and 2, and the
  learner's share of the trainer process's wall time;
- the ratios the trainer is judged by: num_envs=2 over num_envs=1, and num_envs=2 over two
  side-by-side simulators;
- where the CPU goes with num_envs=2: CPU ms per collected step in the simulators' workers
  and in the trainer process (learner, actions, bookkeeping), the share of the two cores kept
  busy, and the packing bound: the steps/s if that CPU kept both cores busy all the time (no
  schedule of the same work on two cores can go faster);
- closed-loop episodes/s of the runner that plays `evaluate` and the interventions'
  conditions (greedy, num_envs = 1 and 2).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from egolens.collector import Trainer
from egolens.config import Params
from egolens.dqn import seed_everything
from egolens.env import make_env, make_runner
from egolens.model import EgoAttentionNetwork
from egolens.play import play


def _random_steps(params: Params, steps: int, seed: int) -> None:
    env = make_env(params.env)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    episode = 0
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(3)))
        if terminated or truncated:
            episode += 1
            env.reset(seed=seed * 1000 + episode)
    env.close()


def env_only(params: Params, steps: int, processes: int) -> float:
    """Random-policy steps/s of `processes` simulators side by side (resets included)."""
    if processes == 1:
        start = time.perf_counter()
        _random_steps(params, steps, 0)
        return steps / (time.perf_counter() - start)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_random_steps, args=(params, steps, i)) for i in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return processes * steps / (time.perf_counter() - start)


@dataclass
class TrainingRun:
    """A short training run with learning on: transitions/s, the learner's share of wall time,
    CPU seconds per transition in the trainer process and in the env workers, wall seconds."""

    speed: float
    learner_share: float
    main_cpu: float
    worker_cpu: float
    wall: float

    @property
    def busy(self) -> float:
        """CPU seconds per wall second (2.0: both cores busy all the time)."""
        return self.speed * (self.main_cpu + self.worker_cpu)


def training(params: Params, num_envs: int, episodes: int) -> TrainingRun:
    """Time a `Trainer` run of `episodes` episodes (seed 0) on `num_envs` envs."""
    seed_everything(0)
    trainer = Trainer(params.agent, 0, episodes, num_envs, len(params.env.features), params.env.vehicles_count)
    learn_time = 0.0
    update = trainer.agent.update

    def timed_update() -> float | None:
        nonlocal learn_time
        t0 = time.perf_counter()
        loss = update()
        learn_time += time.perf_counter() - t0
        return loss

    trainer.agent.update = timed_update  # type: ignore[method-assign]
    before = os.times()
    with make_runner(params.env, num_envs) as runner:
        start, cpu = time.perf_counter(), time.process_time()
        trainer.run(runner)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = os.times()    # the workers have been joined: their CPU is in the children's times
    workers = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    steps = trainer.agent.steps
    return TrainingRun(steps / wall, learn_time / wall, cpu / steps, workers / steps, wall)


def closed_loop(params: Params, num_envs: int, episodes: int) -> float:
    """Greedy episodes/s of an (untrained) network on held-out seeds, as the interventions play them."""
    torch.manual_seed(0)
    net = EgoAttentionNetwork.from_config(params.agent).eval()
    seeds = [params.interventions.env_seed + i for i in range(episodes)]
    with make_runner(params.env, num_envs) as runner:
        start = time.perf_counter()
        play(net, runner, seeds)
        return episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=150, help="training episodes per run")
    parser.add_argument("--env-steps", type=int, default=1200, help="env-only steps per simulator")
    parser.add_argument("--closed-loop-episodes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; medians are printed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = Params()

    def median(measure):
        return float(np.median([measure() for _ in range(args.repeats)]))

    env1 = median(lambda: env_only(params, args.env_steps, 1))
    env2 = median(lambda: env_only(params, args.env_steps, 2))
    print(f"medians of {args.repeats} runs")
    print(f"env only, 1 simulator:              {env1:6.1f} steps/s")
    print(f"env only, 2 simulators side by side: {env2:6.1f} steps/s ({env2 / env1:.2f}x one)")
    speeds, runs = {}, {}
    for n in (1, 2):
        runs[n] = [training(params, n, args.episodes) for _ in range(args.repeats)]
        speeds[n] = float(np.median([run.speed for run in runs[n]]))
        share = float(np.median([run.learner_share for run in runs[n]]))
        print(f"training, num_envs={n}:              {speeds[n]:6.1f} steps/s, learner share of wall time {share:.0%}")
    print(f"num_envs=2 over num_envs=1:          {speeds[2] / speeds[1]:.2f}x   (target >= 1.70x)")
    print(f"num_envs=2 over 2 side-by-side sims: {speeds[2] / env2:.0%}   (target >= 80%)")
    main_cpu = float(np.median([run.main_cpu for run in runs[2]])) * 1000
    worker_cpu = float(np.median([run.worker_cpu for run in runs[2]])) * 1000
    busy = float(np.median([run.busy for run in runs[2]]))
    bound = 2000 / (main_cpu + worker_cpu)
    print(f"num_envs=2, CPU per step: workers {worker_cpu:.1f} ms (a simulator alone: {1000 / env1:.1f} ms), "
          f"trainer process {main_cpu:.1f} ms; cores busy {busy / 2:.0%}")
    print(f"num_envs=2, packing bound (that CPU on 2 cores never idle): {bound:.1f} steps/s = "
          f"{bound / speeds[1]:.2f}x num_envs=1, {bound / env2:.0%} of 2 side-by-side sims")
    loops = {n: median(lambda n=n: closed_loop(params, n, args.closed_loop_episodes)) for n in (1, 2)}
    for n, rate in loops.items():
        print(f"closed loop (greedy, interventions runner), num_envs={n}: {rate:.2f} episodes/s")
    print(f"closed loop, num_envs=2 over 1:      {loops[2] / loops[1]:.2f}x")


if __name__ == "__main__":
    main()
