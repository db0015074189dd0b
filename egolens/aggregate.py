"""Every per-seed headline number combined over seeds, and whether each finding holds per seed.

Pure functions: the stage (`stages/aggregate.py`) reads each seed's summary JSONs and tables and
passes plain dicts and DataFrames in; nothing here touches files.

Heads are interchangeable across seeds (training can give either head any role), so per-head
numbers are never averaged by index. Each seed's heads are ranked by what zero-ablating them does
in closed loop (`head_ranks`): `head_rank1` is the head whose removal costs the most successes in
that seed, `head_rank2` the next. Every key naming a head (`head0`, `head1_value`,
`attention_head0`, ...) is renamed by that rank before seeds are combined.

Statistics, one rule for every finding: a comparison of two conditions on the same episodes (or
steps) holds when the 95% paired-bootstrap CI of their difference lies on the stated side of 0; a
"no effect" holds only when an equivalence test (TOST at 5%) puts the difference inside the
margin of params.yaml. Pooled intervals over seeds that played the same held-out episodes come
from the crossed bootstrap (episodes resampled once for every seed, and seeds). Findings that hold
by construction are sanity checks (`SANITY`): reported apart, never counted among the findings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from egolens.evaluation import EPISODE_CLASSES, episode_classes, paired_versus, success_by_class
from egolens.names import (
    ARRIVED,
    COLLISION,
    DRIVING_METRICS,
    FINDING,
    HEAD,
    MEASURE_HALF,
    OUTCOME_RATES,
    SANITY,
    SEED_T,
    SEEDS_AND_EPISODES,
    SEEDS_CROSSED_EPISODES,
    SELECTION_MODE,
    TIMEOUT,
    attention_off_ego,
    evaluate_metric,
    head_ablated,
    head_ranks,
    head_role,
    head_zero,
    is_rate,
    neuron_ablation,
    of_kind,
)
from egolens.numbers import HEADLINE_DECIMALS, decimals, rate_interval
from egolens.stats import crossed_bootstrap_ci, nested_bootstrap_ci, t_interval

IDENTIFIERS = re.compile(r"(^|\.)(head|step|source_step|target_action_before|target_action_after|episodes|"
                         r"n_steps|n_tiny|n|factor)$")
"""Leaves that name things (a head index, a step, a count of samples), not measurements."""
WITHIN_SEED_CI = re.compile(r"(\.|_)ci_(low|high)$")
"""A seed's own CI bounds: kept for the per-seed findings, left out of the over-seed summary
(a mean of CI bounds is not a CI)."""

Metrics = dict[str, float]
"""Flat metric name (dotted path) -> value, for one seed."""


# ----------------------------------------------------------------------------------- per seed

def flatten(tree: Mapping[str, object], prefix: str = "") -> Metrics:
    """Nested dicts of numbers -> {"a.b.c": value}; None becomes NaN, bools 0/1, strings dropped."""
    out: Metrics = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif value is None:
            out[name] = math.nan
        elif isinstance(value, bool | int | float | np.integer | np.floating):
            out[name] = float(value)
    return out


def rename_heads(metrics: Metrics, ranks: Mapping[int, int]) -> Metrics:
    """Replace every `head<i>` in the metric names by `head_rank<r>` (r = ranks[i])."""
    def rename(name: str) -> str:
        return HEAD.sub(lambda m: head_role(ranks[int(m.group(1))]), name)

    renamed = {rename(name): value for name, value in metrics.items()}
    if len(renamed) != len(metrics):
        raise ValueError("renaming heads merged two metrics")
    return renamed


RATE_METRICS = frozenset({"success", "collision", "timeout", "action_slower", "action_idle", "action_faster"})
"""closed_loop.csv metrics whose value is a fraction (of episodes, or of steps for the action shares)."""


def closed_loop_heads(closed_loop: pd.DataFrame) -> Metrics:
    """Every head ablation's closed-loop effect on the measure half of the episodes (heads are ranked
    on the other half, `names.head_ranks`): head<i>.<mode>.<metric>_diff[_ci_low|_ci_high], and
    head<i>.<mode>.<metric>_rate (the ablated agent's own rate or action share)."""
    rows = closed_loop[(closed_loop["kind"] == "head") & (closed_loop["half"] == MEASURE_HALF)]
    out: Metrics = {}
    for row in rows.itertuples(index=False):
        base = f"{row.target}.{row.mode}.{row.metric}_diff"
        out[base], out[f"{base}_ci_low"], out[f"{base}_ci_high"] = row.diff, row.diff_ci_low, row.diff_ci_high
        if row.metric in RATE_METRICS:
            out[f"{row.target}.{row.mode}.{row.metric}_rate"] = row.value
    return out


def seed_metrics(summaries: Mapping[str, Mapping[str, object]], closed_loop: pd.DataFrame) -> Metrics:
    """One seed's headline numbers: every numeric leaf of each stage's summary (prefixed by the
    stage name), the closed-loop effect of every head ablation (`closed_loop.head_rank<r>...`),
    identifiers dropped, heads renamed by `head_ranks`.

    summaries: stage name -> its summary JSON, e.g. {"evaluate": ..., "train": ..., "circuits": ...}.
    """
    metrics: Metrics = {}
    for stage, tree in summaries.items():
        metrics.update(flatten(tree, stage))
    metrics.update(flatten(closed_loop_heads(closed_loop), "closed_loop"))
    metrics = {name: value for name, value in metrics.items() if not IDENTIFIERS.search(name)}
    return rename_heads(metrics, head_ranks(closed_loop))


PAIRED_POLICIES = ("constant_idle", "rule_based", "clairvoyant")
"""The reference policies every trained agent is compared with, episode by episode."""
REFERENCE_POLICIES = ("constant_slower", "constant_idle", "constant_faster", "rule_based", "clairvoyant")
"""The reference policies of results/reference (egolens.policies), weakest to the ceiling."""


def reference_metrics(agent: pd.DataFrame, reference: pd.DataFrame, policy_metrics: Mapping[str, object],
                      resamples: int, seed: int) -> dict[str, object]:
    """One seed's trained agent against the reference policies on the same held-out episodes.

    agent: the seed's evaluation episodes of the trained network (env_seed, return, outcome);
    reference: results/reference/episodes.csv (policy, env_seed, return, outcome);
    policy_metrics: results/reference/metrics.json (each policy's own rates with CIs).
    Returns {vs_<policy>: paired differences (`evaluation.paired_versus`), ceiling_fraction:
    the agent's success rate over the clairvoyant planner's, success_by_episode_class: the agent's
    success within each class of episode (`evaluation.episode_classes`: go / timing / unsolved),
    episode_class_share: each class's share of the episodes, <policy>: its own metrics}.
    """
    out: dict[str, object] = {}
    for policy in PAIRED_POLICIES:
        out[f"vs_{policy}"] = paired_versus(agent, reference[reference["policy"] == policy], resamples, seed)
    ceiling = reference.loc[reference["policy"] == "clairvoyant", "outcome"].eq(ARRIVED).mean()
    out["ceiling_fraction"] = decimals(agent["outcome"].eq(ARRIVED).mean() / ceiling, 6) if ceiling else None
    classes = episode_classes(reference)
    out["success_by_episode_class"] = success_by_class(agent, classes)
    out["episode_class_share"] = {name: float(classes.eq(name).mean()) for name in EPISODE_CLASSES}
    out.update({policy: policy_metrics[policy] for policy in REFERENCE_POLICIES if policy in policy_metrics})
    return out


# ------------------------------------------------------------------------------- over seeds

def summary_table(per_seed: Mapping[int, Metrics], level: float = 0.95) -> pd.DataFrame:
    """One row per metric: metric, n_seeds (with a finite value), mean, ci_low, ci_high, sd,
    seed<N> (each seed's value). Metrics missing in a seed count as NaN there; a seed's own CI
    bounds (`WITHIN_SEED_CI`) are left out. The interval of a rate (`names.is_rate`) is clipped to
    [0, 1] (`numbers.rate_interval`)."""
    seeds = sorted(per_seed)
    names = sorted(n for n in set().union(*(per_seed[s] for s in seeds)) if not WITHIN_SEED_CI.search(n))
    rows = []
    for name in names:
        values = [per_seed[s].get(name, math.nan) for s in seeds]
        mean, low, high, sd = t_interval(values, level)
        if is_rate(name):
            low, high = rate_interval(low, high)
        finite = [v for v in values if math.isfinite(v)]
        rows.append({"metric": name, "n_seeds": len(finite), "mean": mean, "ci_low": low, "ci_high": high,
                     "interval": SEED_T if math.isfinite(low) else "", "sd": sd,
                     "min": min(finite, default=math.nan), "max": max(finite, default=math.nan),
                     **{f"seed{s}": v for s, v in zip(seeds, values)}})
    return pd.DataFrame(rows)


UNITS = ["seed", "episode", "metric", "value"]
"""Columns of a per-episode units table: the seed, the episode (its env seed, or its index in a
rollout: the same key in every seed when the seeds play the same episodes), the metric, its value."""


def evaluation_units(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per-episode values of the held-out evaluation metrics (`UNITS`: 0/1 for a rate, the return for
    mean_return), from every seed's evaluate_episodes.csv plus a `seed` column."""
    def named(metric: str, values: pd.Series) -> pd.DataFrame:
        return pd.DataFrame({"seed": episodes["seed"], "episode": episodes["env_seed"], "value": values.astype(float),
                             "metric": [evaluate_metric(model, metric) for model in episodes["model"]]})

    parts = [named(rate, episodes["outcome"].eq(outcome)) for rate, outcome in OUTCOME_RATES.items()]
    parts.append(named("mean_return", episodes["return"]))
    return pd.concat(parts, ignore_index=True)[UNITS]


PAIRED_METRICS = ("success", "collision", "timeout", "return")
"""Per-episode numbers of a paired comparison (`evaluation.paired_versus`)."""


def _outcomes(episodes: pd.DataFrame) -> pd.DataFrame:
    """env_seed-indexed success, collision, timeout (0/1) and return of an episode table."""
    outcome = episodes["outcome"]
    table = pd.DataFrame({"success": outcome.eq(ARRIVED), "collision": outcome.eq(COLLISION),
                          "timeout": outcome.eq(TIMEOUT), "return": episodes["return"]}).astype(float)
    return table.set_index(episodes["env_seed"].to_numpy())


def paired_units(agent: pd.DataFrame, control: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Per-episode differences agent − control on the same env seeds (`UNITS`, metric
    `<prefix>.<success|collision|timeout|return>.diff`): their crossed bootstrap over seeds is the
    pooled interval of a paired comparison. agent: one seed's episodes plus `seed`; control: an
    episode table covering every env seed of the agent's."""
    a, c = _outcomes(agent), _outcomes(control)
    missing = a.index.difference(c.index)
    if len(missing):
        raise ValueError(f"{prefix}: the control lacks env seeds {sorted(missing)[:5]}")
    diff = a - c.loc[a.index]
    seeds = agent["seed"].to_numpy()
    return pd.concat([pd.DataFrame({"seed": seeds, "episode": a.index, "metric": f"{prefix}.{name}.diff",
                                    "value": diff[name].to_numpy()}) for name in PAIRED_METRICS],
                     ignore_index=True)[UNITS]


def episode_class_units(agent: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per-episode success of the trained agent within each episode class (`UNITS`, metric
    `reference.success_by_episode_class.<class>`); agent: its evaluation episodes plus `seed`."""
    joined = agent.join(episode_classes(reference), on="env_seed", how="inner")
    return pd.DataFrame({"seed": joined["seed"], "episode": joined["env_seed"],
                         "value": joined["outcome"].eq(ARRIVED).astype(float),
                         "metric": "reference.success_by_episode_class." + joined["episode_class"]})[UNITS]


def attention_units(attention: pd.DataFrame, ranks: Mapping[int, Mapping[int, int]]) -> pd.DataFrame:
    """Per-episode attention share off the ego (`UNITS`, metric `rollout.<model>.attention_off_ego.
    head_rank<r>`, heads named by their closed-loop rank in that seed; episode = the rollout's episode
    index); from every seed's rollout/attention_off_ego.csv plus a `seed` column. ranks: seed -> head -> rank."""
    metric = [attention_off_ego(model, head_role(ranks[seed][head]))
              for seed, model, head in zip(attention["seed"], attention["model"], attention["head"])]
    return pd.DataFrame({"seed": attention["seed"], "episode": attention["episode"], "metric": metric,
                         "value": attention["off_ego"].astype(float)})[UNITS]


def attention_summary(attention: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """One seed's attention_off_ego.csv -> {model: {attention_off_ego: {head<h>: mean over episodes}}}."""
    means = attention.groupby(["model", "head"])["off_ego"].mean()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, head), value in means.items():
        out.setdefault(str(model), {}).setdefault("attention_off_ego", {})[f"head{head}"] = float(value)
    return out


def crossed_values(rows: pd.DataFrame) -> np.ndarray | None:
    """One metric's units (seed, episode, value) as values [seeds, episodes] when every seed has the
    same episodes once each (seeds and episodes crossed); None otherwise."""
    if rows.duplicated(["seed", "episode"]).any():
        return None
    grid = rows.pivot(index="seed", columns="episode", values="value").sort_index()
    return None if grid.isna().to_numpy().any() else grid.to_numpy(dtype=np.float64)


def with_episode_intervals(table: pd.DataFrame, units: pd.DataFrame, resamples: int, seed: int = 0,
                           level: float = 0.95) -> pd.DataFrame:
    """`summary_table` with the interval of every metric that has per-episode `units` (`UNITS`)
    replaced by a bootstrap over seeds and episodes: crossed (`stats.crossed_bootstrap_ci`, the
    episodes drawn once for every seed) when every seed played the same episodes, nested
    (`stats.nested_bootstrap_ci`) otherwise; a rate's interval stays in [0, 1]. The mean stays the
    mean of the seeds' means (checked)."""
    out = table.copy()
    index = {name: i for i, name in enumerate(out["metric"])}
    for name, rows in units.groupby("metric", sort=True):
        if name not in index:
            continue
        values = crossed_values(rows)
        if values is not None:
            mean, low, high = crossed_bootstrap_ci(values, resamples, seed, level)
            label = SEEDS_CROSSED_EPISODES
        else:
            groups = [g["value"].to_numpy() for _, g in rows.groupby("seed", sort=True)]
            mean, low, high = nested_bootstrap_ci(groups, resamples, seed, level)
            label = SEEDS_AND_EPISODES
        i = index[name]
        out.loc[i, ["ci_low", "ci_high", "interval"]] = [low, high, label]
        if not math.isclose(mean, out.loc[i, "mean"], rel_tol=1e-6, abs_tol=1e-6):
            raise ValueError(f"{name}: the episodes' mean {mean} differs from the seeds' summary {out.loc[i, 'mean']}")
    return out


def summary_tree(table: pd.DataFrame) -> dict:
    """`summary_table` -> nested {path...: {mean, ci_low, ci_high, n_seeds}} for a DVC metrics file."""
    tree: dict = {}
    for row in table.itertuples(index=False):
        node = tree
        *parents, leaf = row.metric.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"mean": row.mean, "ci_low": row.ci_low, "ci_high": row.ci_high, "n_seeds": row.n_seeds}
    return tree


# ----------------------------------------------------------------------------------- findings

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
    """A no-effect test of the interventions stage (`intervention_study.no_effect`, in `section`):
    holds when its 0/1 `test` (equivalent or non_inferior) is 1; not checkable (None) when the
    sample cannot resolve the margin at all (resolved 0), so that such a seed counts neither way."""
    check = _needs(f"{section}.{test}", f"{section}.resolved")(lambda value, resolved: value == 1)

    def decide(m: Metrics) -> bool | None:
        return None if m.get(f"{section}.resolved") == 0 else check(m)
    decide.needs = check.needs                                                # type: ignore[attr-defined]
    return decide


_PAIRED = "paired 95% CI of the difference on the same held-out episodes"
_HELD_OUT = "chosen on the first half of the closed-loop episodes, measured on the second"

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
    Finding("attention_tracks_shapley",
            "Both heads' attention ranks vehicles like their |Shapley values| more in the trained network than "
            "in the untrained one (mean per-step Spearman).",
            _needs("attributions.trained.agreement.shapley.head_rank1.spearman_mean",
                   "attributions.untrained.agreement.shapley.head_rank1.spearman_mean",
                   "attributions.trained.agreement.shapley.head_rank2.spearman_mean",
                   "attributions.untrained.agreement.shapley.head_rank2.spearman_mean")(
                lambda t1, u1, t2, u2: t1 > u1 and t2 > u2)),
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
    Finding("ego_alone_does_not_decide",
            "Decoding the ego's residual alone through the output MLP picks the final action on fewer than "
            "half of the recorded steps (logit lens).",
            _needs("neurons.trained.logit_lens_agreement.ego")(lambda a: a < 0.5)),
)


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
