"""Clairvoyant planner cost: `python -m benchmarks.ceiling [--episodes N] [--no-brute-force]`.

Plays N held-out episodes (default EnvConfig) with `egolens.policies.plan_episode` in this one
process and prints, per episode and on average: planner seconds, searches run, env steps and
deep copies made by the searches, outcome and whether the real episode matched the prediction.
For the first decision it also compares the steps the pruned tree search simulates with the
unpruned tree and with replaying every wait-then-go plan from the start (counted from the
unpruned tree's episode ends). Then the cost of one env step, one reset and one deep copy, and
the projected wall time of 100 episodes on 2 worker processes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from egolens.config import EnvConfig
from egolens.env import make_env
from egolens.episodes import OUTCOMES
from egolens.policies import (
    FASTER,
    plan_episode,
    plan_family,
    replay_steps,
    reward_bound,
    search_plans,
    steps_until_truncation,
)

FIRST_SEED = 900_000_000
"""params.yaml's evaluate.env_seed: the held-out seeds the planner's ceiling is meant for."""


def unit_costs(env, seed: int, repeats: int = 20) -> dict[str, float]:
    """Seconds per env step, reset and deepcopy (of the unwrapped env, mid-episode)."""
    start = time.perf_counter()
    for i in range(5):
        env.reset(seed=seed + i)
    reset = (time.perf_counter() - start) / 5
    env.reset(seed=seed)
    for _ in range(3):
        env.step(FASTER)
    sim = env.unwrapped
    start = time.perf_counter()
    copies = [copy.deepcopy(sim) for _ in range(repeats)]
    deepcopy = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    n = 0
    for c in copies[:5]:
        for _ in range(2):
            c.step(FASTER)
            n += 1
    step = (time.perf_counter() - start) / n
    return {"step": step, "reset": reset, "deepcopy": deepcopy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--no-brute-force", action="store_true",
                        help="skip the unpruned first-decision search (about 470 env steps per episode)")
    args = parser.parse_args()
    cfg = EnvConfig()
    env = make_env(cfg)
    costs = unit_costs(env, args.first_seed)
    print(f"env step {costs['step'] * 1000:.1f} ms, reset {costs['reset'] * 1000:.1f} ms, "
          f"deepcopy {costs['deepcopy'] * 1000:.2f} ms")

    rows = []
    for i in range(args.episodes):
        seed = args.first_seed + i
        start = time.perf_counter()
        episode = plan_episode(env, seed)
        seconds = time.perf_counter() - start
        row = {"seconds": seconds, "searches": episode.replans, "steps": episode.env_steps, "copies": episode.copies,
               "matched": episode.replay_matched, "outcome": episode.outcome, "improved": episode.improved}
        if not args.no_brute_force:
            env.reset(seed=seed)
            sim = env.unwrapped
            steps, bound = steps_until_truncation(sim.config, sim.time), reward_bound(sim.config)
            pruned = search_plans(sim, steps, bound)
            full = search_plans(sim, steps, bound, prune=False, record_leaves=True)
            row |= {"first_pruned": pruned.env_steps, "first_tree": full.env_steps,
                    "first_replay": replay_steps(full.leaves, steps), "plans": len(plan_family(steps))}
        rows.append(row)
        extra = (f"; first decision: pruned tree {row['first_pruned']}, full tree {row['first_tree']}, "
                 f"replay of all {row['plans']} plans {row['first_replay']} steps") if "first_tree" in row else ""
        print(f"seed {seed}: {episode.outcome:9s} return {episode.ret:6.2f} length {episode.length:2d} "
              f"(predicted {episode.predicted_outcome} {episode.predicted_return:.2f}; matched {episode.replay_matched}"
              f"{', improved by re-planning' if episode.improved else ''}) "
              f"{seconds:5.1f} s, {episode.replans} searches, {episode.env_steps} env steps, "
              f"{episode.copies} copies{extra}", flush=True)

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    per_episode = mean("seconds")
    print(f"\nplanner: {per_episode:.1f} s per episode (one process), {mean('searches'):.1f} searches, "
          f"{mean('steps'):.0f} env steps and {mean('copies'):.0f} deep copies per episode")
    print(f"simulated steps explain {mean('steps') * costs['step'] / per_episode:.0%} of the time, "
          f"copies {mean('copies') * costs['deepcopy'] / per_episode:.1%}")
    if not args.no_brute_force:
        replay_seconds = mean("first_replay") * costs["step"] + mean("plans") * costs["reset"]
        print(f"first decision, env steps: pruned tree {mean('first_pruned'):.0f}, full tree {mean('first_tree'):.0f}, "
              f"replay of every plan from the start {mean('first_replay'):.0f} (~{replay_seconds:.0f} s with resets)")
    outcomes = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    print(f"outcomes {outcomes}; replay matched the prediction in {sum(r['matched'] for r in rows)}/{len(rows)}; "
          f"improved by re-planning in {sum(r['improved'] for r in rows)}/{len(rows)}")
    projected = 100 * per_episode / 2 / 60
    print(f"projected: 100 episodes on 2 processes ~{projected:.1f} min (budget 30 min; assumes both cores free)")
    env.close()


if __name__ == "__main__":
    main()
