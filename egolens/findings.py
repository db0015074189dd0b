"""The study's findings: claims checked separately in every seed (`FINDINGS`), each with one rule —
a comparison of two conditions on the same episodes (or steps) holds when the 95% paired-bootstrap
CI of their difference lies on the stated side of 0; a "no effect" holds only when an equivalence
test (TOST at 5%) puts the difference inside the margin of params.yaml. Findings that hold by
construction are sanity checks (`SANITY`): reported apart, never counted. `holds_table` checks them
per seed, `headline` picks the few numbers `dvc exp show` lists."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from egolens.aggregate import Metrics
from egolens.names import (
    DRIVING_METRICS,
    FINDING,
    SANITY,
    SELECTION_MODE,
    evaluate_metric,
    head_ablated,
    head_role,
    head_zero,
    neuron_ablation,
    of_kind,
)
from egolens.numbers import HEADLINE_DECIMALS, decimals


@dataclass(frozen=True)
class Finding:
    """A claim checked separately in every seed. `test` gets the seed's metrics and returns
    True/False, or None when a metric it needs is missing. kind: FINDING or SANITY."""

    name: str
    statement: str
    test: Callable[[Metrics], bool | None]
    kind: str = FINDING


def _needs(*names: str) -> Callable[[Callable[..., bool]], Callable[[Metrics], bool | None]]:
    """Decorator: call the check with the named metrics, or return None if one is missing/NaN."""
    def wrap(check: Callable[..., bool]) -> Callable[[Metrics], bool | None]:
        def test(m: Metrics) -> bool | None:
            values = [m.get(n, math.nan) for n in names]
            return None if any(not math.isfinite(v) for v in values) else bool(check(*values))
        test.needs = names                                                   # type: ignore[attr-defined]
        return test
    return wrap


def above_zero(ci_low: str) -> Callable[[Metrics], bool | None]:
    """The paired rule: a difference on shared episodes (or steps) is positive when its 95% paired
    CI lies above 0 (`ci_low` names the CI's lower bound)."""
    return _needs(ci_low)(lambda low: low > 0)


def below_zero(ci_high: str) -> Callable[[Metrics], bool | None]:
    """The paired rule: a difference is negative when its 95% paired CI lies below 0."""
    return _needs(ci_high)(lambda high: high < 0)


def flag(name: str) -> Callable[[Metrics], bool | None]:
    """A test computed by a stage (a check): holds when the 0/1 metric is 1."""
    return _needs(name)(lambda value: value == 1)


def no_effect(test: str, section: str) -> Callable[[Metrics], bool | None]:
    """A no-effect test of the interventions stage (`intervention_summary.no_effect`, in `section`):
    holds when its 0/1 `test` (equivalent or non_inferior) is 1; not checkable (None) when the
    sample cannot resolve the margin at all (resolved 0), so that such a seed counts neither way."""
    check = _needs(f"{section}.{test}", f"{section}.resolved")(lambda value, resolved: value == 1)

    def decide(m: Metrics) -> bool | None:
        return None if m.get(f"{section}.resolved") == 0 else check(m)
    decide.needs = check.needs                                                # type: ignore[attr-defined]
    return decide


_PAIRED = "paired 95% CI of the difference on the same held-out episodes"
_HELD_OUT = "chosen on the first half of the closed-loop episodes, measured on the second"
_STEPS = "steps of one episode resampled together"

FINDINGS: tuple[Finding, ...] = (
    Finding("trained_fewer_collisions",
            f"The trained agent collides less than its untrained network ({_PAIRED} below 0).",
            below_zero("evaluate.trained_vs_untrained.collision.ci_high")),
    Finding("trained_higher_return",
            f"The trained agent earns a higher return than its untrained network ({_PAIRED} above 0).",
            above_zero("evaluate.trained_vs_untrained.return.ci_low")),
    Finding("meets_reference_bar",
            "The trained agent reaches the reference notebook's bar (mean return >= 5.35 and collision rate "
            "<= 0.4 over the held-out episodes).",
            _needs(evaluate_metric("trained", "mean_return"), evaluate_metric("trained", "collision_rate"))(
                lambda ret, coll: ret >= 5.35 and coll <= 0.4)),
    Finding("trained_beats_idle_on_success",
            f"The trained agent succeeds more often than constant IDLE ({_PAIRED} above 0).",
            above_zero("reference.vs_constant_idle.success.ci_low")),
    Finding("trained_collides_less_than_idle",
            f"The trained agent collides less often than constant IDLE ({_PAIRED} below 0).",
            below_zero("reference.vs_constant_idle.collision.ci_high")),
    Finding("one_head_critical",
            f"Resample-ablating one head (head_rank1, {_HELD_OUT}) lowers the closed-loop success rate "
            "(paired 95% CI below 0).",
            below_zero(head_ablated(1, SELECTION_MODE, "success_diff_ci_high"))),
    Finding("critical_head_removes_all_successes",
            f"Zero-ablating head_rank1 ({_HELD_OUT}) removes every success (success rate 0).",
            _needs(head_zero(1, "success_rate"))(lambda rate: rate <= 1e-9)),
    Finding("other_head_not_needed_for_success",
            f"Resample-ablating the other head (head_rank2, {_HELD_OUT}) does not lower the success rate by "
            "more than interventions.equivalence_margin (one-sided test at 5%, on enough episodes to resolve "
            "the margin).",
            no_effect("non_inferior", f"interventions.head_no_effect.{head_role(2)}.{SELECTION_MODE}")),
    Finding("most_attended_vehicle_matters",
            "Removing the most-attended vehicle raises the collision rate (paired 95% CI above 0).",
            above_zero("interventions.vehicle_removal.most_attended.collision_diff_ci_low")),
    Finding("most_attended_beats_random_vehicle",
            "Removing the most-attended vehicle raises collisions more than removing a random vehicle (paired 95% "
            "CI of the difference above 0).",
            above_zero("interventions.vehicle_removal.most_attended_vs_random.collision_diff_ci_low")),
    Finding("attention_beats_naive_rankings",
            "Each head's attention ranks the vehicles more like their |Shapley values| than the nearest-first and "
            "the lowest-time-to-collision-first rankings do (paired 95% CI of the per-step Spearman difference on "
            f"the same steps above 0 for both heads and both rankings; {_STEPS}).",
            _needs(*(f"attributions.trained.attention_vs_rankings.shapley.{head_role(r)}.{ranking}.ci_low"
                     for r in (1, 2) for ranking in ("nearest", "lowest_ttc")))(
                lambda *lows: min(lows) > 0)),
    Finding("attention_top1_above_chance",
            "The vehicle each head attends to most is the one with the largest |Shapley value| more often than a "
            "vehicle drawn at random among those present (paired 95% CI of the per-step difference from the "
            f"step's chance level above 0 for both heads; {_STEPS}).",
            _needs(*(f"attributions.trained.attention_vs_rankings.shapley.{head_role(r)}.chance.ci_low"
                     for r in (1, 2)))(lambda *lows: min(lows) > 0)),
    Finding("ig_deletion_beats_random",
            "Deleting vehicles in |IG| order (others-zeroed baseline) lowers Q(chosen) faster than random orders: "
            "the area under the deletion curve is smaller (lower is better; paired 95% CI of the per-step "
            f"difference below 0; {_STEPS}).",
            below_zero("attributions.trained.deletion_vs_random.ig_others_zeroed.ci_high")),
    Finding("ig_complete",
            "Integrated gradients (of Q and of the advantage, from every baseline) and layer conductance at "
            "the output MLP's input are complete within 1% of ΔQ on every analysed step of the trained network.",
            _needs(*(f"attributions.trained.ig_completeness.{baseline}.{quantity}.fraction_within"
                     for baseline in ("others_zeroed", "typical_scene", "typical_scene_ego")
                     for quantity in ("q", "advantage")),
                   "attributions.trained.conductance_completeness.hook_resid.fraction_within")(
                lambda *fractions: min(fractions) == 1.0), SANITY),
    Finding("shapley_efficient",
            "Vehicle Shapley values add up to Q(x) − Q(ego alone) within 0.1% on every step.",
            _needs("attributions.trained.shapley_efficiency.max_rel_error")(lambda e: e < 1e-3), SANITY),
    Finding("top_conductance_neurons_beat_random",
            "Mean-ablating the top-5 conductance neurons of others_embedding layer 0 changes Q more than "
            "random 5-neuron sets (paired 95% CI of the |ΔQ| difference on the same recorded steps above 0).",
            above_zero(neuron_ablation("top_minus_random_abs_dq_ci_low"))),
    Finding("rank_one_edit_hits_target",
            "The rank-one edit makes the agent brake at its target step.",
            _needs("interventions.editing.edit_rank_one.target_brakes")(lambda brakes: brakes == 1), SANITY),
    Finding("rank_one_edit_no_closed_loop_effect",
            "The rank-one edit leaves the closed-loop collision rate unchanged within ±interventions."
            "equivalence_margin (equivalence test, TOST at 5%, on enough episodes to resolve the margin).",
            no_effect("equivalent", "interventions.editing.edit_rank_one.collision_no_effect")),
    Finding("ego_alone_decodes_above_majority",
            "The tuned lens (an affine probe fitted on other episodes) decodes the final action from the ego's "
            "residual alone more often than the majority baseline does (always the most frequent action of the "
            f"same held-out steps; paired 95% CI of the per-step difference above 0; {_STEPS}).",
            above_zero("neurons.trained.lens_controls.tuned.ego_minus_majority.ci_low")),
    Finding("attention_adds_to_ego_decoding",
            "The tuned lens decodes the final action from the full residual (the ego plus every head's write) more "
            "often than from the ego's residual alone (paired 95% CI of the per-step difference on the same "
            f"held-out steps above 0; {_STEPS}).",
            above_zero("neurons.trained.lens_controls.tuned.full_minus_ego.ci_low")),
)


# ------------------------------------------------------------------ probes and steering (issue 23)
# Kept in one block (PROBE_FINDINGS, appended to FINDINGS) so that it merges apart from the rest.

OBSERVED_VEHICLE_FACTS = ("distance", "ttc", "crossing", "bearing_sector")
"""Per-vehicle probe targets the observation implies (non-linearly)."""
ROUTE_FACTS = ("route_crosses", "turn")
"""Per-vehicle probe targets the observation does not contain: the route the simulator gave the vehicle."""
NEXT_ACTION = "action"
"""The probe target of the action the agent takes at the step (what its output is about to pick)."""
STEERING_SITE_FLAG = re.compile(r"^steering\.sites\.[^.]+\.safety_steers_collisions$")


def some_target(field: str, targets: Sequence[str]) -> Callable[[Metrics], bool | None]:
    """Holds when the probes summary's 0/1 `field` is 1 for one of `targets`; a target counts only
    where its probe was fitted (a finite score) and the field is finite; None when none counts."""
    def test(m: Metrics) -> bool | None:
        values = [m.get(f"probes.targets.{t}.{field}", math.nan) for t in targets
                  if math.isfinite(m.get(f"probes.targets.{t}.score", math.nan))]
        checked = [v for v in values if math.isfinite(v)]
        return None if not checked else any(v == 1 for v in checked)
    test.needs = tuple(f"probes.targets.{t}.{field}" for t in targets)       # type: ignore[attr-defined]
    return test


def some_steered_site(m: Metrics) -> bool | None:
    """Holds when the steering summary's safety_steers_collisions is 1 at some steered site; None
    when no site has it (no steering run, or an α grid without both signs)."""
    checked = [v for name, v in m.items() if STEERING_SITE_FLAG.match(name) and math.isfinite(v)]
    return None if not checked else any(v == 1 for v in checked)


some_steered_site.needs = ()                                                  # type: ignore[attr-defined]
some_steered_site.needs_pattern = STEERING_SITE_FLAG                          # type: ignore[attr-defined]


_EPISODE_CI = "paired 95% CI over held-out episodes"
PROBE_FINDINGS: tuple[Finding, ...] = (
    Finding("probe_vehicle_fact_above_controls",
            "A fact the observation implies about another vehicle (distance, time to collision, crossing, bearing "
            "sector) is read by a linear probe at some per-vehicle site of the trained network above all three "
            f"controls: the vehicle's raw observation row and the untrained network at the same site ({_EPISODE_CI} "
            "of each difference above 0) and the control task (selectivity's CI above 0).",
            some_target("above_controls", OBSERVED_VEHICLE_FACTS)),
    Finding("probe_route_fact_above_obs",
            "A fact the observation does not contain, the vehicle's route (where it turns, whether its route crosses "
            "the ego's), is read at some per-vehicle site of the trained network better than from the vehicle's raw "
            f"observation row ({_EPISODE_CI} of site − observation above 0). Beating the observation alone does not "
            "say that training taught it: the untrained network at the same site is that control, reported beside.",
            some_target("above_obs", ROUTE_FACTS)),
    Finding("probe_action_before_output",
            "The action the agent takes at a step is read by a linear probe before the output MLP (a per-step site "
            "that is not output_layer.*) better than the majority-action predictor fitted on the same training "
            f"episodes (balanced accuracy, {_EPISODE_CI} of probe − predictor above 0).",
            some_target("above_baseline_before_output", (NEXT_ACTION,))),
    Finding("safety_direction_steers_collisions",
            "At some steered site, adding α × the most selective safety probe's direction moves the closed-loop "
            "collision rate to opposite sides of α = 0's at the most negative and at the largest α (paired 95% CIs "
            "against α = 0 on the same env seeds, one below 0, the other above), while none of the random directions "
            "of equal norm changes it at any α (every paired CI includes 0).",
            some_steered_site),
)
FINDINGS = FINDINGS + PROBE_FINDINGS
# ------------------------------------------------------------------ end of probes and steering


def missing_metrics(metrics: Metrics, findings: Sequence[Finding] = FINDINGS) -> list[str]:
    """The metric names the findings read (`test.needs`) that `metrics` lacks, and the patterns
    (`test.needs_pattern`: metrics named by params, e.g. per steered site) no metric matches."""
    names = {n for f in findings for n in f.test.needs if n not in metrics}               # type: ignore[attr-defined]
    patterns = {p.pattern for f in findings if (p := getattr(f.test, "needs_pattern", None)) is not None
                and not any(p.match(name) for name in metrics)}
    return sorted(names | patterns)


def holds_table(per_seed: Mapping[int, Metrics], findings: Sequence[Finding] = FINDINGS) -> pd.DataFrame:
    """One row per finding: finding, kind (FINDING or SANITY), statement, n_seeds (where it could be
    checked), n_holds, holds ("k/n"), seed<N> (1 holds, 0 does not, NaN not checkable)."""
    seeds = sorted(per_seed)
    rows = []
    for finding in findings:
        results = {s: finding.test(per_seed[s]) for s in seeds}
        checked = [r for r in results.values() if r is not None]
        n_holds = int(sum(checked))
        rows.append({"finding": finding.name, "kind": finding.kind, "statement": finding.statement,
                     "n_seeds": len(checked), "n_holds": n_holds, "holds": f"{n_holds}/{len(checked)}",
                     **{f"seed{s}": (math.nan if r is None else float(r)) for s, r in results.items()}})
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame, holds: pd.DataFrame) -> dict[str, object]:
    """The few numbers a researcher compares across experiments (results/headline.json, the study's
    DVC metric): how the trained agents drive (means over seeds), their untrained networks, the
    reference policies and the ceiling fraction, and in how many seeds each finding (and, apart, each
    sanity check) holds."""
    mean = table.set_index("metric")["mean"]

    def get(name: str) -> float | None:
        value = mean.get(name)
        return decimals(value, HEADLINE_DECIMALS)

    rates = DRIVING_METRICS
    return {
        "seeds": int(table["n_seeds"].max()) if len(table) else 0,
        "trained": {r: get(evaluate_metric("trained", r)) for r in rates},
        "untrained": {r: get(evaluate_metric("untrained", r)) for r in rates[:2]},
        "ceiling_fraction": get("reference.ceiling_fraction"),
        "success_on_go_episodes": get("reference.success_by_episode_class.go"),
        "success_on_timing_episodes": get("reference.success_by_episode_class.timing"),
        "clairvoyant_success": get("reference.clairvoyant.success_rate.mean"),
        "idle_success": get("reference.constant_idle.success_rate.mean"),
        "holds": {row.finding: int(row.n_holds) for row in of_kind(holds, FINDING).itertuples(index=False)},
        "sanity_checks": {row.finding: int(row.n_holds) for row in of_kind(holds, SANITY).itertuples(index=False)},
    }


def holds_tree(holds: pd.DataFrame, kind: str = FINDING) -> dict[str, dict[str, int]]:
    """`holds_table` rows of one kind -> {finding: {n_holds, n_seeds}} for the metrics file."""
    return {row.finding: {"n_holds": int(row.n_holds), "n_seeds": int(row.n_seeds)}
            for row in of_kind(holds, kind).itertuples(index=False)}
