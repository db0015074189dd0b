"""aggregate: every seed's headline numbers combined over seeds (mean and 95% CI in
results/summary.json and results/summary.csv: Student-t over seeds, or for the held-out rates,
returns, paired differences and attention shares a crossed bootstrap over seeds and the episodes they
share; the few compared across experiments in results/headline.json, the DVC metric) and whether each
finding (and, apart, each sanity check) holds per seed (results/holds.csv, with its kind), with each
seed's trained agent set beside its untrained network and the reference policies on the same
held-out episodes (paired: results/reference). Heads are matched across seeds by their closed-loop
role, not their index."""

from __future__ import annotations

import json

import pandas as pd

from egolens import aggregate
from egolens.evaluation import paired_versus
from egolens.names import SUMMARIES, head_ranks
from stages import RESULTS, seed_results, study_args
from stages.outputs import write_csv, write_json

REFERENCE = RESULTS / "reference"


def load_seed(seed: int, resamples: int) -> tuple[aggregate.Metrics, pd.DataFrame]:
    """One seed's metrics, and its per-episode values (`aggregate.UNITS`) for the pooled intervals."""
    root = seed_results(seed)
    summaries = {stage: json.loads((root / path).read_text()) for stage, path in SUMMARIES.items()}
    episodes = pd.read_csv(root / "evaluate_episodes.csv").assign(seed=seed)
    attention = pd.read_csv(root / "rollout" / "attention_off_ego.csv").assign(seed=seed)
    closed_loop = pd.read_csv(root / "interventions" / "closed_loop.csv")
    summaries["rollout"] = aggregate.attention_summary(attention)
    trained, reference = episodes[episodes["model"] == "trained"], pd.read_csv(REFERENCE / "episodes.csv")
    untrained = episodes[episodes["model"] == "untrained"]
    summaries["evaluate"]["trained_vs_untrained"] = paired_versus(trained, untrained, resamples, seed)
    summaries["reference"] = aggregate.reference_metrics(
        trained, reference, json.loads((REFERENCE / "metrics.json").read_text()), resamples, seed)
    paired = [aggregate.paired_units(trained, untrained, "evaluate.trained_vs_untrained")]
    paired += [aggregate.paired_units(trained, reference[reference["policy"] == policy], f"reference.vs_{policy}")
               for policy in aggregate.PAIRED_POLICIES]
    units = pd.concat([aggregate.evaluation_units(episodes), aggregate.episode_class_units(trained, reference),
                       aggregate.attention_units(attention, {seed: head_ranks(closed_loop)}), *paired])
    return aggregate.seed_metrics(summaries, closed_loop), units


def main() -> None:
    params = study_args(__doc__)
    resamples = params.reference.bootstrap_resamples
    loaded = {seed: load_seed(seed, resamples) for seed in params.seeds}
    per_seed = {seed: metrics for seed, (metrics, _) in loaded.items()}
    units = pd.concat([u for _, u in loaded.values()], ignore_index=True)
    table = aggregate.with_episode_intervals(aggregate.summary_table(per_seed), units, resamples)
    holds = aggregate.holds_table(per_seed)
    summary = {"seeds": params.seeds, **aggregate.summary_tree(table), "holds": aggregate.holds_tree(holds),
               "sanity_checks": aggregate.holds_tree(holds, aggregate.SANITY)}
    write_csv(RESULTS / "summary.csv", table)
    write_csv(RESULTS / "holds.csv", holds)
    write_json(RESULTS / "summary.json", summary)
    write_json(RESULTS / "headline.json", aggregate.headline(table, holds))


if __name__ == "__main__":
    main()
