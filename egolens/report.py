"""results/report.md, written from the study's tables: every number in it comes from
`summary.csv` (mean and 95% CI over seeds) or `holds.csv` (in how many seeds a finding holds).

Findings are sentence templates with placeholders, filled by `fill`:
- `{m:<metric>}` the mean over seeds with its 95% CI, "0.55 [0.46, 0.63]";
- `{v:<metric>}` the mean alone; `{pct:<metric>}` the mean as a percentage, "55%";
- `{h:<finding>}` where a finding holds, "3/3 seeds";
- `{fig:<name>}` a link to results/figures/<name>.png.
A metric missing from the table renders as "n/a" and is listed under the report's limits, so a
template can never print a stale or invented number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

PLACEHOLDER = re.compile(r"\{(m|v|pct|h|fig):([^}]+)\}")


@dataclass(frozen=True)
class Section:
    """A findings section: a title and its sentence templates (one finding each)."""

    title: str
    sentences: tuple[str, ...]


QUESTION = (
    "What does a DQN agent with an ego-attention Q-network learn to look at when it drives through "
    "highway-env's `intersection-v0`, and which parts of the network carry its decisions? We train the "
    "reference network for several seeds, record its rollouts, and take it apart observationally (circuits, "
    "attributions, neurons, lenses) and causally (ablations, patching, edits), always beside the same "
    "network before training."
)

FINDINGS: tuple[Section, ...] = (
    Section("Performance", (
        "On held-out episodes the trained agent succeeds in {m:evaluate.trained.success_rate.mean} of episodes "
        "and collides in {m:evaluate.trained.collision_rate.mean}; the untrained network collides in "
        "{m:evaluate.untrained.collision_rate.mean} ({fig:evaluation}).",
        "The trained agent's mean return is {m:evaluate.trained.mean_return.mean} against "
        "{m:evaluate.untrained.mean_return.mean} untrained; non-overlapping per-seed CIs on collisions in "
        "{h:trained_fewer_collisions}, on return in {h:trained_higher_return}, and the reference notebook's "
        "bar (return >= 5.35, collisions <= 0.4) is met in {h:meets_reference_bar} ({fig:evaluation}).",
        "Over the last 100 training episodes the return is {m:train.return_last100} with "
        "{m:train.collision_last100} collisions ({fig:learning_curves}).",
        "On the same held-out episodes constant IDLE succeeds in {v:reference.constant_idle.success_rate.mean} "
        "and collides in {v:reference.constant_idle.collision_rate.mean}, the rule-based driver succeeds in "
        "{v:reference.rule_based.success_rate.mean}, and the clairvoyant planner (the ceiling) succeeds in "
        "{v:reference.clairvoyant.success_rate.mean} with {v:reference.clairvoyant.collision_rate.mean} "
        "collisions; the trained agent reaches {m:reference.ceiling_fraction} of the ceiling's success rate. "
        "It succeeds more often than constant IDLE (paired CI above 0) in {h:trained_beats_idle_on_success} "
        "and collides less than constant IDLE in {h:trained_collides_less_than_idle} ({fig:evaluation}).",
    )),
    Section("One head carries the policy", (
        "Zero-ablating the most important head (head_rank1, chosen per seed by this very effect) changes the "
        "closed-loop success rate by {m:closed_loop.head_rank1.zero.success_diff} and the collision rate by "
        "{m:closed_loop.head_rank1.zero.collision_diff}; it removes every success in "
        "{h:critical_head_removes_all_successes} ({fig:ablations}).",
        "Zero-ablating the other head (head_rank2) changes success by "
        "{m:closed_loop.head_rank2.zero.success_diff} and collisions by "
        "{m:closed_loop.head_rank2.zero.collision_diff}; it leaves success intact in "
        "{h:other_head_not_needed_for_success} ({fig:ablations}).",
        "Zeroing the whole attention branch changes success by "
        "{m:interventions.branch_ablation.zero.success_diff} and collisions by "
        "{m:interventions.branch_ablation.zero.collision_diff} (the agent stops driving), while mean-ablating "
        "it raises collisions by {m:interventions.branch_ablation.mean.collision_diff} ({fig:ablations}).",
    )),
    Section("Attention points at the vehicles that matter", (
        "Per step, head_rank1's attention and the vehicles' |Shapley values| have a mean Spearman correlation of "
        "{m:attributions.trained.agreement.shapley.head_rank1.spearman_mean} (untrained "
        "{m:attributions.untrained.agreement.shapley.head_rank1.spearman_mean}); head_rank2: "
        "{m:attributions.trained.agreement.shapley.head_rank2.spearman_mean} (untrained "
        "{m:attributions.untrained.agreement.shapley.head_rank2.spearman_mean}); trained above untrained for "
        "both heads in {h:attention_tracks_shapley} ({fig:attention_vs_attribution}).",
        "The most-attended vehicle is also the one with the largest |Shapley value| on "
        "{pct:attributions.trained.agreement.shapley.head_rank1.top1_rate} of steps for head_rank1 and "
        "{pct:attributions.trained.agreement.shapley.head_rank2.top1_rate} for head_rank2 "
        "({fig:attention_vs_attribution}).",
        "Removing the most-attended vehicle from the observation raises closed-loop collisions by "
        "{m:interventions.vehicle_removal.most_attended.collision_diff}, removing a random vehicle by "
        "{m:interventions.vehicle_removal.random.collision_diff} (most-attended above random in "
        "{h:most_attended_beats_random_vehicle}) ({fig:ablations}).",
        "When a vehicle is moved closer, path patching its new key into head_rank2 alone restores "
        "{m:interventions.path_patching_restored.vehicle_closer.head_rank2_key} of the change in "
        "Q(SLOWER) − Q(FASTER), into head_rank1 alone "
        "{m:interventions.path_patching_restored.vehicle_closer.head_rank1_key}; "
        "when the ego slows down, head_rank1's value path restores "
        "{m:interventions.path_patching_restored.ego_slower.head_rank1_value} ({fig:patching}).",
    )),
    Section("Attributions are checked, not assumed", (
        "Every integrated-gradients path is cut where a ReLU of the network switches and each piece is "
        "integrated with Gauss-Legendre points (a mean of "
        "{v:attributions.trained.ig_completeness.others_zeroed.q.mean_points} gradient evaluations per step, "
        "at most {v:attributions.trained.ig_completeness.others_zeroed.q.max_points}). IG (others-zeroed "
        "baseline, Q) is then complete within 1% of ΔQ on "
        "{pct:attributions.trained.ig_completeness.others_zeroed.q.fraction_within} of the trained network's "
        "analysed steps (largest relative error "
        "{v:attributions.trained.ig_completeness.others_zeroed.q.max_rel_error}). Every IG and the "
        "conductance at the output MLP's input are complete on every step in {h:ig_complete} "
        "({fig:ig_features}).",
        "Layer conductance at the output MLP's input adds up to ΔQ within 1% on "
        "{pct:attributions.trained.conductance_completeness.hook_resid.fraction_within} of steps "
        "({fig:layer_conductance}).",
        "Vehicle Shapley values satisfy efficiency to a largest relative error of "
        "{v:attributions.trained.shapley_efficiency.max_rel_error} ({h:shapley_efficient}).",
        "Deleting vehicles in IG order lowers Q(chosen) with an area under the deletion curve of "
        "{m:attributions.trained.deletion_auc_q.ig_others_zeroed} against "
        "{m:attributions.trained.deletion_auc_q.random} for random orders.",
    )),
    Section("Circuits and neurons", (
        "Training moved every circuit far from its initialisation: relative Frobenius difference of the QK "
        "circuit {m:circuits.rel_diff_trained_vs_untrained.QK.head_rank1} (head_rank1) and "
        "{m:circuits.rel_diff_trained_vs_untrained.QK.head_rank2} (head_rank2), of the OV circuit "
        "{m:circuits.rel_diff_trained_vs_untrained.OV.head_rank1} and "
        "{m:circuits.rel_diff_trained_vs_untrained.OV.head_rank2}, of the output composite "
        "{m:circuits.rel_diff_trained_vs_untrained.output_composite} ({fig:qk_circuits}, {fig:ov_circuits}, "
        "{fig:embedding_composites}).",
        "Mean-ablating the five top-conductance neurons of the others-embedding's first layer changes Q by a "
        "mean |ΔQ| of "
        "{m:interventions.neuron_ablation.others_embedding_hook_post_0.top_abs_dq} against "
        "{m:interventions.neuron_ablation.others_embedding_hook_post_0.random_abs_dq} for random five-neuron "
        "sets (top above random in {h:top_conductance_neurons_beat_random}) ({fig:neuron_conductance}).",
        "Decoded through the output MLP, the ego's residual alone already picks the final action on "
        "{pct:neurons.trained.logit_lens_agreement.ego} of steps, adding head_rank1's write "
        "{pct:neurons.trained.logit_lens_agreement.head_rank1}; a tuned affine lens reaches "
        "{pct:neurons.trained.tuned_lens_held_out_agreement.ego} on held-out steps from the ego alone "
        "({fig:logit_lens}).",
    )),
    Section("Editing", (
        "A rank-one edit of the output MLP makes the agent brake at its target step in "
        "{h:rank_one_edit_hits_target}, flipping {pct:interventions.editing.edit_rank_one.side_flip_rate} of "
        "other recorded steps, yet changes closed-loop collisions by "
        "{m:interventions.editing.edit_rank_one.closed_collision_diff} (no effect in "
        "{h:rank_one_edit_no_closed_loop_effect}).",
    )),
)

LIMITS = (
    "{n_seeds} seeds: every CI over seeds is a Student-t interval with {df} degrees of freedom, so it is "
    "wide; the per-seed tables carry bootstrap CIs over episodes and steps.",
    "Heads are matched across seeds by their closed-loop role (head_rank1 = the head whose zero-ablation "
    "costs the most successes in that seed), which makes the head_rank1 ablation effect large by "
    "construction; the other head's numbers are the comparison.",
    "The untrained baseline collides in {untrained_collisions} of held-out episodes and behaves close to a "
    "constant policy, so trained-vs-untrained contrasts are against a near no-op driver.",
    "Attribution and circuit analyses use recorded steps of the agent's own greedy rollouts (at most "
    "`attributions.max_steps` per network), not a designed distribution of scenes.",
)


# ------------------------------------------------------------------------------------ filling

def format_number(value: float) -> str:
    """3 significant digits, plain notation for ordinary sizes, scientific below 1e-3."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def fill(template: str, summary: pd.DataFrame, holds: pd.DataFrame, figures: Mapping[str, str],
         missing: list[str] | None = None) -> str:
    """Replace every placeholder of `template` (see the module docstring).

    summary: summary.csv (metric, mean, ci_low, ci_high, ...); holds: holds.csv (finding, holds,
    n_seeds, n_holds); figures: figure name -> caption. Unknown names render "n/a" and are appended
    to `missing`.
    """
    table = summary.set_index("metric")
    found = holds.set_index("finding")

    def value(name: str, column: str) -> float:
        return float(table.loc[name, column]) if name in table.index else math.nan

    def replace(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        known = (name in figures if kind == "fig" else name in found.index if kind == "h" else name in table.index)
        if not known:
            if missing is not None:
                missing.append(f"{kind}:{name}")
            return "n/a"
        if kind == "fig":
            return f"[figure `{name}`](figures/{name}.png)"
        if kind == "h":
            return f"{found.loc[name, 'holds']} seeds"
        mean = value(name, "mean")
        if kind == "v":
            return format_number(mean)
        if kind == "pct":
            return "n/a" if not math.isfinite(mean) else f"{100 * mean:.0f}%"
        low, high = value(name, "ci_low"), value(name, "ci_high")
        if not (math.isfinite(low) and math.isfinite(high)):
            return format_number(mean)
        return f"{format_number(mean)} [{format_number(low)}, {format_number(high)}]"

    return PLACEHOLDER.sub(replace, template)


# ------------------------------------------------------------------------------------- report

def setup_lines(params: Mapping[str, object], versions: Mapping[str, str]) -> list[str]:
    """The setup section: seeds, the knobs a reader needs, package versions."""
    def get(path: str) -> object:
        node: object = params
        for key in path.split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
        return node

    knobs = ("seeds", "train.episodes", "train.num_envs", "agent.heads", "agent.feature_size", "agent.gamma",
             "agent.lr", "agent.target_update", "evaluate.episodes", "rollout.episodes",
             "attributions.max_steps", "attributions.path_grid", "attributions.path_grid_max",
             "attributions.segment_points",
             "interventions.closed_loop_episodes")
    lines = [f"- `{k}`: {get(k)}" for k in knobs if get(k) is not None]
    lines.append("- versions: " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    return lines


def build_report(summary: pd.DataFrame, holds: pd.DataFrame, figures: Mapping[str, str],
                 params: Mapping[str, object], versions: Mapping[str, str],
                 sections: Sequence[Section] = FINDINGS) -> str:
    """The whole report as Markdown. summary/holds: the aggregate stage's tables; figures: name ->
    caption (`egolens.plots.FIGURES`); params: params.yaml as a dict; versions: package -> version."""
    missing: list[str] = []
    seeds = list(params.get("seeds", []))                                     # type: ignore[arg-type]
    out = ["# egolens: what an ego-attention DQN looks at, and what it uses", "",
           "_Generated by `dvc repro` (stage `report`) from `results/summary.csv` and `results/holds.csv`; "
           "do not edit by hand. Numbers are means over seeds with 95% CIs over seeds in brackets._", "",
           "## Question", "", QUESTION, "", "## Setup", "",
           "The reference ego-attention network (2 heads, 64-wide embeddings, rl-agents layout) trained with "
           "DQN on `intersection-v0`, one agent per seed, each compared with the same network at "
           "initialisation.", "", *setup_lines(params, versions), "", "## Findings", ""]
    for section in sections:
        out += [f"### {section.title}", ""]
        out += [f"- {fill(sentence, summary, holds, figures, missing)}" for sentence in section.sentences]
        out.append("")
    out += ["## Findings per seed", "", "| finding | holds | statement |", "| --- | --- | --- |"]
    out += [f"| `{row.finding}` | {row.holds} | {row.statement} |" for row in holds.itertuples(index=False)]
    out += ["", "## Figures", ""]
    out += [f"- [`{name}`](figures/{name}.png): {caption}" for name, caption in figures.items()]
    untrained = fill("{m:evaluate.untrained.collision_rate.mean}", summary, holds, figures, missing)
    limits = [limit.format(n_seeds=len(seeds), df=max(len(seeds) - 1, 0), untrained_collisions=untrained)
              for limit in LIMITS]
    if missing:
        limits.append("Not available in this run (rendered n/a): " + ", ".join(f"`{m}`" for m in sorted(set(missing)))
                      + ".")
    out += ["", "## Limits", "", *[f"- {limit}" for limit in limits], ""]
    return "\n".join(out)
