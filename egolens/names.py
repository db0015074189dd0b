"""The study's output and metric names, once: what `aggregate`, `plots` and `report` (and their
stages) read and write by name.

- Outputs: each per-seed stage's summary JSON (`SUMMARIES`), the figures and their captions
  (`FIGURES`, drawn by `egolens.plots`, linked by the report as `{fig:<name>}`).
- Metrics: a metric is a dotted path into the per-seed summaries (`evaluate.trained.success_rate.mean`);
  the functions below build the names several modules share, so no module spells them itself.
- Heads: heads are interchangeable across seeds, so a per-seed name `head<i>` becomes
  `head_rank<r>`, r its rank by what resample-ablating it costs in closed loop on the rank half of
  the closed-loop episodes (`head_ranks`); its effects are reported on the other half.
- Rates: `is_rate` says which metrics are fractions in [0, 1], whose intervals
  `egolens.numbers.rate_interval` keeps inside [0, 1].
"""

from __future__ import annotations

import re

import pandas as pd

from egolens.sites import OTHERS_EMBEDDING, json_key, mlp_post

MODELS = ("trained", "untrained")
"""The two networks every analysis compares (the trained agent and its initial network)."""

SUMMARIES = {"evaluate": "evaluate.json", "train": "train/metrics.json", "circuits": "circuits/summary.json",
             "attributions": "attributions/summary.json", "neurons": "neurons/summary.json",
             "interventions": "interventions/summary.json", "scenes": "scenes/summary.json",
             "probes": "probes/summary.json", "steering": "steering/summary.json"}
"""Stage name -> its summary JSON inside results/seeds/seed<N>/ (the stage name prefixes its metrics)."""
DRIVING = "driving.json"
"""A seed's DVC metric inside results/seeds/seed<N>/: the trained agent's held-out rates and mean return."""

OTHER_FIGURES: dict[str, str] = {
    "recipe_sweep": "The recipe sweep (sweeps/run.py, not the plots stage): each recipe's held-out outcomes per seed "
                    "beside the reference policies.",
}
"""Figure functions drawn outside the plots stage, with their captions."""

FIGURES: dict[str, str] = {
    "qk_circuits": "Each head's QK circuit W_Qᵀ·W_K projected onto the input features through the embeddings' "
                   "linear parts (ego feature × vehicle feature), per seed and head by role: trained and untrained "
                   "each on its own symmetric colour scale (the untrained weights are far smaller), and below the "
                   "first seed's raw 64×64 trained matrices.",
    "ov_circuits": "Each head's OV circuit ½·W_O·W_V read out as each action's Q-value and projected onto the vehicle "
                   "features, per seed and head by role: trained and untrained each on its own symmetric colour "
                   "scale, and below the first seed's raw 64×64 trained matrices.",
    "embedding_composites": "The ego and others embeddings with their ReLUs removed (W1·W0, 64 neurons × 7 input "
                            "features) for the first seed: trained and untrained on a shared scale per embedding, "
                            "their difference on its own.",
    "ig_features": "Integrated gradients of each action's Q-value per input feature (baseline: other vehicles "
                   "zeroed, so the ego's features equal the baseline and get 0 by construction): mean |attribution| "
                   "over recorded steps, bars = mean over seeds with a 95% t-interval; trained and untrained on "
                   "their own scales.",
    "layer_conductance": "Layer conductance of the chosen action's Q-value: every neuron's mean |conductance| over "
                         "recorded steps, sorted from the largest, one line per seed (log scale; neurons at exactly 0 "
                         "are not drawn).",
    "neuron_conductance": "Neuron conductance of the five most conductive neurons per layer (first seed), split by "
                          "input entity and feature: mean signed conductance of the chosen action's Q-value.",
    "neuron_activations": "The most variable neurons of each recorded layer over the first recorded episode of the "
                          "first seed (post-ReLU activations), with the action chosen at each step.",
    "attention_scene": "A few steps of the first seed's first recorded episode (trained network): the scene from the "
                       "observation (ego in green, arrows = one second of travel, lines = attention) beside each "
                       "head's attention over the present vehicles, with the Q-values and the chosen action.",
    "logit_lens": "How often Q-values decoded from an intermediate representation already pick the network's final "
                  "action (logit lens: the real output MLP; tuned lens: an affine probe, held-out episodes), per site "
                  "(heads by role) and with vehicles added in attention order, against the majority-action baseline "
                  "(the most frequent final action's share of the same steps, dashed); mean over seeds with 95% "
                  "t-intervals.",
    "ablations": "Closed-loop ablations: change in success and collision rate against the unablated agent on the "
                 "same episodes (the 0 line; its rate in each panel's title), with paired 95% bootstrap CIs, per seed "
                 "(heads by role, neuron sets each seed's own), and pooled over seeds (mean, 95% t-interval).",
    "patching": "Activation patching (per site) and path patching (per head by role and path): mean fraction of "
                "Q(SLOWER) − Q(FASTER) restored (0 = the corrupted run, 1 = the clean run), per corruption kind and "
                "seed with 95% bootstrap CIs over pairs, and pooled over seeds; means beyond −0.5 … 1.5 are marked "
                "at the axis edge.",
    "learning_curves": "Training return per episode for every seed: raw (faint) and a trailing mean over 100 episodes.",
    "evaluation": "Greedy evaluation on held-out episodes: success, collision and timeout rates and mean return of "
                  "the trained and the untrained network per seed, with 95% bootstrap CIs over episodes.",
    "designed_scenes": "Designed scenes in the simulator: the ego fixed before the junction and one conflicting "
                       "vehicle whose arrival gap at the conflict point is swept; each network's Q(SLOWER) − "
                       "Q(FASTER) beside where going now collides and where the clairvoyant planner brakes, and per "
                       "trained head (by role) its attention on the vehicle and what mean-ablating it over the sweep "
                       "changes, one line per seed.",
    "attention_vs_attribution": "Does attention point at the vehicles that matter? Per-step Spearman correlation "
                                "between each head's attention (by role) and the vehicles' |IG| and |Shapley|, beside "
                                "the nearest-first and lowest-time-to-collision-first rankings scored the same way; "
                                "how often each head's most-attended vehicle is the top |Shapley| vehicle against the "
                                "chance level; and the pooled correlation of attention with time-to-collision, "
                                "distance and closing speed.",
}

ARRIVED, COLLISION, TIMEOUT = "arrived", "collision", "timeout"
OUTCOMES = (ARRIVED, COLLISION, TIMEOUT)
"""How an episode ends (`egolens.episodes.outcome`); the rate of each is success, collision and timeout."""
OUTCOME_RATES = {"success_rate": ARRIVED, "collision_rate": COLLISION, "timeout_rate": TIMEOUT}
"""Each held-out rate and the episode outcome it counts."""
DRIVING_METRICS = (*OUTCOME_RATES, "mean_return")
"""What a seed's driving.json holds and the experiments compare: the held-out rates and mean return."""

SEED_T = "student_t_over_seeds"
SEEDS_AND_EPISODES = "bootstrap_over_seeds_and_episodes"
SEEDS_CROSSED_EPISODES = "crossed_bootstrap_over_seeds_and_shared_episodes"
"""Interval labels of summary.csv: Student-t over seeds; a nested bootstrap (episodes within each
seed, for episodes not shared by the seeds); a crossed bootstrap (the same episodes resampled once
for every seed, and the seeds: every agent plays the same held-out episodes)."""
"""How a summary row's interval was made (summary.csv column `interval`)."""


def evaluate_metric(model: str, metric: str, stat: str = "mean") -> str:
    """A held-out evaluation number of the trained or untrained network: `evaluate.<model>.<metric>.<stat>`."""
    return f"evaluate.{model}.{metric}.{stat}"


def head_role(rank: int) -> str:
    """The name of the head of closed-loop rank `rank` (1 = most important) in every seed: `head_rank<r>`."""
    return f"head_rank{rank}"


def head_zero(rank: int, metric: str) -> str:
    """The closed-loop effect of zero-ablating head_rank<rank>: `closed_loop.head_rank<r>.zero.<metric>`."""
    return head_ablated(rank, "zero", metric)


def head_ablated(rank: int, mode: str, metric: str) -> str:
    """The closed-loop effect of ablating head_rank<rank> with `mode` (zero, mean, resample), measured
    on the measure half of the closed-loop episodes: `closed_loop.head_rank<r>.<mode>.<metric>`."""
    return f"closed_loop.{head_role(rank)}.{mode}.{metric}"


def attention_off_ego(model: str, head: str) -> str:
    """The mean attention share of `head` (a role name) on the other vehicles in the `model` rollout."""
    return f"rollout.{model}.attention_off_ego.{head}"


def neuron_ablation(stat: str, layer: str = mlp_post(OTHERS_EMBEDDING, 0)) -> str:
    """A neuron-ablation number of `layer` (top-k vs random sets): `interventions.neuron_ablation.<key>.<stat>`."""
    return f"interventions.neuron_ablation.{json_key(layer)}.{stat}"


def scene_sweep(route: str, visible: bool) -> str:
    """A designed-scenes sweep's name in the scenes summary: `o1-o3` (route hidden) or `o1-o3_visible`."""
    return f"{route}_visible" if visible else route


def scene_metric(model: str, route: str, visible: bool, key: str) -> str:
    """A designed-scenes number: `scenes.<model>.<sweep>.<key>` (key e.g. `planner_agreement` or
    `heads.head_rank1.attention_mean`)."""
    return f"scenes.{model}.{scene_sweep(route, visible)}.{key}"


HEAD = re.compile(r"head(\d+)")
"""A per-seed head index in a metric name or a closed-loop target (`head0`, `head1_value`, ...)."""


FINDING, SANITY = "finding", "sanity_check"
"""Kinds of a checked claim (holds.csv's kind): a finding could fail; a sanity check holds by
construction when the code is right (e.g. Shapley efficiency under permutation sampling), so it is
reported apart and never counted among the findings that hold."""


def of_kind(holds: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of a holds.csv of one kind (a holds.csv without a kind column holds findings only)."""
    if "kind" not in holds.columns:
        return holds if kind == FINDING else holds.iloc[0:0]
    return holds[holds["kind"] == kind]


SELECTION_MODE = "resample"
"""The ablation heads are ranked by (resample: it keeps a head's output on its distribution)."""
RANK_HALF, MEASURE_HALF = "rank", "measure"
"""The halves of the closed-loop episodes: heads are ranked on the first, their effects measured on the second."""


def reported_half(target: str) -> str:
    """The closed-loop half a condition's effect is reported on: a head's ablation (and the edit of
    the head chosen among them: target `head<i>`) on the measure half, every other condition on all
    the episodes ("all")."""
    return MEASURE_HALF if HEAD.fullmatch(str(target)) else "all"


def head_ranks(closed_loop: pd.DataFrame) -> dict[int, int]:
    """Head index -> rank (1 = most important) from one seed's interventions/closed_loop.csv.

    Ranked on the rank half of the closed-loop episodes by the success-rate change of ablating the
    head with `SELECTION_MODE` (most negative first); ties by the collision-rate change (largest
    first), then by index. The measure half is left for the effects reported under these names.
    """
    rows = closed_loop[(closed_loop["kind"] == "head") & (closed_loop["mode"] == SELECTION_MODE)
                       & (closed_loop["half"] == RANK_HALF)]
    effect = rows.pivot_table(index="target", columns="metric", values="diff", aggfunc="first")
    heads = sorted(int(HEAD.fullmatch(str(t)).group(1)) for t in effect.index)
    if not heads:
        raise ValueError(f"closed_loop has no {SELECTION_MODE}-ablation rows of kind 'head' on the {RANK_HALF} half")
    key = {h: (effect.loc[f"head{h}", "success"], -effect.loc[f"head{h}", "collision"], h) for h in heads}
    return {h: rank for rank, h in enumerate(sorted(heads, key=key.__getitem__), start=1)}


RATE_LEAF = re.compile(r"(.*_rate|dead_fraction|fraction_within|mean_sparsity|replay_matched|top1_chance|"
                       r"planner_agreement|go_safety_agreement|(success|collision|timeout)_last\d+)")
"""Leaves of metrics that are fractions in [0, 1] (a leaf `mean` of a held-out rate is named by its parent)."""
RATE_GROUPS = frozenset({"logit_lens_agreement", "tuned_lens_held_out_agreement", "attention_off_ego",
                         "success_by_episode_class", "episode_class_share"})
"""Groups whose every metric is a fraction in [0, 1]."""


def is_rate(metric: str) -> bool:
    """Whether a metric is a fraction in [0, 1] (of episodes, steps, units), so its interval must stay
    inside [0, 1]. Differences of rates, counts and ratios such as `ceiling_fraction` are not rates."""
    *parents, leaf = metric.split(".")
    if leaf == "mean" and parents:
        *parents, leaf = parents
    return bool(RATE_LEAF.fullmatch(leaf)) or not RATE_GROUPS.isdisjoint(parents)
