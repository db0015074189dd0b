"""Training speed: `python -m benchmarks.training_speed [--episodes N]`.

Prints env-only steps/s (random policy: the simulator's limit), training steps/s with
learning for num_envs = 1 and 2, the learner's share of wall time, and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from egolens.config import Params
from egolens.dqn import Trainer, seed_everything
from egolens.env import make_env, make_vector_env


def env_only(params: Params, steps: int) -> float:
    """Random-policy steps/s of one env (resets included)."""
    env = make_env(params.env)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start, episode = time.perf_counter(), 0
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(3)))
        if terminated or truncated:
            episode += 1
            env.reset(seed=episode)
    env.close()
    return steps / (time.perf_counter() - start)


def training(params: Params, num_envs: int, episodes: int) -> tuple[float, float]:
    """(transitions/s, learner share of wall time) of a short training run with learning on."""
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
    envs = make_vector_env(params.env, num_envs)
    start = time.perf_counter()
    trainer.run(envs)
    wall = time.perf_counter() - start
    envs.close()
    return trainer.agent.steps / wall, learn_time / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--env-steps", type=int, default=300)
    args = parser.parse_args()
    params = Params()
    print(f"env only (random policy, 1 env): {env_only(params, args.env_steps):6.1f} steps/s")
    speeds = {}
    for n in (1, 2):
        speed, share = training(params, n, args.episodes)
        speeds[n] = speed
        print(f"training, num_envs={n}: {speed:6.1f} steps/s, learner share of wall time {share:.0%}")
    print(f"speed-up of num_envs=2 over 1: {speeds[2] / speeds[1]:.2f}x")


if __name__ == "__main__":
    main()
