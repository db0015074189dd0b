"""egolens.names: the output and metric names aggregate, plots and report share."""

from __future__ import annotations

import pandas as pd
import pytest

from egolens import names


def test_metric_names_are_the_dotted_paths_of_the_summaries():
    assert names.evaluate_metric("trained", "success_rate") == "evaluate.trained.success_rate.mean"
    assert names.evaluate_metric("untrained", "mean_return", "ci_low") == "evaluate.untrained.mean_return.ci_low"
    assert names.head_zero(2, "success_diff") == "closed_loop.head_rank2.zero.success_diff"
    assert names.attention_off_ego("trained", names.head_role(1)) == "rollout.trained.attention_off_ego.head_rank1"
    assert names.neuron_ablation("top_abs_dq") == \
        "interventions.neuron_ablation.others_embedding_hook_post_0.top_abs_dq"


@pytest.mark.parametrize("metric", [
    "interventions.perturbation_notebook.output_layer_hook_post_1.flip_rate",
    "interventions.editing.edit_rank_one.side_flip_rate", "evaluate.trained.collision_rate.mean",
    "interventions.closed_loop_baseline.success_rate", "train.success_last100",
    "neurons.trained.layers.output_layer_hook_post_0.dead_fraction", "neurons.trained.logit_lens_agreement.ego",
    "rollout.untrained.attention_off_ego.head_rank2", "reference.success_by_episode_class.go",
    "attributions.trained.ig_completeness.others_zeroed.q.fraction_within"])
def test_rates_are_recognised(metric):
    assert names.is_rate(metric)


@pytest.mark.parametrize("metric", [
    "interventions.editing.edit_rank_one.closed_collision_diff", "closed_loop.head_rank1.zero.success_diff",
    "reference.ceiling_fraction", "train.return_last100", "evaluate.trained.mean_return.mean",
    "interventions.vehicle_removal.random.abs_dq", "neurons.trained.described_neurons"])
def test_differences_counts_and_ratios_are_not_rates(metric):
    assert not names.is_rate(metric)


def test_heads_are_ranked_by_the_success_their_resample_ablation_costs_on_the_rank_half():
    def rows(mode: str, half: str, effects: dict[int, tuple[float, float]]) -> list[dict]:
        return [{"kind": "head", "mode": mode, "half": half, "target": f"head{h}", "metric": metric, "diff": diff}
                for h, (success, collision) in effects.items()
                for metric, diff in (("success", success), ("collision", collision))]

    ranked = rows("resample", "rank", {0: (-0.1, 0.0), 1: (-0.4, 0.1)})
    assert names.head_ranks(pd.DataFrame(ranked)) == {1: 1, 0: 2}
    # neither the measure half nor another ablation mode takes part in the ranking
    others = rows("resample", "measure", {0: (-0.9, 0.0), 1: (0.0, 0.0)}) + rows("zero", "rank", {0: (-0.9, 0.0),
                                                                                                 1: (0.0, 0.0)})
    assert names.head_ranks(pd.DataFrame(ranked + others)) == {1: 1, 0: 2}


def test_the_reported_half_of_a_head_condition_is_the_held_out_one():
    assert names.reported_half("head1") == names.MEASURE_HALF
    assert names.reported_half("attention_branch") == "all" and names.reported_half("most_attended") == "all"
