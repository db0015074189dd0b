"""demonstrations: the clairvoyant planner plays `demonstrations.episodes` episodes on env seeds of
their own (apart from every training and held-out seed), each recorded step by step. Once per study
(it depends on the env, not on the agent seeds). Writes data/demonstrations/demonstrations.npz (the
steps: egolens.demonstrations) and results/demonstrations/summary.json (the planner's rates)."""

from __future__ import annotations

from functools import partial

from tqdm import tqdm

from egolens.artifacts import npz_bytes
from egolens.demonstrations import check_arrays, demonstration_arrays
from egolens.env import make_runner
from egolens.planner_steps import demonstrate, demonstration_summary
from stages import DEMONSTRATIONS, RESULTS, study_args
from stages.outputs import write_bytes, write_json


def main() -> None:
    params = study_args(__doc__)
    seeds = params.demonstrations.env_seeds
    cfg = params.reference
    with make_runner(params.env, min(cfg.processes, len(seeds))) as runner, \
            tqdm(total=len(seeds), desc="demonstrations", unit="ep") as bar:
        played = runner.map(partial(demonstrate, replan=cfg.replan), seeds, progress=lambda: bar.update(1))
    planned, steps = [p for p, _ in played], [s for _, s in played]
    arrays = demonstration_arrays(steps, seeds)
    check_arrays(arrays)
    summary = {"env_seed": params.demonstrations.env_seed, **demonstration_summary(planned, steps)}
    print("demonstrations: " + ", ".join(f"{k} {v}" for k, v in summary.items() if not isinstance(v, dict)))
    write_bytes(DEMONSTRATIONS, npz_bytes(arrays))
    write_json(RESULTS / "demonstrations" / "summary.json", summary)


if __name__ == "__main__":
    main()
