"""reference: constant SLOWER / IDLE / FASTER, the rule-based driver and the clairvoyant planner on
evaluate's held-out env seeds (the same episodes every agent is evaluated on: paired). Needs no
training; DVC runs it once per env config. Writes results/reference/{episodes.csv,metrics.json}."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from egolens.env import make_runner
from egolens.evaluation import episode_outcomes, summarize_episodes
from egolens.numbers import EXACT
from egolens.play import play
from egolens.policies import FASTER, IDLE, SLOWER, Clairvoyant, RuleBasedDriver, constant_policy
from stages import RESULTS, study_args
from stages.outputs import write_csv, write_json


def main() -> None:
    params = study_args(__doc__)
    cfg = params.reference
    seeds = params.evaluate.env_seeds
    driver = RuleBasedDriver(params.env, cfg.ttc_threshold, cfg.horizon, cfg.collision_radius, cfg.min_ego_speed,
                             cfg.lane_half_width)
    policies = {"constant_slower": constant_policy(SLOWER), "constant_idle": constant_policy(IDLE),
                "constant_faster": constant_policy(FASTER), "rule_based": driver.actions}
    tables, metrics = [], {}
    with make_runner(params.env, min(cfg.processes, len(seeds))) as runner:
        for name, policy in policies.items():
            results = play(policy, runner, seeds)
            tables.append(episode_outcomes(results).assign(policy=name))
            metrics[name] = summarize_episodes(results, cfg.bootstrap_resamples, 0)
        with tqdm(total=len(seeds), desc="clairvoyant planner", unit="ep") as bar:
            planned = play(Clairvoyant(cfg.replan), runner, seeds, progress=lambda: bar.update(1))
    tables.append(episode_outcomes(planned).assign(
        policy="clairvoyant", predicted_outcome=[p.final_outcome for p in planned],
        replay_matched=[p.replay_matched for p in planned], actions=["".join(map(str, p.actions)) for p in planned]))
    metrics["clairvoyant"] = summarize_episodes(planned, cfg.bootstrap_resamples, 0)
    metrics["clairvoyant"]["replay_matched"] = float(np.mean([p.replay_matched for p in planned]))
    for name, values in metrics.items():
        print(f"{name}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in values.items() if isinstance(v, dict)))
    out = RESULTS / "reference"
    episodes = pd.concat(tables, ignore_index=True)
    episodes.insert(0, "policy", episodes.pop("policy"))
    write_csv(out / "episodes.csv", episodes, EXACT)
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    main()
