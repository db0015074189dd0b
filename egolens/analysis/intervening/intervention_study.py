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
from egolens.analysis.intervening.closed_loop import (
    ALL,
    MEASURE,
    closed_loop,
    most_affecting_head,
)
from egolens.hooks import HookFn
from egolens.model import EgoAttentionNetwork
from egolens.names import SELECTION_MODE
from egolens.progress import Progress, no_progress
from egolens.runner import EnvRunner
from egolens.sites import COMBINED, RESID, Z, neuron_layers, site
from egolens.stats import paired_bootstrap_ci

if TYPE_CHECKING:
    from egolens.analysis_config import InterventionsConfig


VEHICLE_CONTROLS = ("nearest", "lowest_ttc")
"""Controls of removing the most-attended vehicle beside a random one: the vehicle a naive ranking puts
first (`interventions.remove_first_ranked`)."""


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
                        cfg: InterventionsConfig, seed: int, facts: iv.FactsFn | None = None) -> list[Condition]:
    """Heads (zero, mean, resample), the branch (zero, mean, resample), top-k and random neuron sets
    per layer (mean ablation), the most attended and a random vehicle removed and, given `facts`
    (obs -> scene facts), the nearest and the lowest-time-to-collision vehicle removed
    (`VEHICLE_CONTROLS`); "none" first (the control).

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
    if facts is not None:
        for ranking in VEHICLE_CONTROLS:
            out.append(Condition(f"vehicle_{ranking}", "vehicle", ranking, "remove",
                                 obs_edit=iv.remove_first_ranked(facts, ranking)))
    return out


def open_loop_row(net: nn.Module, obs: torch.Tensor, condition: Condition, resamples: int, seed: int) -> dict:
    """open_loop.csv's row of one condition: its labels and `iv.summarize_effects` on obs [N, E, F]."""
    effects = iv.open_loop_effects(net, obs, condition.fns, condition.obs_edit, condition.edited)
    return condition.labels() | iv.summarize_effects(effects, resamples, seed)


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
                      progress: Progress = no_progress, facts_of: iv.FactsFn | None = None) -> Tables:
    """Every intervention of the stage on `net` (eval mode), its tables.

    arrays: the recorded rollout (`obs` [N, E, F], `attention` [N, H, E] and the activations of
    `sites.Z`, `sites.COMBINED`, `sites.RESID` and every `sites.neuron_layers`); facts: `egolens.scene.scene_facts` of
    obs (crossing, ttc, distance [N, E]); ranking: the trained network's rows of the attributions
    stage's neuron_ranking.csv (layer, neuron, rank); runner: the envs of the closed-loop episodes (held-out
    env seeds cfg.env_seeds); seed: the agent seed (seeds every random choice); facts_of: obs -> scene
    facts, for the nearest / lowest-TTC vehicle removals (left out when None).
    """
    obs = torch.as_tensor(arrays["obs"])
    resamples = cfg.bootstrap_resamples
    conditions = ablation_conditions(net, arrays, ranking, cfg, seed, facts_of)
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
