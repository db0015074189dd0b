"""The interventions stage's experiment, and its summary.

`run_interventions` plays every condition on one trained network: heads (zero, mean, resample),
the attention branch (zero, mean, resample), top-conductance vs random neuron sets per layer (mean ablation),
the most attended and a random vehicle removed, a rank-one edit that makes the agent brake and a
head-scaling edit; open loop on the recorded steps, closed loop on held-out env seeds paired with
the unablated agent. The closed-loop env seeds are split in two (`split_halves`): a head is chosen
("the head that matters") on the rank half and its effect is measured on the measure half, so the
choice cannot inflate the effect it reports; every closed-loop row says which half (or all) it
comes from, and carries the share of SLOWER / IDLE / FASTER actions of the condition (so an
ablated agent that just stops is visible). It adds activation and path patching on clean/corrupted
pairs and the perturbation sweeps per layer, and returns the stage's tables (`Tables`); `summarize` turns them
into summary.json (read by `egolens.aggregate` and `egolens.report` by dotted path).

No file I/O: the stage loads the network and the recorded rollout and writes what comes back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens import vocabulary
from egolens.analysis.intervening import editing, patching
from egolens.analysis.intervening import interventions as iv
from egolens.episodes import Episode, episode_table, greedy, paired_comparison
from egolens.hooks import HookFn
from egolens.model import EgoAttentionNetwork
from egolens.names import MEASURE_HALF, RANK_HALF, SELECTION_MODE
from egolens.play import play
from egolens.progress import Progress, no_progress
from egolens.runner import EnvRunner
from egolens.sites import COMBINED, RESID, Z, json_key, neuron_layers, site
from egolens.stats import equivalence_test, paired_bootstrap_ci
from egolens.vocabulary import ACTIONS

if TYPE_CHECKING:
    from egolens.analysis_config import InterventionsConfig

@dataclass
class Condition:
    """One intervention: hooks and/or an observation edit on the trained net, or an edited copy."""

    name: str
    kind: str
    target: str = ""
    mode: str = ""
    units: str = ""
    fns: dict[str, HookFn] = field(default_factory=dict)
    obs_edit: iv.ObsEdit | None = None
    edited: nn.Module | None = None

    def labels(self) -> dict[str, str]:
        return {"condition": self.name, "kind": self.kind, "target": self.target, "mode": self.mode,
                "units": self.units}

    def policy(self, net: nn.Module) -> nn.Module:
        return iv.Intervened(self.edited if self.edited is not None else net, self.fns, self.obs_edit)


@dataclass
class Tables:
    """The stage's tables, one CSV each (`files`)."""

    open_loop: pd.DataFrame
    closed_loop: pd.DataFrame
    closed_loop_episodes: pd.DataFrame
    patching: pd.DataFrame
    path_patching: pd.DataFrame
    perturbation: pd.DataFrame
    editing: pd.DataFrame

    def files(self) -> dict[str, pd.DataFrame]:
        """File name -> table: open_loop.csv, closed_loop.csv, ..."""
        return {f"{f.name}.csv": getattr(self, f.name) for f in fields(self)}


def _recorded(arrays: dict[str, np.ndarray], layer: str, present: np.ndarray) -> np.ndarray:
    """Recorded activations of a layer, present rows only for the others' embedding ([M, D])."""
    acts = arrays[layer]
    return acts[present] if site(layer).per_vehicle else acts.reshape(-1, acts.shape[-1])


def top_units(ranking: pd.DataFrame, layer: str, k: int) -> list[int]:
    """The k best-ranked neurons of `layer` in the study's neuron ranking (the attributions stage's
    neuron_ranking.csv of the trained network: layer, neuron, rank)."""
    rows = ranking[ranking["layer"] == layer].sort_values("rank")
    if rows.empty:
        raise ValueError(f"the neuron ranking has no layer {layer!r}; it ranks {sorted(set(ranking['layer']))}")
    return [int(n) for n in rows["neuron"].head(k)]


def ablation_conditions(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], ranking: pd.DataFrame,
                        cfg: InterventionsConfig, seed: int) -> list[Condition]:
    """Heads (zero, mean, resample), the branch (zero, mean, resample), top-k and random neuron sets
    per layer (mean ablation), the most attended and a random vehicle removed; "none" first (the control).

    arrays: the recorded rollout (obs [N, E, F] and the activations mean and resample ablation
    draw on: the recorded steps are the reference distribution); ranking:
    the study's neuron ranking of this network (`conductance.neuron_ranking`, made by the
    attributions stage), whose top-k neurons per layer are the top set."""
    present = vocabulary.present(arrays["obs"])[:, 1:]
    mean_z = iv.mean_activation(arrays[Z])
    mean_combined = iv.mean_activation(arrays[COMBINED])
    reference_z, reference_combined = torch.as_tensor(arrays[Z]), torch.as_tensor(arrays[COMBINED])
    out = [Condition("none", "none")]
    for h in range(net.attention_layer.heads):
        for mode in iv.MODES:
            out.append(Condition(f"head{h}_{mode}", "head", f"head{h}", mode,
                                 fns=iv.head_ablation(h, mode, mean_z, reference_z, seed)))  # type: ignore[arg-type]
    for mode in iv.MODES:
        out.append(Condition(f"branch_{mode}", "branch", "attention_branch", mode,
                             fns=iv.branch_ablation(mode, mean_combined, reference_combined, seed)))  # type: ignore[arg-type]
    for li, layer in enumerate(neuron_layers(net)):
        top = top_units(ranking, layer, cfg.top_k)
        mean = iv.mean_activation(arrays[layer], present if site(layer).per_vehicle else None)
        sets = {"top": top} | {f"random{i}": s for i, s in enumerate(
            iv.random_unit_sets(arrays[layer].shape[-1], top, cfg.top_k, cfg.random_sets, seed * 1000 + li))}
        for set_name, units in sets.items():
            out.append(Condition(f"neurons_{layer}_{set_name}", "neurons", layer, set_name,
                                 " ".join(map(str, units)), fns=iv.neuron_ablation(layer, units, "mean", mean)))
    out.append(Condition("vehicle_most_attended", "vehicle", "most_attended", "remove",
                         obs_edit=iv.remove_most_attended(net)))
    out.append(Condition("vehicle_random", "vehicle", "random", "remove", obs_edit=iv.remove_random_vehicle(seed)))
    return out


def open_loop_row(net: nn.Module, obs: torch.Tensor, condition: Condition, resamples: int, seed: int) -> dict:
    """open_loop.csv's row of one condition: its labels and `iv.summarize_effects` on obs [N, E, F]."""
    effects = iv.open_loop_effects(net, obs, condition.fns, condition.obs_edit, condition.edited)
    return condition.labels() | iv.summarize_effects(effects, resamples, seed)


RANK, MEASURE, ALL = RANK_HALF, MEASURE_HALF, "all"
"""The closed-loop episodes a number comes from: the rank half (heads are chosen there), the
measure half (a chosen head's effect is measured there), or all of them."""
ACTION_METRICS = tuple(f"action_{name.lower()}" for name in ACTIONS)
"""closed_loop.csv metrics: the share of the condition's steps on which it chose each action."""


def split_halves(env_seeds: Sequence[int]) -> dict[str, list[int]]:
    """The closed-loop env seeds in two by env seed: rank = the lower half (sorted), measure = the
    rest (the larger half when the count is odd). Needs at least two env seeds."""
    seeds = sorted(int(s) for s in env_seeds)
    if len(seeds) < 2:
        raise ValueError(f"held-out selection needs at least 2 closed-loop episodes, got {len(seeds)}")
    cut = len(seeds) // 2
    return {RANK: seeds[:cut], MEASURE: seeds[cut:]}


class CountingPolicy:
    """The greedy policy of `net` (`egolens.episodes.greedy`, one observation at a time, as `play`
    drives a network) that counts the actions it chooses: counts [A]."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.counts = np.zeros(len(ACTIONS), dtype=np.int64)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        actions = greedy(self.net, obs, batch=1)
        np.add.at(self.counts, actions, 1)
        return actions


@dataclass
class Played:
    """One condition's closed-loop episodes and action counts [A], per half (RANK, MEASURE, ALL)."""

    episodes: dict[str, list[Episode]]
    counts: dict[str, np.ndarray]


def play_halves(policy: nn.Module, runner: EnvRunner, halves: dict[str, list[int]]) -> Played:
    """Play `policy` greedily on each half's env seeds (an episode depends only on its env seed, so
    this equals one run over all of them); ALL = the rank half's episodes then the measure half's."""
    episodes, counts = {}, {}
    for half, seeds in halves.items():
        counting = CountingPolicy(policy)
        with torch.no_grad():
            episodes[half] = play(counting, runner, seeds)
        counts[half] = counting.counts
    episodes[ALL] = [e for half in halves for e in episodes[half]]
    counts[ALL] = sum(counts[half] for half in halves)
    return Played(episodes, counts)


def action_rows(counts: np.ndarray, control: np.ndarray, episodes: int) -> list[dict]:
    """closed_loop.csv rows of the action histogram: per action its share of the condition's steps
    (value), the control's share (control) and the difference (diff); no intervals."""
    share, base = counts / max(counts.sum(), 1), control / max(control.sum(), 1)
    return [{"metric": metric, "value": float(share[i]), "control": float(base[i]), "diff": float(share[i] - base[i]),
             "episodes": episodes} for i, metric in enumerate(ACTION_METRICS)]


def comparison(played: Played, control: Played, half: str, resamples: int, seed: int) -> pd.DataFrame:
    """One half's paired comparison with the control (`paired_comparison`) and the action rows."""
    table = paired_comparison(episode_table(played.episodes[half]), episode_table(control.episodes[half]),
                              resamples, seed)
    actions = pd.DataFrame(action_rows(played.counts[half], control.counts[half], len(played.episodes[half])))
    table = pd.concat([table, actions], ignore_index=True)
    table.insert(0, "half", half)
    return table


@dataclass
class ClosedLoop:
    """Closed-loop runs of some conditions: paired comparisons (closed_loop.csv rows, per half),
    episodes (closed_loop_episodes.csv rows, with their half), and each condition's `Played`."""

    table: pd.DataFrame
    episodes: pd.DataFrame
    results: dict[str, Played]


def closed_loop(net: nn.Module, conditions: Sequence[Condition], runner: EnvRunner, env_seeds: Sequence[int],
                baseline: Played | None, resamples: int, seed: int,
                progress: Progress = no_progress) -> ClosedLoop:
    """Play every condition greedily on the same env seeds, split into halves (`split_halves`);
    compare each with `baseline` (the unablated agent's `Played`; None: the "none" condition among
    `conditions`, played first) on the rank half, the measure half and all episodes."""
    halves = split_halves(env_seeds)
    tables, episodes, results = [], [], {}
    for condition in progress(conditions, "closed loop"):
        played = play_halves(condition.policy(net), runner, halves)
        results[condition.name] = played
        control = baseline if baseline is not None else results["none"]
        table = pd.concat([comparison(played, control, half, resamples, seed) for half in (ALL, RANK, MEASURE)],
                          ignore_index=True)
        for name, value in reversed(condition.labels().items()):
            table.insert(0, name, value)
        tables.append(table)
        for half in (RANK, MEASURE):
            ep = episode_table(played.episodes[half])
            ep.insert(0, "half", half)
            ep.insert(0, "condition", condition.name)
            episodes.append(ep)
    return ClosedLoop(pd.concat(tables, ignore_index=True), pd.concat(episodes, ignore_index=True), results)


def patching_tables(net: EgoAttentionNetwork, obs: torch.Tensor, attention: torch.Tensor, crossing: torch.Tensor,
                    cfg: InterventionsConfig, progress: Progress = no_progress) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Activation and path patching (patching.csv, path_patching.csv) on every kind of pair.

    obs [N, E, F] and attention [N, H, E] recorded; crossing [N, E] bool (`egolens.scene.scene_facts`).
    Each table gets the pair's kind, recorded step and changed entity (target)."""
    sites = patching.patching_sites(net, obs.shape[1])
    act_tables, path_tables = [], []
    for kind in progress(patching.PAIR_KINDS, "patching"):
        pairs = patching.build_pairs(net, obs, kind, attention, crossing, cfg.patch_pairs, cfg.min_metric_change,
                                     cfg.change_factor)
        if not len(pairs.step):
            continue
        for table, result in ((act_tables, patching.activation_patching(net, pairs.clean, pairs.corrupted, sites,
                                                                         pairs.target)),
                              (path_tables, patching.path_patching(net, pairs.clean, pairs.corrupted, pairs.target))):
            result.insert(0, "kind", kind)
            result.insert(2, "step", pairs.step[result["pair"].to_numpy()])
            result.insert(3, "target", pairs.target.numpy()[result["pair"].to_numpy()])
            table.append(result)
    empty = pd.DataFrame(columns=["kind", "pair", "step", "target", "restored"])
    return (pd.concat(act_tables, ignore_index=True) if act_tables else empty,
            pd.concat(path_tables, ignore_index=True) if path_tables else empty)


def perturbation_table(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], cfg: InterventionsConfig,
                       seed: int) -> pd.DataFrame:
    """perturbation.csv: `iv.perturbation_sweep` of every neuron layer and the attention output
    (resid), directions from the recorded activations (`iv.sweep_directions`)."""
    present = vocabulary.present(arrays["obs"])[:, 1:]
    layers = [*neuron_layers(net), RESID]
    directions = {layer: iv.sweep_directions(_recorded(arrays, layer, present), cfg.random_directions, seed * 1000 + i)
                  for i, layer in enumerate(layers)}
    return iv.perturbation_sweep(net, torch.as_tensor(arrays["obs"]), directions, cfg.perturbation_sizes)


# ------------------------------------------------------------------------------------ edits

@dataclass
class Edit:
    """An edit's condition, what it is meant to do (goal), what describes it (info) and the
    recorded steps it is not meant to change (other [N] bool: its side effects are measured there)."""

    condition: Condition
    goal: str
    info: dict[str, Any]
    other: np.ndarray
    half: str = ALL
    """The closed-loop episodes its effect is reported on (MEASURE when a choice on RANK made it)."""


def rank_one_brake(net: EgoAttentionNetwork, obs: torch.Tensor, facts: dict[str, np.ndarray],
                   cfg: InterventionsConfig) -> editing.BrakeEdit | None:
    """`editing.brake_edit` on the recorded steps ranked by `editing.step_danger`; None (with a
    warning) when the agent brakes in every recorded step."""
    try:
        return editing.brake_edit(net, obs, editing.step_danger(facts), cfg.edit_ridge, cfg.edit_margin)
    except ValueError as err:
        warnings.warn(f"no rank-one edit: {err}", stacklevel=2)
        return None


def edit_rows(name: str, goal: str, info: dict[str, Any], effects: pd.DataFrame, other: np.ndarray,
              closed: pd.DataFrame) -> list[dict]:
    """editing.csv rows of one edit: its description, intended effect, side effects (open loop on
    the `other` steps, and on all), and its closed-loop differences with their CIs."""
    rows = [{"edit": name, "goal": goal, "measure": key, "value": value} for key, value in info.items()]
    side = effects[other]
    rows += [{"edit": name, "goal": goal, "measure": "side_flip_rate", "value": float(side["flipped"].mean())},
             {"edit": name, "goal": goal, "measure": "side_abs_dq", "value": float(side["abs_dq"].mean())},
             {"edit": name, "goal": goal, "measure": "all_flip_rate", "value": float(effects["flipped"].mean())}]
    for row in closed.itertuples():
        rows.append({"edit": name, "goal": goal, "measure": f"closed_{row.metric}_diff", "value": row.diff,
                     "ci_low": row.diff_ci_low, "ci_high": row.diff_ci_high})
    return rows


def editing_table(net: nn.Module, obs: torch.Tensor, edits: Sequence[Edit], brake: editing.BrakeEdit | None,
                  closed: pd.DataFrame) -> pd.DataFrame:
    """editing.csv: `edit_rows` of each edit (closed loop on the edit's half); the rank-one edit also
    reports its target step's action before and after, whether it brakes, and its Δ(Q(SLOWER) − Q(FASTER))."""
    rows = []
    for edit in edits:
        name, info = edit.condition.name, dict(edit.info)
        effects = iv.open_loop_effects(net, obs, edited=edit.condition.edited)
        if brake is not None and name == "edit_rank_one":
            target = effects.iloc[brake.step]
            info |= {"target_action_before": int(target["action"]), "target_action_after": int(target["action_after"]),
                     "target_brakes": int(target["action_after"] == iv.SLOWER), "target_dm": float(target["dm"])}
        rows += edit_rows(name, edit.goal, info, effects, edit.other,
                          closed[(closed.condition == name) & (closed.half == edit.half)])
    return pd.DataFrame(rows, columns=["edit", "goal", "measure", "value", "ci_low", "ci_high"])


# ------------------------------------------------------------------------------- experiment

def neuron_contrasts(open_loop: pd.DataFrame, effects: dict[str, pd.DataFrame], resamples: int,
                     seed: int) -> pd.DataFrame:
    """open_loop.csv with the paired contrast of each layer's top neuron set against its random
    sets on the same steps: on the top set's row, abs_dq_vs_random = mean over steps of |ΔQ|(top)
    − mean over the random sets of |ΔQ|(random), and its 95% paired-bootstrap CI (…_ci_low,
    …_ci_high); NaN on every other row."""
    out = open_loop.copy()
    out[["abs_dq_vs_random", "abs_dq_vs_random_ci_low", "abs_dq_vs_random_ci_high"]] = math.nan
    neurons = out[out["kind"] == "neurons"]
    for _, rows in neurons.groupby("target", sort=False):
        top = rows[rows["mode"] == "top"]
        randoms = rows[rows["mode"] != "top"]["condition"]
        if top.empty or randoms.empty:
            continue
        control = np.mean([effects[c]["abs_dq"].to_numpy(dtype=np.float64) for c in randoms], axis=0)
        treated = effects[top["condition"].iloc[0]]["abs_dq"].to_numpy(dtype=np.float64)
        out.loc[top.index[0], ["abs_dq_vs_random", "abs_dq_vs_random_ci_low", "abs_dq_vs_random_ci_high"]] = \
            paired_bootstrap_ci(treated, control, resamples, seed)
    return out


def run_interventions(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], facts: dict[str, np.ndarray],
                      ranking: pd.DataFrame, cfg: InterventionsConfig, runner: EnvRunner, seed: int,
                      progress: Progress = no_progress) -> Tables:
    """Every intervention of the stage on `net` (eval mode), its tables.

    arrays: the recorded rollout (`obs` [N, E, F], `attention` [N, H, E] and the activations of
    `sites.Z`, `sites.COMBINED`, `sites.RESID` and every `sites.neuron_layers`); facts: `egolens.scene.scene_facts` of
    obs (crossing, ttc, distance [N, E]); ranking: the trained network's rows of the attributions
    stage's neuron_ranking.csv (layer, neuron, rank); runner: the envs of the closed-loop episodes (held-out
    env seeds cfg.env_seeds); seed: the agent seed (seeds every random choice).
    """
    obs = torch.as_tensor(arrays["obs"])
    resamples = cfg.bootstrap_resamples
    conditions = ablation_conditions(net, arrays, ranking, cfg, seed)
    edits = []
    brake = rank_one_brake(net, obs, facts, cfg)
    if brake is not None:
        conditions.append(Condition("edit_rank_one", "edit", brake.layer, "rank_one", edited=brake.net))
        edits.append(Edit(conditions[-1], "brake in the most dangerous recorded step where the agent did not",
                          {"step": brake.step, "source_step": brake.source,
                           "value_from_braking_step": int(brake.source >= 0)}, np.arange(len(obs)) != brake.step))
    effects = {c.name: iv.open_loop_effects(net, obs, c.fns, c.obs_edit, c.edited)
               for c in progress(conditions, "open loop")}
    open_rows = [c.labels() | iv.summarize_effects(effects[c.name], resamples, seed) for c in conditions]
    open_rows = neuron_contrasts(pd.DataFrame(open_rows), effects, resamples, seed)
    played = closed_loop(net, conditions, runner, cfg.env_seeds, None, resamples, seed, progress)
    head, _ = most_affecting_head(played.table, net.attention_layer.heads, SELECTION_MODE)
    scaled = Condition("edit_head_scale", "edit", f"head{head}", f"x{cfg.head_scale:g}",
                       edited=editing.scale_head_output(net, head, cfg.head_scale))
    edits.append(Edit(scaled, f"scale head {head}'s output weights by {cfg.head_scale:g} (the head whose "
                      f"{SELECTION_MODE} ablation changes closed-loop outcomes most on the rank half; closed loop "
                      "on the measure half)", {"head": head, "factor": cfg.head_scale},
                      np.ones(len(obs), dtype=bool), half=MEASURE))
    more = closed_loop(net, [scaled], runner, cfg.env_seeds, played.results["none"], resamples, seed, progress)
    open_rows = pd.concat([open_rows, pd.DataFrame([open_loop_row(net, obs, scaled, resamples, seed)])],
                          ignore_index=True)
    closed = pd.concat([played.table, more.table], ignore_index=True)
    edit_table = editing_table(net, obs, edits, brake, closed)
    act, path = patching_tables(net, obs, torch.as_tensor(arrays["attention"]), torch.as_tensor(facts["crossing"]),
                                cfg, progress)
    return Tables(open_loop=open_rows, closed_loop=closed,
                  closed_loop_episodes=pd.concat([played.episodes, more.episodes], ignore_index=True),
                  patching=act, path_patching=path, perturbation=perturbation_table(net, arrays, cfg, seed),
                  editing=edit_table)


# ---------------------------------------------------------------------------------- summary

def _diffs(closed: pd.DataFrame, condition: str, half: str = ALL) -> dict[str, float]:
    """Closed-loop success and collision differences of one condition on one half, with their CIs."""
    rows = closed[(closed.condition == condition) & (closed.half == half)].set_index("metric")
    out = {}
    for metric in ("success", "collision"):
        row = rows.loc[metric]
        out |= {f"{metric}_diff": row["diff"], f"{metric}_diff_ci_low": row["diff_ci_low"],
                f"{metric}_diff_ci_high": row["diff_ci_high"]}
    return out


def _actions(closed: pd.DataFrame, condition: str, half: str = ALL) -> dict[str, float]:
    """The share of each action in one condition's closed-loop steps on one half: action_<name>."""
    rows = closed[(closed.condition == condition) & (closed.half == half)].set_index("metric")
    return {metric: rows.loc[metric, "value"] for metric in ACTION_METRICS}


def most_affecting_head(closed: pd.DataFrame, heads: int, mode: str, half: str = RANK) -> tuple[int, dict[str, float]]:
    """The head whose ablation changes closed-loop success or collision rate most on `half` (max
    of |Δ|; ties: the lower head), and its `_diffs` there. closed: closed_loop.csv with rows
    head<h>_<mode>. The choice is made on the rank half so that its effect can be measured on
    the other (`summarize`)."""
    scored = []
    for h in range(heads):
        diffs = _diffs(closed, f"head{h}_{mode}", half)
        scored.append((max(abs(diffs["success_diff"]), abs(diffs["collision_diff"])), -h, diffs))
    score, neg_h, diffs = max(scored, key=lambda t: (t[0], t[1]))
    return -neg_h, diffs


def episode_differences(episodes: pd.DataFrame, treated: str, control: str, metric: str,
                        half: str | None = None) -> np.ndarray:
    """Per-episode differences treated − control of `metric` on the same env seeds ([n], in env
    seed order), from closed_loop_episodes.csv (condition, half, env_seed, metric); half None: both."""
    rows = episodes if half is None else episodes[episodes["half"] == half]

    def of(condition: str) -> pd.Series:
        return rows[rows["condition"] == condition].set_index("env_seed")[metric].sort_index()

    a, b = of(treated), of(control)
    if not a.index.equals(b.index) or a.empty:
        raise ValueError(f"{treated} and {control} were not played on the same env seeds")
    return a.to_numpy(dtype=np.float64) - b.to_numpy(dtype=np.float64)


def resolution(episodes: int, alpha: float = 0.05) -> float:
    """The smallest rate a sample of `episodes` paired episodes can rule out at level `alpha`: with no
    discordant pair seen, the exact one-sided bound on their rate is 1 − alpha^(1/n) (≈ 3/n). A rate
    difference smaller than this cannot be shown absent, whatever the bootstrap says (a sample with
    no discordant pair has a bootstrap interval of width 0)."""
    return 1.0 - alpha ** (1.0 / episodes) if episodes > 0 else math.nan


def no_effect(differences: np.ndarray, margin: float, resamples: int, seed: int) -> dict[str, float]:
    """Whether paired per-episode rate differences [n] (each −1, 0 or 1) show no effect:
    `stats.equivalence_test` (TOST at 5%: the 90% interval inside ±margin) and non_inferior (its lower
    bound above −margin: one-sided, "not lower by more than the margin"), each only when the sample
    can resolve the margin at all (resolved: `resolution` <= margin); the detectable effect at 80%
    power, the resolution and the number of episodes."""
    test = equivalence_test(differences, margin, resamples, seed)
    resolved = resolution(differences.size) <= margin
    return {"diff": test["mean"], "tost_ci_low": test["ci_low"], "tost_ci_high": test["ci_high"], "margin": margin,
            "equivalent": int(bool(test["equivalent"]) and resolved),
            "non_inferior": int(test["ci_low"] > -margin and resolved),
            "detectable_effect": test["detectable_effect"], "resolution": resolution(differences.size),
            "resolved": int(resolved), "episodes": int(differences.size)}


def summarize(tables: Tables, heads: int, neuron_layers: Sequence[str], notebook_size: float, margin: float,
              resamples: int, seed: int) -> dict[str, Any]:
    """summary.json of the interventions stage from its tables.

    heads: the network's heads; neuron_layers: `sites.neuron_layers(net)`; notebook_size: the size
    of the uniform perturbation reported (cfg.notebook_size); margin: the largest closed-loop rate
    difference counted as no effect (cfg.equivalence_margin); resamples, seed: of the paired
    intervals computed here. Sections (closed loop on all episodes unless said):
    - closed_loop_baseline: the unablated agent's success, collision, timeout rates, action shares
      (action_slower, action_idle, action_faster) and episodes;
    - head_ablation.<mode> (zero, mean, resample): the head chosen on the rank half
      (`most_affecting_head`), its success / collision diffs with CIs on the measure half, the same
      diffs on the rank half (in_sample_…: inflated by the choice), its action shares on the
      measure half and its open-loop flip rate;
    - head_no_effect.head<h>.<mode>: `no_effect` of the head's success difference on the measure half;
    - branch_ablation.<mode>: diffs, action shares and open-loop flip rate of the attention branch;
    - neuron_ablation.<layer>: the top set's and the random sets' mean open-loop flip rate,
      |ΔQ| and closed-loop success / collision diffs, and top_minus_random_abs_dq (paired over steps);
    - vehicle_removal.{most_attended,random}: closed-loop diffs, open-loop flip rate and |ΔQ|, and
      most_attended_vs_random: the paired collision difference of the two removals with its CI;
    - patching_restored.<kind>: pairs, mean restored fraction per site class (and role), over
      sites whose entity is present, the largest mean over one neuron (neuron_max);
    - path_patching_restored.<kind>: mean restored fraction per head and path (and the sender);
    - perturbation_notebook.<layer>: |ΔQ| and flip rate of +notebook_size on every unit;
    - editing.<edit>: every measure of editing.csv, with its CI where it has one, and for the
      rank-one edit collision_no_effect (`no_effect` of its collision difference).
    """
    open_loop, closed, act, path = tables.open_loop, tables.closed_loop, tables.patching, tables.path_patching
    perturb, edit_table, episodes = tables.perturbation, tables.editing, tables.closed_loop_episodes
    base = closed[(closed.condition == "none") & (closed.half == ALL)].set_index("metric")
    ol = open_loop.set_index("condition")
    out: dict[str, Any] = {"closed_loop_baseline": {f"{m}_rate": base.loc[m, "value"]
                                                    for m in ("success", "collision", "timeout")}
                           | _actions(closed, "none") | {"episodes": int(base.loc["success", "episodes"])}}
    head_ablation = {}
    for mode in iv.MODES:
        h, in_sample = most_affecting_head(closed, heads, mode)
        head_ablation[mode] = {"head": h, **_diffs(closed, f"head{h}_{mode}", MEASURE),
                               **{f"in_sample_{k}": v for k, v in in_sample.items() if "_ci_" not in k},
                               **_actions(closed, f"head{h}_{mode}", MEASURE),
                               "flip_rate": ol.loc[f"head{h}_{mode}", "flip_rate"]}
    out["head_ablation"] = head_ablation
    out["head_no_effect"] = {f"head{h}": {mode: no_effect(episode_differences(episodes, f"head{h}_{mode}", "none",
                                                                              "success", MEASURE),
                                                          margin, resamples, seed)
                                          for mode in iv.MODES} for h in range(heads)}
    out["branch_ablation"] = {
        mode: _diffs(closed, f"branch_{mode}") | _actions(closed, f"branch_{mode}")
        | {"flip_rate": ol.loc[f"branch_{mode}", "flip_rate"]}
        for mode in iv.MODES}
    neurons = {}
    for layer in neuron_layers:
        rows = open_loop[open_loop.target == layer]
        top, rand = rows[rows["mode"] == "top"].iloc[0], rows[rows["mode"] != "top"]
        entry = {"top_flip_rate": top["flip_rate"], "random_flip_rate": rand["flip_rate"].mean(),
                 "top_abs_dq": top["abs_dq"], "random_abs_dq": rand["abs_dq"].mean(),
                 "top_minus_random_abs_dq": top["abs_dq_vs_random"],
                 "top_minus_random_abs_dq_ci_low": top["abs_dq_vs_random_ci_low"],
                 "top_minus_random_abs_dq_ci_high": top["abs_dq_vs_random_ci_high"]}
        top_c = _diffs(closed, top["condition"])
        rand_c = [_diffs(closed, c) for c in rand["condition"]]
        for metric in ("success", "collision"):
            entry[f"top_{metric}_diff"] = top_c[f"{metric}_diff"]
            entry[f"random_{metric}_diff"] = float(np.mean([r[f"{metric}_diff"] for r in rand_c]))
        neurons[json_key(layer)] = entry
    out["neuron_ablation"] = neurons
    out["vehicle_removal"] = {
        target: _diffs(closed, f"vehicle_{target}") | {"flip_rate": ol.loc[f"vehicle_{target}", "flip_rate"],
                                                        "abs_dq": ol.loc[f"vehicle_{target}", "abs_dq"]}
        for target in ("most_attended", "random")}
    diff, low, high = paired_bootstrap_ci(
        episode_differences(episodes, "vehicle_most_attended", "none", "collision"),
        episode_differences(episodes, "vehicle_random", "none", "collision"), resamples, seed)
    out["vehicle_removal"]["most_attended_vs_random"] = {"collision_diff": diff, "collision_diff_ci_low": low,
                                                        "collision_diff_ci_high": high}
    patch: dict[str, Any] = {}
    if len(act):
        used = act[act["entity_present"].astype(bool)]
        for kind, group in used.groupby("kind", sort=True):
            entry: dict[str, float] = {"pairs": int(group["pair"].nunique())}
            for (cls, role), g in group.groupby(["site_class", "role"], sort=True):
                entry[cls if role == "all" else f"{cls}_{role}"] = g["restored"].mean()
            neuron_means = group[group.site_class == "neuron"].groupby(["site", "neuron"])["restored"].mean()
            if len(neuron_means):
                entry["neuron_max"] = neuron_means.max()
            patch[kind] = entry
    out["patching_restored"] = patch
    paths: dict[str, Any] = {}
    for kind, group in (path.groupby("kind", sort=True) if len(path) else []):
        paths[kind] = {("sender" if h < 0 else f"head{h}_{p}"): g["restored"].mean()
                       for (h, p), g in group.groupby(["head", "path"], sort=True)}
    out["path_patching_restored"] = paths
    notebook = perturb[(perturb.direction == "uniform") & np.isclose(perturb["size"], notebook_size)]
    out["perturbation_notebook"] = {json_key(r.layer): {"abs_dq": r.mean_abs_dq, "flip_rate": r.flip_rate}
                                    for r in notebook.itertuples()}
    edits: dict[str, Any] = {}
    for name, group in edit_table.groupby("edit", sort=True):
        entry = {}
        for r in group.itertuples():
            entry[r.measure] = r.value
            if isinstance(r.ci_low, float) and math.isfinite(r.ci_low):
                entry[f"{r.measure}_ci_low"], entry[f"{r.measure}_ci_high"] = r.ci_low, r.ci_high
        edits[name] = entry
    if "edit_rank_one" in edits:
        edits["edit_rank_one"]["collision_no_effect"] = no_effect(
            episode_differences(episodes, "edit_rank_one", "none", "collision"), margin, resamples, seed)
    out["editing"] = edits
    return out
