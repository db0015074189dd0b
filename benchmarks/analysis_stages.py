"""Analysis stage wall times: `python -m benchmarks.analysis_stages --seed N [--stages attributions interventions
probes steering]`.

Runs each per-seed analysis stage's command for one seed in the current study directory (it
needs that seed's models/ and data/, e.g. after `dvc repro rollout@N` or `dvc pull`), one stage at
a time, and prints its wall time and its ratio to its budget per seed (12 minutes, issue 22; probes
5, steering 12). The stages write
their usual outputs, so run it where rewriting them is fine (DVC will see them as unchanged if
the code and inputs are).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BUDGET_S = 720.0
STAGE_BUDGET_S = {"probes": 300.0}
"""Stages whose budget per seed is not `BUDGET_S` (issue 23: probes 5 min; steering's 12 min is `BUDGET_S`)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--stages", nargs="+", default=["attributions", "interventions"])
    args = parser.parse_args()
    for stage in args.stages:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"stages.{stage}", "--seed", str(args.seed)], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        budget = STAGE_BUDGET_S.get(stage, BUDGET_S)
        print(f"{stage}@{args.seed}: {seconds / 60:5.1f} min "
              f"({seconds / budget:.2f}x the {budget / 60:g}-minute budget)")


if __name__ == "__main__":
    main()
