"""evaluate@seed: greedy episodes of the trained and the untrained network on held-out env
seeds; success/collision/timeout rates, mean return and length with 95% bootstrap CIs
(evaluate.json) and the trained agent's four headline numbers (driving.json, the DVC metric)."""

from __future__ import annotations

import pandas as pd

from egolens.env import make_runner
from egolens.evaluation import driving_metrics, episode_outcomes, summarize_episodes
from egolens.names import DRIVING, SUMMARIES
from egolens.numbers import EXACT
from egolens.play import play
from stages import NETWORKS, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    deterministic(seed)
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
    write_json(out / SUMMARIES["evaluate"], metrics)
    write_json(out / DRIVING, driving_metrics(metrics))
    columns = ["model", "episode", "env_seed", "return", "length", "outcome"]
    write_csv(out / "evaluate_episodes.csv", pd.concat(rows, ignore_index=True)[columns], EXACT)


if __name__ == "__main__":
    main()
