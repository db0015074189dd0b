"""scenes@seed: designed counterfactual scenes. The ego fixed before the junction, one conflicting
vehicle whose arrival at the conflict point is swept (per route, visible or not), in the real
simulator: each network's Q(SLOWER) − Q(FASTER) and greedy action beside the clairvoyant planner's
choice and the outcome of going now; per head (named by role), attention on the vehicle and the
effect of mean-ablating (over the sweep) or zeroing it."""

from __future__ import annotations

import pandas as pd
from tqdm import tqdm

from egolens.analysis.intervening import scene_study
from egolens.names import head_ranks, head_role
from stages import NETWORKS, seed_args, seed_results
from stages.networks import deterministic, load_net
from stages.outputs import write_csv, write_json


def main() -> None:
    params, seed = seed_args(__doc__)
    try:
        scene_study.check_placeable(params.env, params.scenes)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    deterministic(seed)
    nets = {label: load_net(params, seed, label) for label in NETWORKS}
    ranks = head_ranks(pd.read_csv(seed_results(seed) / "interventions" / "closed_loop.csv"))
    scenes, heads = scene_study.run_scenes(params.env, params.scenes, nets,
                                           roles={h: head_role(rank) for h, rank in ranks.items()},
                                           progress=lambda items, desc: tqdm(items, desc=desc))
    out = seed_results(seed) / "scenes"
    write_csv(out / "scenes.csv", scenes)
    write_csv(out / "heads.csv", heads)
    summary = scene_study.summarize(scenes, heads)
    write_json(out / "summary.json", summary)
    write_json(out / "metrics.json", scene_study.metrics(summary))


if __name__ == "__main__":
    main()
