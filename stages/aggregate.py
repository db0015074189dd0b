"""aggregate: every seed's headline numbers combined over seeds (mean and 95% CI in
results/summary.json and results/summary.csv: Student-t over seeds, or for the held-out rates,
returns and attention shares a bootstrap over seeds and episodes; the few compared across experiments in
results/headline.json, the DVC metric) and whether each finding holds per seed
(results/holds.csv), with each seed's trained agent set beside the reference policies on the same
held-out episodes (results/reference). Heads are matched across seeds by their closed-loop role, not their index."""

from __future__ import annotations

import json

import pandas as pd

from egolens import aggregate
from egolens.names import SUMMARIES, head_ranks
from stages import RESULTS, seed_results, study_args
from stages.outputs import write_csv, write_json

REFERENCE = RESULTS / "reference"


def load_seed(seed: int, resamples: int) -> tuple[aggregate.Metrics, pd.DataFrame]:
    """One seed's metrics, and its per-episode values (seed, metric, value) for nested intervals."""
    root = seed_results(seed)
    summaries = {stage: json.loads((root / path).read_text()) for stage, path in SUMMARIES.items()}
    episodes = pd.read_csv(root / "evaluate_episodes.csv").assign(seed=seed)
    attention = pd.read_csv(root / "rollout" / "attention_off_ego.csv").assign(seed=seed)
    closed_loop = pd.read_csv(root / "interventions" / "closed_loop.csv")
    summaries["rollout"] = aggregate.attention_summary(attention)
    trained, reference = episodes[episodes["model"] == "trained"], pd.read_csv(REFERENCE / "episodes.csv")
    summaries["reference"] = aggregate.reference_metrics(
        trained, reference, json.loads((REFERENCE / "metrics.json").read_text()), resamples, seed)
    units = pd.concat([aggregate.evaluation_units(episodes), aggregate.episode_class_units(trained, reference),
                       aggregate.attention_units(attention, {seed: head_ranks(closed_loop)})])
    return aggregate.seed_metrics(summaries, closed_loop), units


def main() -> None:
    params = study_args(__doc__)
    resamples = params.reference.bootstrap_resamples
    loaded = {seed: load_seed(seed, resamples) for seed in params.seeds}
    per_seed = {seed: metrics for seed, (metrics, _) in loaded.items()}
    units = pd.concat([u for _, u in loaded.values()], ignore_index=True)
    table = aggregate.with_nested_intervals(aggregate.summary_table(per_seed), units, resamples)
    holds = aggregate.holds_table(per_seed)
    summary = {"seeds": params.seeds, **aggregate.summary_tree(table), "holds": aggregate.holds_tree(holds)}
    write_csv(RESULTS / "summary.csv", table)
    write_csv(RESULTS / "holds.csv", holds)
    write_json(RESULTS / "summary.json", summary)
    write_json(RESULTS / "headline.json", aggregate.headline(table, holds))


if __name__ == "__main__":
    main()
