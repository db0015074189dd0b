"""results/report.md, written from the study's tables and params: every number in it comes from
`summary.csv` (mean over seeds with its 95% CI, or the largest value over seeds) or `holds.csv`
(in how many seeds a finding holds), and every setting it names from params.yaml.

Each finding is a function of a `Context` (the tables and the params) that returns a sentence
template, or None when the run has nothing to say about it (e.g. a second head in a one-head
run). Wording that depends on the numbers (whether two intervals overlap, how much attention the
vehicles get) is decided there from the tables. Templates hold placeholders, filled by `fill`:
- `{m:<metric>}` the mean over seeds with its 95% CI, "0.55 [0.46, 0.63]";
- `{v:<metric>}` the mean alone; `{pct:<metric>}` the mean as a percentage, "55%";
- `{max:<metric>}` the largest value over seeds (a worst case stays a worst case);
- `{h:<finding>}` where a finding holds, "3/3 seeds";
- `{fig:<name>}` a link to results/figures/<name>.png.
A metric missing from the table renders as "n/a" and is listed under the report's limits, so a
template can never print a stale or invented number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from egolens.names import (
    FINDING,
    SANITY,
    attention_off_ego,
    evaluate_metric,
    head_role,
    head_zero,
    neuron_ablation,
    of_kind,
)
from egolens.recipes import VERDICTS, dotted, driving_table, holds_comparison, recipe_of, recipe_text

PLACEHOLDER = re.compile(r"\{(m|v|pct|max|h|fig):([^}]+)\}")
LITTLE_ATTENTION = 0.2
"""Below this share of attention off the ego, the report does not say a head "points" at vehicles."""


@dataclass
class Context:
    """What a finding may read: the aggregate tables and params.yaml (as a dict)."""

    summary: pd.DataFrame
    holds: pd.DataFrame
    params: Mapping[str, object]
    table: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.table = self.summary.set_index("metric")

    def param(self, path: str) -> object:
        return dotted(self.params, path)

    def value(self, metric: str, column: str = "mean") -> float:
        """A number of summary.csv (NaN when the metric or column is missing)."""
        if metric not in self.table.index or column not in self.table.columns:
            return math.nan
        return float(self.table.loc[metric, column])

    def has(self, metric: str) -> bool:
        return math.isfinite(self.value(metric))

    def heads(self) -> list[str]:
        """The head names (head_rank1, ...) this run has, from the closed-loop head ablations."""
        return [head_role(r) for r in range(1, 17) if self.has(head_zero(r, "success_diff"))]

    def intervals_apart(self, higher: str, lower: str) -> bool | None:
        """True when `higher`'s CI lies above `lower`'s, False when they overlap, None without CIs."""
        high_low, low_high = self.value(higher, "ci_low"), self.value(lower, "ci_high")
        if not (math.isfinite(high_low) and math.isfinite(low_high)):
            return None
        return high_low > low_high


Sentence = Callable[[Context], str | None]


@dataclass(frozen=True)
class Section:
    """A findings section: a title and its sentences (one finding each)."""

    title: str
    sentences: tuple[Sentence, ...]


QUESTION = (
    "What does a DQN agent with an ego-attention Q-network learn to look at when it drives through "
    "highway-env's `intersection-v0`, and which parts of the network carry its decisions? We train the "
    "reference network for several seeds, record its rollouts, and take it apart observationally (circuits, "
    "attributions, neurons, lenses) and causally (ablations, patching, edits), always beside the same "
    "network before training."
)


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ---------------------------------------------------------------------------------- performance

def _held_out(c: Context) -> str:
    compared = c.intervals_apart(evaluate_metric("trained", "success_rate"),
                                 evaluate_metric("untrained", "success_rate"))
    verdict = {True: " Training raised the success rate (the two intervals do not overlap).",
               False: " The trained and untrained success rates' intervals overlap: training did not measurably "
                      "raise how often the agent arrives.",
               None: ""}[compared]
    return (f"On {c.param('evaluate.episodes')} held-out episodes per seed the trained agent succeeds in "
            "{m:evaluate.trained.success_rate.mean} of episodes, collides in {m:evaluate.trained.collision_rate.mean} "
            "and times out in {m:evaluate.trained.timeout_rate.mean}; its untrained network succeeds in "
            "{m:evaluate.untrained.success_rate.mean} and collides in {m:evaluate.untrained.collision_rate.mean} "
            "({fig:evaluation})." + verdict)


def _returns(c: Context) -> str:
    return ("The trained agent's mean return is {m:evaluate.trained.mean_return.mean} against "
            "{m:evaluate.untrained.mean_return.mean} untrained; episode by episode on the same held-out episodes "
            "(paired) the trained agent changes the return by {m:evaluate.trained_vs_untrained.return.diff} and "
            "collisions by {m:evaluate.trained_vs_untrained.collision.diff} against its untrained network; the "
            "paired CI lies below 0 for collisions in {h:trained_fewer_collisions} and above 0 for return in "
            "{h:trained_higher_return}, and the reference notebook's bar (return >= 5.35, collisions <= 0.4) is "
            "met in {h:meets_reference_bar} ({fig:evaluation}).")


def _training(c: Context) -> str:
    episodes = c.param("train.episodes")
    window = min(100, int(episodes)) if isinstance(episodes, int) else 100
    return (f"Over the last {window} of {episodes} training episodes (ε-greedy) the return is "
            "{m:train.return_last100} with {m:train.collision_last100} collisions ({fig:learning_curves}).")


def _reference(c: Context) -> str:
    return ("On the same held-out episodes constant IDLE succeeds in {v:reference.constant_idle.success_rate.mean} "
            "and collides in {v:reference.constant_idle.collision_rate.mean}, the rule-based driver succeeds in "
            "{v:reference.rule_based.success_rate.mean}, and the clairvoyant planner (the ceiling) succeeds in "
            "{v:reference.clairvoyant.success_rate.mean} with {v:reference.clairvoyant.collision_rate.mean} "
            "collisions; the trained agent reaches {m:reference.ceiling_fraction} of the ceiling's success rate. "
            "It succeeds more often than constant IDLE (paired CI above 0) in {h:trained_beats_idle_on_success} "
            "and collides less than constant IDLE in {h:trained_collides_less_than_idle} ({fig:evaluation}).")


def _episode_classes(c: Context) -> str:
    return ("What the held-out episodes ask: {pct:reference.episode_class_share.go} are solved by driving on at a "
            "constant speed (constant FASTER or IDLE arrives), {pct:reference.episode_class_share.timing} only by "
            "waiting for the right gap (only the clairvoyant planner arrives) and "
            "{pct:reference.episode_class_share.unsolved} by neither. The trained agent arrives in "
            "{m:reference.success_by_episode_class.go} of the first kind and "
            "{m:reference.success_by_episode_class.timing} of the second.")


# ---------------------------------------------------------------------------------------- heads

def _first_head(c: Context) -> str:
    stops = ("; its agent chooses SLOWER on {pct:closed_loop.head_rank1.zero.action_slower_rate} of steps against "
             "{pct:interventions.closed_loop_baseline.action_slower} unablated, and it removes every success in "
             "{h:critical_head_removes_all_successes} ({fig:ablations}).")
    if len(c.heads()) <= 1:
        return ("Ablating the network's single head changes the closed-loop success rate by "
                "{m:closed_loop.head_rank1.resample.success_diff} when its output is resampled from another recorded "
                "step and by {m:closed_loop.head_rank1.zero.success_diff} when it is zeroed (collisions "
                "{m:closed_loop.head_rank1.zero.collision_diff})" + stops)
    return ("Heads are ranked on the first half of the closed-loop episodes by the successes that resample-ablating "
            "them (their output replaced by their output on another recorded step) costs, and measured on the "
            "second half. There, resample-ablating head_rank1 changes the success rate by "
            "{m:closed_loop.head_rank1.resample.success_diff} and collisions by "
            "{m:closed_loop.head_rank1.resample.collision_diff} (paired CI below 0 in {h:one_head_critical}); "
            "mean-ablating it changes success by {m:closed_loop.head_rank1.mean.success_diff}; zero-ablating it, an "
            "activation the head never produces, changes success by {m:closed_loop.head_rank1.zero.success_diff}"
            + stops)


def _other_heads(c: Context) -> str | None:
    others = c.heads()[1:]
    if not others:
        return None
    parts = [f"{h} changes success by {{m:closed_loop.{h}.resample.success_diff}} resampled and "
             f"{{m:closed_loop.{h}.zero.success_diff}} zeroed" for h in others]
    return ("On the same held-out half, ablating " + _join(parts) + "; head_rank2's resample ablation lowers success "
            f"by no more than {c.param('interventions.equivalence_margin')} (one-sided test at 5%) in "
            "{h:other_head_not_needed_for_success}, a test checked only where the half's episodes can resolve the "
            "margin (they rule out no rate below "
            "{m:interventions.head_no_effect.head_rank2.resample.resolution}) ({fig:ablations}).")


def _branch(c: Context) -> str:
    return ("Ablating the whole attention branch (on all closed-loop episodes) changes success by "
            "{m:interventions.branch_ablation.zero.success_diff} and collisions by "
            "{m:interventions.branch_ablation.zero.collision_diff} zeroed, success by "
            "{m:interventions.branch_ablation.mean.success_diff} and collisions by "
            "{m:interventions.branch_ablation.mean.collision_diff} mean-ablated, and success by "
            "{m:interventions.branch_ablation.resample.success_diff} and collisions by "
            "{m:interventions.branch_ablation.resample.collision_diff} resample-ablated ({fig:ablations}).")


# ------------------------------------------------------------------------------------ attention

def _attention_share(c: Context) -> str:
    heads = c.heads() or [head_role(1)]
    parts = [f"{h} {{m:{attention_off_ego('trained', h)}}} (untrained {{v:{attention_off_ego('untrained', h)}}})"
             for h in heads]
    shares = [c.value(attention_off_ego("trained", h)) for h in heads]
    finite = [s for s in shares if math.isfinite(s)]
    if finite and max(finite) < LITTLE_ATTENTION:
        verdict = (f" Every head leaves less than {LITTLE_ATTENTION:.0%} of its attention to the other vehicles, so "
                   "the rank correlations below describe how a small remainder is spread, not where the heads look.")
    elif finite:
        verdict = " The findings below are about how that share is spread over the vehicles."
    else:
        verdict = ""
    return ("Share of attention on the other vehicles rather than the ego, mean over recorded steps: "
            + _join(parts) + "." + verdict)


def _agreement(c: Context) -> str:
    parts = [f"{h} {{m:attributions.trained.agreement.shapley.{h}.spearman_mean}} (untrained "
             f"{{m:attributions.untrained.agreement.shapley.{h}.spearman_mean}})" for h in c.heads() or ["head_rank1"]]
    return ("Per step, the Spearman correlation between a head's attention over the vehicles and the vehicles' "
            "|Shapley values| has a mean of " + _join(parts) + "; trained above untrained for every head in "
            "{h:attention_tracks_shapley} ({fig:attention_vs_attribution}).")


def _top1(c: Context) -> str:
    parts = [f"{{pct:attributions.trained.agreement.shapley.{h}.top1_rate}} of steps for {h}"
             for h in c.heads() or ["head_rank1"]]
    return ("The vehicle a head attends to most is also the one with the largest |Shapley value| on "
            + _join(parts) + " ({fig:attention_vs_attribution}).")


def _removal(c: Context) -> str:
    return ("Removing the most-attended vehicle from the observation changes closed-loop collisions by "
            "{m:interventions.vehicle_removal.most_attended.collision_diff}, removing a random vehicle by "
            "{m:interventions.vehicle_removal.random.collision_diff}; episode by episode the difference is "
            "{m:interventions.vehicle_removal.most_attended_vs_random.collision_diff} (paired CI above 0 in "
            "{h:most_attended_beats_random_vehicle}) ({fig:ablations}).")


def _path_patching(c: Context) -> str | None:
    closer = [f"{{m:interventions.path_patching_restored.vehicle_closer.{h}_key}} through {h} alone"
              for h in c.heads() if c.has(f"interventions.path_patching_restored.vehicle_closer.{h}_key")]
    if not closer:
        return None
    slower = ("; when the ego slows down, head_rank1's value path restores "
              "{m:interventions.path_patching_restored.ego_slower.head_rank1_value}"
              if c.has("interventions.path_patching_restored.ego_slower.head_rank1_value") else "")
    return ("When a vehicle is moved closer, the share of the change in Q(SLOWER) − Q(FASTER) that path patching "
            "its new key restores is " + _join(closer) + slower + " ({fig:patching}).")


# --------------------------------------------------------------------------------- attributions

def _ig(c: Context) -> str:
    return ("Every integrated-gradients path is cut where a ReLU of the network switches and each piece is "
            f"integrated with {c.param('attributions.segment_points')} Gauss-Legendre points (a mean of "
            "{v:attributions.trained.ig_completeness.others_zeroed.q.mean_points} gradient evaluations per step, "
            "at most {max:attributions.trained.ig_completeness.others_zeroed.q.max_points} in any seed). IG "
            "(others-zeroed baseline, Q) is then complete within 1% of ΔQ on "
            "{pct:attributions.trained.ig_completeness.others_zeroed.q.fraction_within} of the trained network's "
            "analysed steps (largest relative error in any seed "
            "{max:attributions.trained.ig_completeness.others_zeroed.q.max_rel_error}). Every IG and the "
            "conductance at the output MLP's input are complete on every step in {h:ig_complete} "
            "({fig:ig_features}).")


def _conductance(c: Context) -> str:
    return ("Layer conductance at the output MLP's input adds up to ΔQ within 1% on "
            "{pct:attributions.trained.conductance_completeness.hook_resid.fraction_within} of steps "
            "({fig:layer_conductance}).")


def _shapley(c: Context) -> str:
    return (f"Vehicle Shapley values ({c.param('attributions.shapley_samples')} permutations per step) satisfy "
            "efficiency to a largest relative error in any seed of "
            "{max:attributions.trained.shapley_efficiency.max_rel_error} ({h:shapley_efficient}; a sanity check: "
            "permutation sampling is efficient by construction).")


def _deletion(c: Context) -> str:
    verdict = c.intervals_apart("attributions.trained.deletion_auc_q.random",
                                "attributions.trained.deletion_auc_q.ig_others_zeroed")
    tail = {True: " (IG orders lower it faster: the intervals do not overlap).",
            False: " (the intervals overlap).", None: "."}[verdict]
    return ("Deleting vehicles in IG order lowers Q(chosen) with an area under the deletion curve of "
            "{m:attributions.trained.deletion_auc_q.ig_others_zeroed} against "
            "{m:attributions.trained.deletion_auc_q.random} for random orders" + tail)


# ----------------------------------------------------------------------------- circuits, neurons

def _circuits(c: Context) -> str:
    heads = c.heads() or ["head_rank1"]
    qk = _join([f"{{m:circuits.rel_diff_trained_vs_untrained.QK.{h}}} ({h})" for h in heads])
    ov = _join([f"{{m:circuits.rel_diff_trained_vs_untrained.OV.{h}}} ({h})" for h in heads])
    return ("Relative Frobenius difference between the trained circuits and the same network's at initialisation: "
            f"QK {qk}; OV {ov}; the output composite "
            "{m:circuits.rel_diff_trained_vs_untrained.output_composite} ({fig:qk_circuits}, {fig:ov_circuits}, "
            "{fig:embedding_composites}).")


def _neuron_ablation(c: Context) -> str:
    k = c.param("interventions.top_k")
    return (f"Mean-ablating the {k} top-conductance neurons of the others-embedding's first layer changes Q by a "
            f"mean |ΔQ| of {{m:{neuron_ablation('top_abs_dq')}}} against "
            f"{{m:{neuron_ablation('random_abs_dq')}}} for random {k}-neuron sets; on the same steps the difference is "
            f"{{m:{neuron_ablation('top_minus_random_abs_dq')}}} (paired CI above 0 in "
            "{h:top_conductance_neurons_beat_random}) ({fig:neuron_conductance}).")


def _lens(c: Context) -> str:
    return ("Decoded through the output MLP, the ego's residual alone already picks the final action on "
            "{pct:neurons.trained.logit_lens_agreement.ego} of steps, adding head_rank1's write "
            "{pct:neurons.trained.logit_lens_agreement.head_rank1}; a tuned affine lens reaches "
            "{pct:neurons.trained.tuned_lens_held_out_agreement.ego} on held-out steps from the ego alone "
            "({fig:logit_lens}).")


def _editing(c: Context) -> str:
    margin, episodes = c.param("interventions.equivalence_margin"), c.param("interventions.closed_loop_episodes")
    return ("A rank-one edit of the output MLP makes the agent brake at its target step in "
            "{h:rank_one_edit_hits_target} (a sanity check: the edit is solved for it), flipping "
            "{pct:interventions.editing.edit_rank_one.side_flip_rate} of other recorded steps, and changes "
            "closed-loop collisions by {m:interventions.editing.edit_rank_one.closed_collision_diff}. An equivalence "
            f"test (TOST at 5%) puts that change inside ±{margin} in {{h:rank_one_edit_no_closed_loop_effect}}; "
            f"where it does not, no effect is shown, only none detected at n = {episodes} episodes, whose "
            "smallest change detected with 80% power is "
            "{m:interventions.editing.edit_rank_one.collision_no_effect.detectable_effect} (and no rate below "
            "{m:interventions.editing.edit_rank_one.collision_no_effect.resolution} can be ruled out by "
            f"{episodes} episodes at all).")


FINDINGS: tuple[Section, ...] = (
    Section("Performance", (_held_out, _returns, _training, _reference, _episode_classes)),
    Section("Which head carries the policy", (_first_head, _other_heads, _branch)),
    Section("How much attention the vehicles get, and how it ranks them",
            (_attention_share, _agreement, _top1, _removal, _path_patching)),
    Section("Attributions are checked, not assumed", (_ig, _conductance, _shapley, _deletion)),
    Section("Circuits and neurons", (_circuits, _neuron_ablation, _lens)),
    Section("Editing", (_editing,)),
)


def _half(c: Context) -> str:
    episodes = c.param("interventions.closed_loop_episodes")
    return f"about {episodes // 2}" if isinstance(episodes, int) else "half the"


def limits(c: Context, untrained_collisions: str) -> list[str]:
    """The report's limits, worded for this run's number of seeds."""
    n = len(list(c.param("seeds") or []))                                     # type: ignore[call-overload]
    if n >= 2:
        over_seeds = (f"{n} seeds: a CI over seeds is a Student-t interval with {n - 1} degrees of freedom "
                      "(wide); held-out rates, returns, paired differences and attention shares use a bootstrap "
                      "over seeds and episodes, which stays inside [0, 1] for rates.")
    else:
        over_seeds = ("One seed: no interval over seeds exists; held-out rates, returns, paired differences and "
                      "attention shares carry a bootstrap interval over that seed's episodes, other numbers are that "
                      "seed's values.")
    return [
        over_seeds,
        "Heads are matched across seeds by their closed-loop role (head_rank1 = the head whose resample ablation "
        "costs the most successes on the first half of the closed-loop episodes in that seed); every head effect "
        "is reported on the other half, so the choice does not inflate it, but each half has only "
        f"{_half(c)} episodes.",
        "Pooled held-out rates, returns, paired differences and attention shares use a crossed bootstrap: every "
        "agent plays the same held-out episodes, so episodes are resampled once for all seeds (and seeds are "
        "resampled); findings comparing two conditions on the same episodes use the paired difference's CI, and "
        "a finding of no effect needs an equivalence test.",
        f"The untrained baseline collides in {untrained_collisions} of held-out episodes and behaves close to a "
        "constant policy, so trained-vs-untrained contrasts are against a near no-op driver.",
        f"Attribution and circuit analyses use at most {c.param('attributions.max_steps')} recorded steps of the "
        "agent's own greedy rollouts per network, not a designed distribution of scenes.",
    ]


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
        if kind == "max":
            return format_number(value(name, "max") if "max" in table.columns else mean)
        if kind == "pct":
            return "n/a" if not math.isfinite(mean) else f"{100 * mean:.0f}%"
        low, high = value(name, "ci_low"), value(name, "ci_high")
        if not (math.isfinite(low) and math.isfinite(high)):
            return format_number(mean)
        return f"{format_number(mean)} [{format_number(low)}, {format_number(high)}]"

    return PLACEHOLDER.sub(replace, template)


# ------------------------------------------------------------------------------ other recipe

@dataclass(frozen=True)
class OtherStudy:
    """Another recipe's study, for the comparison section: its recipe description (name, preset,
    code, seeds and the `recipes.RECIPE_KEYS` settings), its headline.json and its holds.csv."""

    recipe: Mapping[str, object]
    headline: Mapping[str, object]
    holds: pd.DataFrame
    folder: str = "results/paper"


def comparison_lines(params: Mapping[str, object], headline: Mapping[str, object], holds: pd.DataFrame,
                     other: OtherStudy) -> list[str]:
    """The "Under both recipes" section: how the two studies' agents drive, side by side, and each
    finding's verdict (holds under both / neither / one recipe only, by majority of seeds)."""
    name = str(other.recipe.get("name", "other recipe"))
    lines = [f"This study: {recipe_text(recipe_of(params))}. Beside it, the {name} "
             f"(`python -m presets {other.recipe.get('preset')}`: {recipe_text(other.recipe)}), whose aggregate "
             f"is kept in `{other.folder}/`; it was made by earlier code (commit {other.recipe.get('code')}), so "
             "its numbers are comparable in kind, not to the last digit. A finding holds in a study when it holds "
             "in more than half of its seeds.", "",
             f"| held-out episodes (mean over seeds) | this study | {name} |", "| --- | --- | --- |"]
    driving = driving_table(headline, other.headline)
    lines += [f"| {row.measure} | {format_number(row.this)} | {format_number(row.other)} |"
              for row in driving.itertuples(index=False)]
    compared = holds_comparison(holds, other.holds)
    counts = compared["verdict"].value_counts()
    depends = compared[compared["verdict"].isin(VERDICTS[2:])]
    summary = (f"{counts.get(VERDICTS[0], 0)} of {len(compared)} findings hold under both recipes and "
               f"{counts.get(VERDICTS[1], 0)} under neither.")
    if len(depends):
        summary += " These depend on the recipe (this study, the other): " + _join(
            [f"`{row.finding}` ({row.this}, {row.other})" for row in depends.itertuples(index=False)]) + "."
    else:
        summary += " No finding depends on the recipe."
    lines += ["", summary, "", f"| finding | this study | {name} | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| `{row.finding}` | {row.this} | {row.other} | {row.verdict} |"
              for row in compared.itertuples(index=False)]
    return lines


# ------------------------------------------------------------------------------------- report

def setup_lines(params: Mapping[str, object], versions: Mapping[str, str]) -> list[str]:
    """The setup section: seeds, the knobs a reader needs, package versions."""
    def get(path: str) -> object:
        return dotted(params, path)

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
                 sections: Sequence[Section] = FINDINGS, headline: Mapping[str, object] | None = None,
                 other: OtherStudy | None = None) -> str:
    """The whole report as Markdown. summary/holds: the aggregate stage's tables; figures: name ->
    caption (`egolens.names.FIGURES`); params: params.yaml as a dict; versions: package -> version;
    headline: the aggregate's headline.json and other: another recipe's study, which together add
    the "Under both recipes" section (left out when either is None)."""
    missing: list[str] = []
    context = Context(summary, holds, params)
    heads, width = context.param("agent.heads"), context.param("agent.feature_size")
    out = ["# egolens: what an ego-attention DQN looks at, and what it uses", "",
           "_Generated by `dvc repro` (stage `report`) from `results/summary.csv`, `results/holds.csv` and "
           "params.yaml; do not edit by hand. Numbers are means over seeds with 95% CIs in brackets (see Limits "
           "for how each interval is made)._", "",
           "## Question", "", QUESTION, "", "## Setup", "",
           f"The reference ego-attention network ({heads} head{'s' if heads != 1 else ''}, {width}-wide "
           f"embeddings, rl-agents layout) trained with DQN on `intersection-v0`, one agent per seed "
           f"({len(list(context.param('seeds') or []))} seeds), each compared with the same network at "
           "initialisation.", "", *setup_lines(params, versions), "", "## Findings", ""]
    for section in sections:
        sentences = [template for sentence in section.sentences if (template := sentence(context)) is not None]
        out += [f"### {section.title}", ""]
        out += [f"- {fill(template, summary, holds, figures, missing)}" for template in sentences]
        out.append("")
    out += ["## Findings per seed", "", "| finding | holds | statement |", "| --- | --- | --- |"]
    out += [f"| `{row.finding}` | {row.holds} | {row.statement} |"
            for row in of_kind(holds, FINDING).itertuples(index=False)]
    sanity = of_kind(holds, SANITY)
    if len(sanity):
        out += ["", "## Sanity checks per seed", "",
                "These hold by construction when the code is right; they are not findings and are not counted "
                "among them.", "", "| check | holds | statement |", "| --- | --- | --- |"]
        out += [f"| `{row.finding}` | {row.holds} | {row.statement} |" for row in sanity.itertuples(index=False)]
    if headline is not None and other is not None:
        out += ["", "## Under both recipes", "", *comparison_lines(params, headline, holds, other)]
    out += ["", "## Figures", ""]
    out += [f"- [`{name}`](figures/{name}.png): {caption}" for name, caption in figures.items()]
    untrained = fill(f"{{m:{evaluate_metric('untrained', 'collision_rate')}}}", summary, holds, figures, missing)
    notes = limits(context, untrained)
    if missing:
        notes.append("Not available in this run (rendered n/a): " + ", ".join(f"`{m}`" for m in sorted(set(missing)))
                     + ".")
    out += ["", "## Limits", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(out)
