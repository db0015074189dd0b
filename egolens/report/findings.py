"""The report's sentences: one function per finding, from a `Context` to a template (or None when the
run has nothing to say about it), grouped in `FINDINGS`; the question and the limits."""

from __future__ import annotations

import math

from egolens.names import (
    attention_off_ego,
    head_role,
    neuron_ablation,
    scene_metric,
)
from egolens.report.context import LITTLE_ATTENTION, Context, Section, format_number, join

QUESTION = (
    "What does a DQN agent with an ego-attention Q-network learn to look at when it drives through "
    "highway-env's `intersection-v0`, and which parts of the network carry its decisions? We train the "
    "reference network for several seeds, record its rollouts, and take it apart observationally (circuits, "
    "attributions, neurons, lenses) and causally (ablations, patching, edits), always beside the same "
    "network before training."
)



# ---------------------------------------------------------------------------------- performance

def _held_out(c: Context) -> str:
    # Every network plays the same held-out episodes: the paired difference is the test, never two
    # intervals' overlap (issue 22).
    side = c.ci_side("evaluate.trained_vs_untrained.success.diff")
    verdict = {1: "training raised how often the agent arrives (paired CI above 0).",
               0: "no change in how often the agent arrives is detected (the paired CI includes 0).",
               -1: "training lowered how often the agent arrives (paired CI below 0).",
               None: ""}[side]
    paired = (" Episode by episode on the same held-out episodes the trained agent changes the success rate by "
              "{m:evaluate.trained_vs_untrained.success.diff} against its untrained network: " + verdict
              if verdict else "")
    return (f"On {c.param('evaluate.episodes')} held-out episodes per seed the trained agent succeeds in "
            "{m:evaluate.trained.success_rate.mean} of episodes, collides in {m:evaluate.trained.collision_rate.mean} "
            "and times out in {m:evaluate.trained.timeout_rate.mean}; its untrained network succeeds in "
            "{m:evaluate.untrained.success_rate.mean} and collides in {m:evaluate.untrained.collision_rate.mean} "
            "({fig:evaluation})." + paired)


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
    return ("On the same held-out half, ablating " + join(parts) + "; head_rank2's resample ablation lowers success "
            f"by no more than {c.param('interventions.equivalence_margin')} (one-sided test at 5%) in "
            "{h:other_head_not_needed_for_success}, a test checked only where the half's episodes can resolve the "
            "margin (the narrowest margin those episodes can show equivalence within at all is "
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
            + join(parts) + "." + verdict)


NAIVE_RANKINGS = {"nearest": "nearest first", "lowest_ttc": "lowest time-to-collision first"}
"""The naive rankings of the vehicles (`egolens.scene.naive_rankings`) and how a sentence names them."""
NAIVE_VEHICLES = {"nearest": "nearest", "lowest_ttc": "lowest-time-to-collision"}
"""The vehicle each naive ranking puts first, as a sentence names it."""


def _agreement(c: Context) -> str:
    heads = c.heads() or ["head_rank1"]
    versus = "attributions.trained.attention_vs_rankings.shapley"
    parts = [f"{h} {{m:attributions.trained.agreement.shapley.{h}.spearman_mean}}" for h in heads]
    naive = [f"{name} {{m:attributions.trained.ranking_baselines.shapley.{r}.spearman_mean}}"
             for r, name in NAIVE_RANKINGS.items()]
    paired = [f"{h} minus {name} {{m:{versus}.{h}.{r}.diff}}" for h in heads for r, name in NAIVE_RANKINGS.items()]
    untrained = [f"{h} {{m:attributions.untrained.agreement.shapley.{h}.spearman_mean}}" for h in heads]
    ig = [f"{h} {{m:attributions.trained.agreement.ig.{h}.spearman_mean}}" for h in heads]
    return ("Control: the naive rankings of the same vehicles on the same steps. Per step, the Spearman correlation "
            "between a head's attention over the vehicles and the vehicles' |Shapley values| has a mean of "
            + join(parts) + ", against " + join(naive) + " for the naive rankings scored the same way; paired over "
            "the same steps (episodes resampled) the differences are " + join(paired) + ", above 0 for both heads "
            "and both rankings in {h:attention_beats_naive_rankings}. The untrained network's attention reaches "
            + join(untrained) + " (close to uniform attention, so it is no control). Attention against |IG| "
            "(others-zeroed baseline) instead of |Shapley|: " + join(ig) + " ({fig:attention_vs_attribution}).")


def _top1(c: Context) -> str:
    heads = c.heads() or ["head_rank1"]
    parts = [f"{{pct:attributions.trained.agreement.shapley.{h}.top1_rate}} of steps for {h}" for h in heads]
    naive = [f"{{pct:attributions.trained.ranking_baselines.shapley.{r}.top1_rate}} for the {name} vehicle"
             for r, name in NAIVE_VEHICLES.items()]
    above = [f"{h} {{m:attributions.trained.attention_vs_rankings.shapley.{h}.chance.diff}}" for h in heads]
    return ("Control: the chance level, a vehicle drawn at random among those present on the same steps. The vehicle "
            "a head attends to most is also the one with the largest |Shapley value| on " + join(parts)
            + ", against {pct:attributions.trained.ranking_baselines.shapley.nearest.top1_chance} by chance and "
            + join(naive) + "; above chance on the same steps by " + join(above) + " (paired CI above 0 for every "
            "head in {h:attention_top1_above_chance}) ({fig:attention_vs_attribution}).")


def _removal(c: Context) -> str:
    controls = ["removing a random vehicle by {m:interventions.vehicle_removal.random.collision_diff}"]
    controls += [f"the {name} one by {{m:interventions.vehicle_removal.{r}.collision_diff}}"
                 for r, name in NAIVE_VEHICLES.items() if c.has(f"interventions.vehicle_removal.{r}.collision_diff")]
    return ("Removing the most-attended vehicle from the observation changes closed-loop collisions by "
            "{m:interventions.vehicle_removal.most_attended.collision_diff}, " + join(controls)
            + "; episode by episode most-attended minus random is "
            "{m:interventions.vehicle_removal.most_attended_vs_random.collision_diff} (paired CI above 0 in "
            "{h:most_attended_beats_random_vehicle}) ({fig:ablations}).")


def _path_patching(c: Context) -> str | None:
    closer = [f"{h}: key only {{m:interventions.path_patching_restored.vehicle_closer.{h}_key}}, key and value "
              f"{{m:interventions.path_patching_restored.vehicle_closer.{h}_key_value}}"
              for h in c.heads() if c.has(f"interventions.path_patching_restored.vehicle_closer.{h}_key")]
    if not closer:
        return None
    slower = [f"{h}'s value path {{m:interventions.path_patching_restored.ego_slower.{h}_value}} (key and value "
              f"{{m:interventions.path_patching_restored.ego_slower.{h}_key_value}})"
              for h in c.heads() if c.has(f"interventions.path_patching_restored.ego_slower.{h}_value")]
    tail = ("; when the ego slows down, " + join(slower)) if slower else ""
    return ("Control: the corrupted run (0) and the clean run (1). When a vehicle is moved closer, the share of the "
            "change in Q(SLOWER) − Q(FASTER) that path patching one head's paths from the clean run restores is "
            + "; ".join(closer) + tail + " ({fig:patching}).")


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
            "conductance at the output MLP's input are complete on every step in {h:ig_complete} (a sanity check: "
            "completeness says the numbers add up, not that they explain the decision)." + _incomplete(c))


_COMPLETENESS = {
    **{f"ig_completeness.{baseline}.{quantity}": f"IG of {'Q' if quantity == 'q' else 'the advantage'} from the "
       f"{label} baseline" for baseline, label in (("others_zeroed", "others-zeroed"),
                                                   ("typical_scene", "typical-scene"),
                                                   ("typical_scene_ego", "typical-scene-and-ego"))
       for quantity in ("q", "advantage")},
    "conductance_completeness.hook_resid": "the conductance at the output MLP's input"}
"""The parts of the `ig_complete` sanity check: summary prefix under attributions.trained -> words."""


def _incomplete(c: Context) -> str:
    """Where the completeness check fails: each part and seed with a step outside 1%, and by how much."""
    misses = []
    for part, words in _COMPLETENESS.items():
        prefix = f"attributions.trained.{part}"
        relative, absolute = c.seed_values(f"{prefix}.max_rel_error"), c.seed_values(f"{prefix}.max_abs_error")
        for seed, within in c.seed_values(f"{prefix}.fraction_within").items():
            if within < 1:
                misses.append(f"{words} in seed {seed} (complete on {100 * within:.1f}% of the steps; largest error "
                              f"{100 * relative.get(seed, math.nan):.2g}% of ΔQ, "
                              f"{format_number(absolute.get(seed, math.nan))} in Q)")
    if not misses:
        return ""
    return " Where it fails: " + join(misses) + "."


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
    verdict = {True: " The test passes in most seeds.",
               False: " The test fails: in most seeds IG orders do not lower Q(chosen) faster than random orders, so "
                      "the deletion curve gives no evidence that |IG| ranks the vehicles by what Q depends on.",
               None: ""}[c.holds_in_most("ig_deletion_beats_random")]
    return ("Control: random deletion orders on the same steps (lower area is better: Q falls faster). Deleting "
            "vehicles in |IG| order lowers Q(chosen) with an area under the deletion curve of "
            "{m:attributions.trained.deletion_auc_q.ig_others_zeroed}, in |Shapley| order "
            "{m:attributions.trained.deletion_auc_q.shapley}, against {m:attributions.trained.deletion_auc_q.random} "
            "for random orders; paired per step, IG minus random is "
            "{m:attributions.trained.deletion_vs_random.ig_others_zeroed.diff} and Shapley minus random "
            "{m:attributions.trained.deletion_vs_random.shapley.diff}; IG beats random (paired CI below 0) in "
            "{h:ig_deletion_beats_random}." + verdict)


def _randomisation(c: Context) -> str:
    sanity = "attributions.sanity"
    flagged = c.seeds_with(f"{sanity}.ig_others_zeroed.feature.flagged_abs")
    return ("Control: the model-parameter randomisation check (an explanation that barely changes when the trained "
            "weights are replaced by the untrained ones cannot be explaining what training taught; flagged when the "
            f"median rank correlation exceeds {c.param('attributions.sanity_threshold')}). It flags per-feature |IG| "
            f"(others-zeroed) in {flagged}, per-vehicle |IG| in "
            f"{c.seeds_with(f'{sanity}.ig_others_zeroed.vehicle.flagged_abs')} and per-vehicle |Shapley| in "
            f"{c.seeds_with(f'{sanity}.shapley_ego_alone.vehicle.flagged_abs')}; a flagged explanation is not "
            "evidence of what the network uses, so the per-feature IG figure ({fig:ig_features}) describes the "
            "attributions, it does not support a finding.")


# ----------------------------------------------------------------------------- circuits, neurons

def _circuits(c: Context) -> str:
    heads = c.heads() or ["head_rank1"]
    qk = join([f"{{m:circuits.rel_diff_trained_vs_untrained.QK.{h}}} ({h})" for h in heads])
    ov = join([f"{{m:circuits.rel_diff_trained_vs_untrained.OV.{h}}} ({h})" for h in heads])
    return ("Control: the same network at initialisation. The relative Frobenius difference between the trained "
            f"circuits and the initial ones is QK {qk}; OV {ov}; the output composite "
            "{m:circuits.rel_diff_trained_vs_untrained.output_composite}. These numbers measure how far training "
            "moved (mostly grew) the weights, not what the circuits compute; no finding rests on them "
            "({fig:qk_circuits}, {fig:ov_circuits}, {fig:embedding_composites}).")


def _neuron_ablation(c: Context) -> str:
    k = c.param("interventions.top_k")
    return (f"Mean-ablating the {k} top-conductance neurons of the others-embedding's first layer changes Q by a "
            f"mean |ΔQ| of {{m:{neuron_ablation('top_abs_dq')}}} against "
            f"{{m:{neuron_ablation('random_abs_dq')}}} for random {k}-neuron sets; on the same steps the difference is "
            f"{{m:{neuron_ablation('top_minus_random_abs_dq')}}} (paired CI above 0 in "
            "{h:top_conductance_neurons_beat_random}) ({fig:neuron_conductance}).")


def _lens(c: Context) -> str:
    tuned, logit = "neurons.trained.lens_controls.tuned", "neurons.trained.lens_controls.logit"
    lower = c.value("neurons.trained.logit_lens_agreement.ego") < c.value(
        "neurons.trained.tuned_lens_held_out_agreement.ego")
    reading = (": the output MLP was trained on the sum, so that lower number says the ego term is not read alone, "
               "not that it lacks the information") if lower else ""
    return ("Control: the majority baseline, always the most frequent final action of the same steps. A tuned "
            "affine lens (fitted on other episodes) decodes the final action from the ego's residual alone on "
            "{pct:neurons.trained.tuned_lens_held_out_agreement.ego} of held-out steps and from the full residual on "
            "{pct:neurons.trained.tuned_lens_held_out_agreement.full}, against "
            f"{{pct:{tuned}.majority_rate}} for the majority action; paired over the same steps (episodes "
            f"resampled), ego alone minus majority is {{m:{tuned}.ego_minus_majority.diff}} (CI above 0 in "
            "{h:ego_alone_decodes_above_majority}) and full minus ego alone "
            f"{{m:{tuned}.full_minus_ego.diff}} (CI above 0 in {{h:attention_adds_to_ego_decoding}}). Through the "
            "output MLP itself (logit lens, nothing fitted) the ego's residual alone picks the final action on "
            "{pct:neurons.trained.logit_lens_agreement.ego} of recorded steps against "
            f"{{pct:{logit}.majority_rate}} for the majority action ({{m:{logit}.ego_minus_majority.diff}} paired)"
            + reading + " ({fig:logit_lens}).")


def _editing(c: Context) -> str:
    margin, episodes = c.param("interventions.equivalence_margin"), c.param("interventions.closed_loop_episodes")
    return ("A rank-one edit of the output MLP makes the agent brake at its target step in "
            "{h:rank_one_edit_hits_target} (a sanity check: the edit is solved for it), flipping "
            "{pct:interventions.editing.edit_rank_one.side_flip_rate} of other recorded steps, and changes "
            "closed-loop collisions by {m:interventions.editing.edit_rank_one.closed_collision_diff}. An equivalence "
            f"test (TOST at 5%) puts that change inside ±{margin} in {{h:rank_one_edit_no_closed_loop_effect}}; "
            f"where it does not, no effect is shown, only none detected at n = {episodes} episodes, whose "
            "smallest change detected with 80% power is "
            "{m:interventions.editing.edit_rank_one.collision_no_effect.detectable_effect} (and the narrowest margin "
            f"{episodes} episodes can show equivalence within at all is "
            "{m:interventions.editing.edit_rank_one.collision_no_effect.resolution}).")


# ------------------------------------------------------------------------------- designed scenes

def _sweeps(c: Context) -> list[tuple[str, bool]]:
    """The designed-scenes sweeps of this run (params scenes.routes × scenes.visible) whose numbers it has."""
    routes, visible = c.param("scenes.routes") or [], c.param("scenes.visible") or []
    return [(r, v) for r in routes for v in visible if c.has(scene_metric("trained", r, v, "planner_agreement"))]


def _sweep_name(route: str, visible: bool) -> str:
    return f"route {route} (its destination {'observed' if visible else 'hidden'})"


def _first_action_caveat(c: Context, route: str, visible: bool, gap_start: float) -> str:
    """Where the planner's first action is "go" at every gap, agreeing with it only means not braking now."""
    goes_from = c.value(scene_metric("trained", route, visible, "planner_goes_from_gap"))
    if not goes_from <= gap_start:                                            # NaN: the planner never goes
        return ""
    def brakes(model: str) -> str:
        return f"{{pct:{scene_metric(model, route, visible, 'brake_rate')}}}"
    return (" — but the planner's first action is to go at every gap (it waits later in the episode, if at all), "
            "so agreeing with its first action only means not braking now and tests no timing; the trained agent "
            f"brakes in {brakes('trained')} of the scenes and the untrained network in {brakes('untrained')}, and "
            "the comparison that could fail is the agreement with going now's outcome")


def _scene_decisions(c: Context) -> str | None:
    sweeps = _sweeps(c)
    if not sweeps:
        return None

    def number(key: str) -> float:
        return float(c.param(f"scenes.{key}") or 0.0)
    parts = []
    for route, visible in sweeps:
        def m(key: str, model: str = "trained", kind: str = "m", route: str = route,
              visible: bool = visible) -> str:
            return f"{{{kind}:{scene_metric(model, route, visible, key)}}}"
        parts.append(f"on {_sweep_name(route, visible)} the trained agent brakes exactly when the clairvoyant "
                     f"planner does in "
                     f"{m('planner_agreement', kind='pct')} of scenes (untrained "
                     f"{m('planner_agreement', 'untrained', 'pct')}) and exactly when going now collides in "
                     f"{m('go_safety_agreement', kind='pct')} (untrained {m('go_safety_agreement', 'untrained', 'pct')}"
                     f"); it goes at every gap from {m('goes_from_gap')} s on, the planner from "
                     f"{m('planner_goes_from_gap')} s and going now is safe from {m('safe_from_gap')} s"
                     + _first_action_caveat(c, route, visible, number("gap_start")))

    return (f"In designed scenes (the ego {100.0 - number('ego_longitudinal'):g} m before the junction at "
            f"{number('ego_speed'):g} m/s, one vehicle at {number('other_speed'):g} m/s whose arrival at the conflict "
            f"point is swept from {number('gap_start'):g} to {number('gap_stop'):g} s after the ego's), "
            + "; ".join(parts) + " ({fig:designed_scenes}).")


def _scene_heads(c: Context) -> str | None:
    sweeps, heads = _sweeps(c), c.heads() or ["head_rank1"]
    if not sweeps:
        return None
    parts = []
    for route, visible in sweeps:
        def m(key: str, kind: str = "m", route: str = route, visible: bool = visible) -> str:
            return f"{{{kind}:{scene_metric('trained', route, visible, key)}}}"
        per_head = [f"{h} puts {m(f'heads.{h}.attention_mean')} of its attention on the vehicle, its mean-ablation "
                    f"moving Q(SLOWER) − Q(FASTER) by {m(f'heads.{h}.mean_over_sweep_effect_mean_abs')} on average "
                    f"and flipping {m(f'heads.{h}.mean_over_sweep_flip_rate', 'pct')} of decisions (zeroing it: "
                    f"{m(f'heads.{h}.zero_effect_mean_abs')}, {m(f'heads.{h}.zero_flip_rate', 'pct')})"
                    for h in heads]
        parts.append(f"on {_sweep_name(route, visible)}: " + join(per_head))
    return ("Which head carries the decision in those scenes (each head mean-ablated over its sweep's scenes, "
            "the gap-dependent part of its write removed): " + "; ".join(parts) + " ({fig:designed_scenes}).")


FINDINGS: tuple[Section, ...] = (
    Section("Performance", (_held_out, _returns, _training, _reference, _episode_classes)),
    Section("Which head carries the policy", (_first_head, _other_heads, _branch)),
    Section("How much attention the vehicles get, and how it ranks them",
            (_attention_share, _agreement, _top1, _removal, _path_patching)),
    Section("Attributions are checked, not assumed", (_ig, _conductance, _shapley, _deletion, _randomisation)),
    Section("Circuits and neurons", (_circuits, _neuron_ablation, _lens)),
    Section("Editing", (_editing,)),
    Section("Designed scenes: does the braking follow the gap, and through which head?",
            (_scene_decisions, _scene_heads)),
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


