"""Combining seeds: heads matched by role, Student-t intervals, and per-seed findings."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from egolens import aggregate, findings
from egolens.aggregate import (
    flatten,
    head_ranks,
    rename_heads,
    seed_metrics,
    summary_table,
    summary_tree,
)
from egolens.findings import FINDINGS, Finding, flag, holds_table, holds_tree, missing_metrics, some_steered_site
from egolens.stats import nested_bootstrap_ci, t_interval


def closed_loop(effects: dict[int, tuple[float, float]], measured: dict[int, tuple[float, float]] | None = None,
                mode: str = "resample") -> pd.DataFrame:
    """A closed_loop.csv of head ablations (`mode`) on the rank half, head -> (success diff, collision
    diff), and on the measure half (`measured`, default the same); the control succeeds in 0.5."""
    rows = [{"condition": "none", "kind": "none", "target": None, "mode": None, "half": half, "metric": m,
             "value": 0.5, "diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0}
            for m in ("success", "collision") for half in ("rank", "measure")]
    for half, table in (("rank", effects), ("measure", effects if measured is None else measured)):
        for head, (success, collision) in table.items():
            for metric, diff in (("success", success), ("collision", collision)):
                rows.append({"condition": f"head{head}_{mode}", "kind": "head", "target": f"head{head}",
                             "mode": mode, "half": half, "metric": metric, "value": 0.5 + diff, "diff": diff,
                             "diff_ci_low": diff - 0.1, "diff_ci_high": diff + 0.1})
    return pd.DataFrame(rows)


def test_flatten_gives_dotted_names_and_keeps_only_numbers():
    tree = {"a": {"b": 1, "c": {"d": 2.5}}, "flag": True, "missing": None, "name": "x"}
    flat = flatten(tree, "stage")
    assert flat["stage.a.b"] == 1.0 and flat["stage.a.c.d"] == 2.5 and flat["stage.flag"] == 1.0
    assert math.isnan(flat["stage.missing"]) and "stage.name" not in flat


def test_heads_are_ranked_by_the_successes_their_ablation_costs_then_by_collisions():
    assert head_ranks(closed_loop({0: (0.02, 0.12), 1: (-0.5, 0.14)})) == {1: 1, 0: 2}
    assert head_ranks(closed_loop({0: (-0.48, 0.0), 1: (0.0, 0.3)})) == {0: 1, 1: 2}
    # equal success cost: the head whose removal adds more collisions ranks first
    assert head_ranks(closed_loop({0: (-0.1, 0.05), 1: (-0.1, 0.2)})) == {1: 1, 0: 2}
    with pytest.raises(ValueError):
        head_ranks(closed_loop({}))
    # ranked on the rank half only, by resample ablation only
    assert head_ranks(closed_loop({0: (-0.5, 0.0), 1: (0.0, 0.0)}, measured={0: (0.0, 0.0), 1: (-0.5, 0.0)})) == \
        {0: 1, 1: 2}
    with pytest.raises(ValueError, match="resample"):
        head_ranks(closed_loop({0: (-0.5, 0.0)}, mode="zero"))


def test_every_name_of_a_head_is_renamed_by_its_rank():
    metrics = {"circuits.QK.head0": 1.0, "interventions.path.head1_value": 2.0,
               "attributions.sanity.attention_head0.vehicle": 3.0, "head_ablation.zero.success_diff": 4.0}
    renamed = rename_heads(metrics, {0: 2, 1: 1})
    assert renamed == {"circuits.QK.head_rank2": 1.0, "interventions.path.head_rank1_value": 2.0,
                       "attributions.sanity.attention_head_rank2.vehicle": 3.0,
                       "head_ablation.zero.success_diff": 4.0}


def test_seeds_whose_heads_swapped_roles_are_combined_by_role_not_index():
    # seed 0's critical head is head 0; seed 1's is head 1; both have QK difference 10 on it
    seed0 = seed_metrics({"circuits": {"QK": {"head0": 10.0, "head1": 2.0}},
                          "interventions": {"head_ablation": {"zero": {"head": 0, "success_diff": -0.5}}}},
                         closed_loop({0: (-0.5, 0.1), 1: (0.0, 0.1)}, measured={0: (-0.25, 0.1), 1: (0.0, 0.1)}))
    seed1 = seed_metrics({"circuits": {"QK": {"head0": 4.0, "head1": 10.0}},
                          "interventions": {"head_ablation": {"zero": {"head": 1, "success_diff": -0.5}}}},
                         closed_loop({0: (0.0, 0.1), 1: (-0.5, 0.1)}))
    assert "interventions.head_ablation.zero.head" not in seed0        # an index, not a measurement
    # chosen on the rank half (−0.5), reported on the measure half (−0.25)
    assert seed0["closed_loop.head_rank1.resample.success_diff"] == -0.25
    assert seed0["closed_loop.head_rank1.resample.success_rate"] == 0.25
    assert seed1["closed_loop.head_rank1.resample.success_diff_ci_low"] == pytest.approx(-0.6)
    table = summary_table({0: seed0, 1: seed1}).set_index("metric")
    assert table.loc["circuits.QK.head_rank1", "mean"] == 10.0 and table.loc["circuits.QK.head_rank1", "sd"] == 0.0
    assert table.loc["circuits.QK.head_rank2", "mean"] == 3.0
    assert table.loc["circuits.QK.head_rank2", "seed0"] == 2.0 and table.loc["circuits.QK.head_rank2", "seed1"] == 4.0
    # a seed's own CI bounds feed the findings but are not averaged
    assert "closed_loop.head_rank1.resample.success_diff_ci_low" not in table.index


def test_summary_tree_nests_the_dotted_names_for_a_metrics_file():
    table = summary_table({0: {"a.b": 1.0, "a.c": 2.0}, 1: {"a.b": 3.0}})
    tree = summary_tree(table)
    assert tree["a"]["b"]["mean"] == 2.0 and tree["a"]["b"]["n_seeds"] == 2
    assert tree["a"]["c"]["n_seeds"] == 1 and math.isnan(tree["a"]["c"]["ci_low"])


def test_findings_are_checked_per_seed_and_missing_metrics_are_not_counted():
    finding = Finding("positive", "x is positive", lambda m: None if "x" not in m else m["x"] > 0)
    holds = holds_table({0: {"x": 1.0}, 1: {"x": -1.0}, 2: {}}, [finding])
    row = holds.iloc[0]
    assert (row.n_seeds, row.n_holds, row.holds) == (2, 1, "1/2")
    assert row.seed0 == 1.0 and row.seed1 == 0.0 and math.isnan(row.seed2)
    assert holds_tree(holds) == {"positive": {"n_holds": 1, "n_seeds": 2}}


def test_study_findings_read_the_metrics_they_name():
    by_name = {f.name: f for f in FINDINGS}
    critical = by_name["critical_head_removes_all_successes"].test
    assert critical({"closed_loop.head_rank1.zero.success_rate": 0.0}) is True
    assert critical({"closed_loop.head_rank1.zero.success_rate": 0.1}) is False
    assert critical({}) is None
    # the paired rule: trained minus untrained on the same episodes, its CI on the stated side of 0
    fewer = by_name["trained_fewer_collisions"].test
    assert fewer({"evaluate.trained_vs_untrained.collision.ci_high": -0.01})
    assert not fewer({"evaluate.trained_vs_untrained.collision.ci_high": 0.0})
    assert by_name["trained_higher_return"].test({"evaluate.trained_vs_untrained.return.ci_low": 0.82})
    assert len(by_name) == len(FINDINGS)


def test_the_attention_lens_and_deletion_findings_need_their_baselines_beaten_on_the_same_steps():
    by_name = {f.name: f for f in FINDINGS}
    versus = "attributions.trained.attention_vs_rankings.shapley"
    lows = {f"{versus}.{h}.{r}.ci_low": 0.1 for h in ("head_rank1", "head_rank2") for r in ("nearest", "lowest_ttc")}
    rankings = by_name["attention_beats_naive_rankings"].test
    assert rankings(lows) is True
    # one head no better than the lowest-TTC ranking on one seed's steps: the finding fails
    assert rankings({**lows, f"{versus}.head_rank2.lowest_ttc.ci_low": -0.05}) is False
    assert rankings({k: v for k, v in lows.items() if "head_rank2" not in k}) is None       # one head: not checkable
    chance = by_name["attention_top1_above_chance"].test
    assert chance({f"{versus}.head_rank1.chance.ci_low": 0.2, f"{versus}.head_rank2.chance.ci_low": 0.01}) is True
    assert chance({f"{versus}.head_rank1.chance.ci_low": 0.2, f"{versus}.head_rank2.chance.ci_low": 0.0}) is False
    # deletion: lower is better, so IG must lie below random
    deletion = by_name["ig_deletion_beats_random"].test
    assert deletion({"attributions.trained.deletion_vs_random.ig_others_zeroed.ci_high": -0.01}) is True
    assert deletion({"attributions.trained.deletion_vs_random.ig_others_zeroed.ci_high": 0.3}) is False
    # the tuned lens: the ego alone against the majority action, the full residual against the ego alone
    lens = "neurons.trained.lens_controls.tuned"
    assert by_name["ego_alone_decodes_above_majority"].test({f"{lens}.ego_minus_majority.ci_low": 0.02}) is True
    assert by_name["ego_alone_decodes_above_majority"].test({f"{lens}.ego_minus_majority.ci_low": -0.02}) is False
    assert by_name["attention_adds_to_ego_decoding"].test({f"{lens}.full_minus_ego.ci_low": 0.0}) is False
    assert all(by_name[n].kind == findings.FINDING for n in (
        "attention_beats_naive_rankings", "attention_top1_above_chance", "ig_deletion_beats_random",
        "ego_alone_decodes_above_majority", "attention_adds_to_ego_decoding"))


def test_no_effect_findings_need_an_equivalence_test_not_an_interval_that_includes_zero():
    no_effect = {f.name: f for f in FINDINGS}["rank_one_edit_no_closed_loop_effect"].test
    section = "interventions.editing.edit_rank_one.collision_no_effect"
    assert no_effect({f"{section}.equivalent": 1.0, f"{section}.resolved": 1.0}) is True
    assert no_effect({f"{section}.equivalent": 0.0, f"{section}.resolved": 1.0}) is False
    # too few episodes to resolve the margin: not checkable, counted neither way
    assert no_effect({f"{section}.equivalent": 0.0, f"{section}.resolved": 0.0}) is None
    # an interval that includes 0 is no longer enough
    assert no_effect({"interventions.editing.edit_rank_one.closed_collision_diff_ci_low": -0.2,
                      "interventions.editing.edit_rank_one.closed_collision_diff_ci_high": 0.2}) is None
    other = {f.name: f for f in FINDINGS}["other_head_not_needed_for_success"].test
    head = "interventions.head_no_effect.head_rank2.resample"
    assert other({f"{head}.non_inferior": 1.0, f"{head}.resolved": 1.0}) is True


def test_sanity_checks_are_reported_apart_and_not_counted_among_the_findings():
    kinds = {f.name: f.kind for f in FINDINGS}
    assert {n for n, k in kinds.items() if k == findings.SANITY} == {"ig_complete", "shapley_efficient",
                                                                        "rank_one_edit_hits_target"}
    per_seed = {0: {"attributions.trained.shapley_efficiency.max_rel_error": 1e-5,
                    "evaluate.trained_vs_untrained.collision.ci_high": -0.1}}
    holds = holds_table(per_seed).set_index("finding")
    assert holds.loc["shapley_efficient", "kind"] == findings.SANITY
    assert holds.loc["trained_fewer_collisions", "kind"] == findings.FINDING
    assert set(holds_tree(holds.reset_index())) == {n for n, k in kinds.items() if k == findings.FINDING}
    assert holds_tree(holds.reset_index(), findings.SANITY)["shapley_efficient"] == {"n_holds": 1, "n_seeds": 1}


# ------------------------------------------------------------------------- reference policies

def episodes(outcomes: str, start: int = 100) -> pd.DataFrame:
    """An episode table from a string of outcomes: a arrived, c collision, t timeout."""
    names = {"a": "arrived", "c": "collision", "t": "timeout"}
    return pd.DataFrame({"env_seed": range(start, start + len(outcomes)), "outcome": [names[o] for o in outcomes],
                         "return": [{"a": 9.0, "c": -5.0, "t": 3.0}[o] for o in outcomes]})


def test_reference_metrics_compare_with_idle_and_the_ceiling_and_feed_two_findings():
    reference = pd.concat([episodes("cccccaaaaa").assign(policy="constant_idle"),
                           episodes("cccccaaaaa").assign(policy="constant_faster"),
                           episodes("aaaaaaaaat").assign(policy="clairvoyant"),
                           episodes("tttttttttt").assign(policy="rule_based")])
    agent = episodes("aaaaaaaatt")
    out = aggregate.reference_metrics(agent, reference, {"constant_idle": {"success_rate": {"mean": 0.5}}}, 500, 0)
    assert out["ceiling_fraction"] == pytest.approx(0.8 / 0.9, abs=1e-6)
    # episodes 5-9 a constant policy solves (the planner's timeout in 9 notwithstanding), 0-4 only the planner
    assert out["episode_class_share"] == {"go": 0.5, "timing": 0.5, "unsolved": 0.0}
    by_class = out["success_by_episode_class"]
    assert by_class["go"] == pytest.approx(3 / 5) and by_class["timing"] == 1.0 and math.isnan(by_class["unsolved"])
    units = aggregate.episode_class_units(agent.assign(seed=0), reference)
    assert units.groupby("metric")["value"].mean()["reference.success_by_episode_class.go"] == pytest.approx(0.6)
    assert out["vs_constant_idle"]["success"]["diff"] == pytest.approx(0.3)
    assert out["constant_idle"] == {"success_rate": {"mean": 0.5}}
    metrics = aggregate.flatten(out, "reference")
    holds = findings.holds_table({0: metrics}).set_index("finding")
    assert holds.loc["trained_collides_less_than_idle", "seed0"] == 1.0       # 0 vs 5 collisions
    assert holds.loc["trained_beats_idle_on_success", "seed0"] == 0.0         # +0.3 on 10 pairs: CI reaches 0


def test_headline_holds_tens_of_numbers_read_from_the_summary_and_the_findings():
    per_seed = {0: {"evaluate.trained.success_rate.mean": 0.6, "evaluate.trained.collision_rate.mean": 0.1,
                    "reference.ceiling_fraction": 0.66},
                1: {"evaluate.trained.success_rate.mean": 0.8, "evaluate.trained.collision_rate.mean": 0.3,
                    "reference.ceiling_fraction": 0.88}}
    table, holds = summary_table(per_seed), holds_table(per_seed)
    out = findings.headline(table, holds)
    assert out["seeds"] == 2
    assert out["trained"]["success_rate"] == pytest.approx(0.7) and out["trained"]["mean_return"] is None
    assert out["ceiling_fraction"] == pytest.approx(0.77)
    assert set(out["holds"]) == {f.name for f in FINDINGS if f.kind == findings.FINDING}
    assert set(out["sanity_checks"]) == {f.name for f in FINDINGS if f.kind == findings.SANITY}
    assert len(flatten(out)) <= 40


def test_a_student_t_interval_of_a_rate_is_clipped_to_the_unit_interval_and_of_a_difference_is_not():
    values = {"interventions.perturbation_notebook.output_layer_hook_post_1.flip_rate": [0.0, 0.02, 0.2],
              "interventions.editing.edit_rank_one.closed_collision_diff": [0.0, 0.02, 0.2],
              "evaluate.trained.success_rate.mean": [0.9, 0.99, 1.0]}
    per_seed = {s: {name: v[s] for name, v in values.items()} for s in range(3)}
    table = aggregate.summary_table(per_seed).set_index("metric")
    rate, diff, success = (table.loc[name] for name in values)
    t_low = t_interval(values["interventions.editing.edit_rank_one.closed_collision_diff"])[1]
    assert t_low < 0 and diff["ci_low"] == pytest.approx(t_low)                  # a difference may be negative
    assert rate["ci_low"] == 0.0 and rate["ci_high"] == pytest.approx(diff["ci_high"])
    assert success["ci_high"] == 1.0 and success["ci_low"] < success["mean"]
    assert rate["interval"] == aggregate.SEED_T


def test_rates_get_a_bootstrap_interval_over_seeds_and_episodes_inside_the_unit_interval():
    outcomes = {0: ["arrived"] * 9 + ["collision"], 1: ["collision"] * 3 + ["arrived"] * 7, 2: ["timeout"] * 10}
    episodes = pd.DataFrame([{"seed": s, "model": "trained", "env_seed": 500 + i, "outcome": o,
                              "return": 1.0 if o == "arrived" else 0.0}
                             for s, outs in outcomes.items() for i, o in enumerate(outs)])
    per_seed = {s: {"evaluate.trained.collision_rate.mean": outs.count("collision") / 10,
                    "evaluate.trained.success_rate.mean": outs.count("arrived") / 10,
                    "other.number": float(s)} for s, outs in outcomes.items()}
    table = aggregate.summary_table(per_seed)
    units = aggregate.evaluation_units(episodes)
    assert set(units["metric"]) == {f"evaluate.trained.{m}.mean" for m in
                                    ("success_rate", "collision_rate", "timeout_rate", "mean_return")}
    pooled = aggregate.with_episode_intervals(table, units, 500).set_index("metric")
    t_row = table.set_index("metric").loc["evaluate.trained.collision_rate.mean"]
    assert t_row["ci_low"] == 0.0                 # the t interval over 3 seeds would leave [0, 1]: clipped
    row = pooled.loc["evaluate.trained.collision_rate.mean"]
    assert row["mean"] == pytest.approx(4 / 30) and 0.0 <= row["ci_low"] < row["mean"] < row["ci_high"] <= 1.0
    assert row["interval"] == aggregate.SEEDS_CROSSED_EPISODES          # every seed played env seeds 500-509
    assert pooled.loc["other.number", "interval"] == aggregate.SEED_T
    assert pooled.loc["other.number", "ci_low"] == table.set_index("metric").loc["other.number", "ci_low"]
    assert (pooled.loc["other.number", ["min", "max"]] == [0.0, 2.0]).all()
    # seeds that did not play the same episodes fall back to the nested bootstrap
    apart = aggregate.with_episode_intervals(table, units.assign(episode=units["episode"] + 10 * units["seed"]), 500)
    assert apart.set_index("metric").loc["evaluate.trained.collision_rate.mean", "interval"] == \
        aggregate.SEEDS_AND_EPISODES
    # a per-episode table that disagrees with the seeds' summary is an error, not a silent mix
    with pytest.raises(ValueError, match="differs"):
        aggregate.with_episode_intervals(table, units.assign(value=1.0), 100)


def test_five_identical_seeds_on_shared_episodes_get_the_single_seed_interval():
    # the untrained networks of the issue: identical outcome for outcome in every seed
    outcomes = ["arrived"] * 11 + ["collision"] * 6 + ["timeout"] * 3
    one = pd.DataFrame({"model": "untrained", "env_seed": range(900, 920), "outcome": outcomes,
                        "return": [float(i % 7) for i in range(20)]})
    metric = "evaluate.untrained.success_rate.mean"

    def pooled(seeds: list[int]) -> pd.Series:
        episodes = pd.concat([one.assign(seed=s) for s in seeds], ignore_index=True)
        per_seed = {s: {metric: 11 / 20} for s in seeds}
        table = aggregate.with_episode_intervals(aggregate.summary_table(per_seed),
                                                 aggregate.evaluation_units(episodes), 1000)
        return table.set_index("metric").loc[metric]

    single, five = pooled([0]), pooled([0, 1, 2, 3, 4])
    assert (five["ci_low"], five["ci_high"]) == (single["ci_low"], single["ci_high"])
    assert single["ci_high"] - single["ci_low"] > 0.3                    # 20 episodes: a wide interval
    # the nested bootstrap (episodes drawn per seed) would have been about √5 narrower
    nested = nested_bootstrap_ci([one["outcome"].eq("arrived").to_numpy(float)] * 5, 1000, 0)
    assert nested[2] - nested[1] < 0.6 * (single["ci_high"] - single["ci_low"])


def test_paired_units_are_per_episode_differences_on_the_same_env_seeds():
    agent = episodes("aacct").assign(seed=3)
    control = episodes("cacat", start=100)
    units = aggregate.paired_units(agent, control, "evaluate.trained_vs_untrained")
    by_metric = units.groupby("metric")["value"].mean()
    assert by_metric["evaluate.trained_vs_untrained.success.diff"] == pytest.approx((1 + 0 + 0 - 1 + 0) / 5)
    assert by_metric["evaluate.trained_vs_untrained.return.diff"] == pytest.approx((14 + 0 + 0 - 14 + 0) / 5)
    assert set(units["episode"]) == set(range(100, 105)) and set(units["seed"]) == {3}
    with pytest.raises(ValueError, match="lacks env seeds"):
        aggregate.paired_units(agent, control.iloc[:3], "x")


def test_attention_off_the_ego_is_summarised_per_head_and_named_by_the_heads_rank():
    attention = pd.DataFrame({"model": ["trained"] * 4, "episode": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                              "steps": 5, "off_ego": [0.1, 0.5, 0.3, 0.7]})
    summary = aggregate.attention_summary(attention)
    assert summary == {"trained": {"attention_off_ego": {"head0": pytest.approx(0.2), "head1": pytest.approx(0.6)}}}
    units = aggregate.attention_units(attention.assign(seed=4), {4: {0: 2, 1: 1}})
    by_metric = units.groupby("metric")["value"].mean()
    assert by_metric["rollout.trained.attention_off_ego.head_rank1"] == pytest.approx(0.6)
    assert by_metric["rollout.trained.attention_off_ego.head_rank2"] == pytest.approx(0.2)


def test_probe_findings_read_the_probes_summary_and_count_only_fitted_targets():
    by_name = {f.name: f for f in FINDINGS}
    fact = by_name["probe_vehicle_fact_above_controls"].test
    fitted = {"probes.targets.distance.score": 0.4, "probes.targets.distance.above_controls": 0.0,
              "probes.targets.crossing.score": 0.8, "probes.targets.crossing.above_controls": 1.0}
    assert fact(fitted) is True
    assert fact({**fitted, "probes.targets.crossing.above_controls": 0.0}) is False
    # a target whose probe could not be fitted (NaN score) is no evidence either way
    assert fact({"probes.targets.crossing.score": math.nan, "probes.targets.crossing.above_controls": 0.0}) is None
    assert fact({}) is None
    route = by_name["probe_route_fact_above_obs"].test
    assert route({"probes.targets.turn.score": 0.5, "probes.targets.turn.above_obs": 0.0,
                  "probes.targets.route_crosses.score": 0.7, "probes.targets.route_crosses.above_obs": 1.0}) is True
    assert route({"probes.targets.turn.score": 0.5, "probes.targets.turn.above_obs": math.nan}) is None
    # the route of a vehicle is not an observed fact: above_controls of a route target does not count for (a)
    assert fact({"probes.targets.turn.score": 0.9, "probes.targets.turn.above_controls": 1.0}) is None
    action = by_name["probe_action_before_output"].test
    assert action({"probes.targets.action.score": 0.6, "probes.targets.action.above_baseline_before_output": 1.0})
    assert action({"probes.targets.action.score": 0.6,
                   "probes.targets.action.above_baseline_before_output": 0.0}) is False


def test_the_steering_finding_holds_when_some_site_steers_collisions():
    steer = {f.name: f for f in FINDINGS}["safety_direction_steers_collisions"].test
    site = "steering.sites.{}.safety_steers_collisions"
    assert steer({site.format("a"): 0.0, site.format("b"): 1.0}) is True
    assert steer({site.format("a"): 0.0, site.format("b"): math.nan}) is False
    assert steer({site.format("a"): math.nan, "steering.sites.a.probe.collision_ends_opposite": 1.0}) is None


def test_missing_metrics_names_what_a_finding_reads_and_patterns_no_metric_matches():
    findings = (Finding("a", "", flag("x.ok")), Finding("steer", "", some_steered_site))
    flag_name = "steering.sites.attention_layer_hook_resid.safety_steers_collisions"
    assert missing_metrics({"x.ok": 1.0, flag_name: 0.0}, findings) == []
    assert missing_metrics({flag_name: 1.0}, findings) == ["x.ok"]
    assert missing_metrics({"x.ok": 1.0, "steering.sites.a.other": 1.0}, findings) == [
        r"^steering\.sites\.[^.]+\.safety_steers_collisions$"]
    assert some_steered_site({flag_name: 1.0}) is True and some_steered_site({}) is None
