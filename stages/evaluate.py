"""evaluate@seed: greedy episodes of the trained and the untrained network on held-out env
seeds; success/collision/timeout rates, mean return and length with 95% bootstrap CIs
(evaluate.json) and the trained agent's four headline numbers (driving.json, the DVC metric)."""

from __future__ import annotations

import pandas as pd
import torch

from egolens import checkpoint
from egolens.artifacts import json_text
from egolens.env import make_runner
from egolens.evaluation import driving_metrics, episode_outcomes, summarize_episodes
from egolens.play import play
from stages import NETWORKS, load_net, seed_args, seed_results


def main() -> None:
    params, seed = seed_args(__doc__)
    torch.set_num_threads(1)
    env_seeds = params.evaluate.env_seeds
    envs = make_runner(params.env, min(params.evaluate.num_envs, len(env_seeds)))
    metrics, rows = {}, []
    try:
        for name in NETWORKS:
            net = load_net(params, seed, name)
            results = play(net, envs, env_seeds)
            metrics[name] = summarize_episodes(results, params.evaluate.bootstrap_resamples, seed)
            rows.append(episode_outcomes(results).assign(model=name, episode=range(len(results))))
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                                                      for k, v in metrics[name].items()))
    finally:
        envs.close()
    out = seed_results(seed)
    checkpoint.atomic_write_text(out / "evaluate.json", json_text(metrics))
    checkpoint.atomic_write_text(out / "driving.json", json_text(driving_metrics(metrics)))
    checkpoint.atomic_write_text(out / "evaluate_episodes.csv", episodes_csv(rows))


def episodes_csv(tables: list[pd.DataFrame]) -> str:
    """evaluate_episodes.csv: model, episode (index in the env seed list), env_seed, return, length, outcome."""
    table = pd.concat(tables, ignore_index=True)
    return table[["model", "episode", "env_seed", "return", "length", "outcome"]].to_csv(index=False)


if __name__ == "__main__":
    main()
