"""interventions@seed: what the trained network uses. Ablations of heads, the attention branch,
top-conductance vs random neurons and vehicles (open loop on recorded steps, closed loop on
held-out env seeds paired with the unablated agent); activation and path patching on
clean/corrupted pairs; perturbation sweeps per layer; a rank-one edit and a head-scaling edit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from egolens import checkpoint, vocabulary
from egolens.analysis import interventions as iv
from egolens.artifacts import json_text
from egolens.env import make_runner
from egolens.evaluation import EpisodeResult, play_greedy
from egolens.hooks import HookFn
from egolens.model import EgoAttentionNetwork
from egolens.scene import scene_facts
from stages import DATA, load_net, seed_args, seed_results

NOTEBOOK_SIZE = 0.1
"""The notebook's perturbation: +0.1 on every unit of the last hidden layer."""


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


def neuron_layers(net: EgoAttentionNetwork) -> list[str]:
    return [f"{mlp}.hook_post.{i}" for mlp in ("ego_embedding", "others_embedding", "output_layer")
            for i in range(len(getattr(net, mlp).hook_post))]


def recorded(arrays: dict[str, np.ndarray], layer: str, present: np.ndarray) -> np.ndarray:
    """Recorded activations of a layer, present rows only for the others' embedding ([M, D])."""
    acts = arrays[layer]
    return acts[present] if layer.startswith("others_embedding") else acts.reshape(-1, acts.shape[-1])


def ablation_conditions(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], obs: torch.Tensor,
                        cfg: Any, seed: int) -> list[Condition]:
    """Heads (zero, mean), the branch (zero, mean), top-k and random neuron sets per layer (mean
    ablation), the most attended and a random vehicle removed."""
    present = vocabulary.present(arrays["obs"])[:, 1:]
    mean_z = iv.mean_activation(arrays[iv.Z])
    mean_combined = iv.mean_activation(arrays[iv.COMBINED])
    out = [Condition("none", "none")]
    for h in range(net.attention_layer.heads):
        for mode in ("zero", "mean"):
            out.append(Condition(f"head{h}_{mode}", "head", f"head{h}", mode, fns=iv.head_ablation(h, mode, mean_z)))
    for mode in ("zero", "mean"):
        out.append(Condition(f"branch_{mode}", "branch", "attention_branch", mode,
                             fns=iv.branch_ablation(mode, mean_combined)))
    steps = np.unique(np.round(np.linspace(0, len(obs) - 1, min(cfg.conductance_steps, len(obs)))).astype(int))
    for li, layer in enumerate(tqdm(neuron_layers(net), desc="neuron conductance", unit="layer")):
        importance = iv.neuron_importance(net, obs[steps], layer, cfg.conductance_points)
        top = iv.top_units(importance, cfg.top_k)
        mean = iv.mean_activation(arrays[layer], present if layer.startswith("others_embedding") else None)
        sets = {"top": top} | {f"random{i}": s for i, s in enumerate(
            iv.random_unit_sets(importance.numel(), top, cfg.top_k, cfg.random_sets, seed * 1000 + li))}
        for set_name, units in sets.items():
            out.append(Condition(f"neurons_{layer}_{set_name}", "neurons", layer, set_name,
                                 " ".join(map(str, units)), fns=iv.neuron_ablation(layer, units, "mean", mean)))
    out.append(Condition("vehicle_most_attended", "vehicle", "most_attended", "remove",
                         obs_edit=iv.remove_most_attended(net)))
    out.append(Condition("vehicle_random", "vehicle", "random", "remove", obs_edit=iv.remove_random_vehicle(seed)))
    return out


def open_loop_row(net: nn.Module, obs: torch.Tensor, condition: Condition, cfg: Any, seed: int) -> dict:
    effects = iv.open_loop_effects(net, obs, condition.fns, condition.obs_edit, condition.edited)
    return condition.labels() | iv.summarize_effects(effects, cfg.bootstrap_resamples, seed)


def closed_loop(net: nn.Module, conditions: list[Condition], envs: Any, env_seeds: list[int],
                baseline: list[EpisodeResult] | None, cfg: Any, seed: int,
                ) -> tuple[list[pd.DataFrame], list[pd.DataFrame], dict[str, list[EpisodeResult]]]:
    """Play every condition on the same env seeds; compare each with the unablated agent."""
    tables, episodes, results = [], [], {}
    for condition in tqdm(conditions, desc="closed loop", unit="cond"):
        with torch.no_grad():
            played = play_greedy(condition.policy(net), envs, env_seeds)
        results[condition.name] = played
        control = baseline if baseline is not None else results["none"]
        table = iv.paired_comparison(played, control, cfg.bootstrap_resamples, seed)
        for name, value in reversed(condition.labels().items()):
            table.insert(0, name, value)
        tables.append(table)
        ep = iv.episode_table(played)
        ep.insert(0, "condition", condition.name)
        episodes.append(ep)
    return tables, episodes, results


def patching(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], obs: torch.Tensor, params: Any,
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = params.interventions
    facts = scene_facts(arrays["obs"], params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    crossing = torch.as_tensor(facts["crossing"])
    attention = torch.as_tensor(arrays["attention"])
    sites = iv.patching_sites(net, obs.shape[1])
    act_tables, path_tables = [], []
    for kind in tqdm(iv.PAIR_KINDS, desc="patching", unit="kind"):
        pairs = iv.build_pairs(net, obs, kind, attention, crossing, cfg.patch_pairs, cfg.min_metric_change,
                               cfg.change_factor)
        if not len(pairs.step):
            continue
        keys = {"kind": kind}
        for table, result in ((act_tables, iv.activation_patching(net, pairs.clean, pairs.corrupted, sites,
                                                                   pairs.target)),
                              (path_tables, iv.path_patching(net, pairs.clean, pairs.corrupted, pairs.target))):
            result.insert(0, "kind", keys["kind"])
            result.insert(2, "step", pairs.step[result["pair"].to_numpy()])
            result.insert(3, "target", pairs.target.numpy()[result["pair"].to_numpy()])
            table.append(result)
    empty = pd.DataFrame(columns=["kind", "pair", "step", "target", "restored"])
    return (pd.concat(act_tables, ignore_index=True) if act_tables else empty,
            pd.concat(path_tables, ignore_index=True) if path_tables else empty)


def perturbation(net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], obs: torch.Tensor, cfg: Any,
                 seed: int) -> pd.DataFrame:
    present = vocabulary.present(arrays["obs"])[:, 1:]
    layers = [*neuron_layers(net), iv.RESID]
    directions = {layer: iv.sweep_directions(recorded(arrays, layer, present), cfg.random_directions, seed * 1000 + i)
                  for i, layer in enumerate(layers)}
    return iv.perturbation_sweep(net, obs, directions, cfg.perturbation_sizes)


def edit_rows(name: str, goal: str, info: dict[str, Any], effects: pd.DataFrame, other: np.ndarray,
              closed: pd.DataFrame) -> list[dict]:
    """editing.csv rows of one edit: its description, intended effect, side effects."""
    rows = [{"edit": name, "goal": goal, "measure": key, "value": value} for key, value in info.items()]
    side = effects[other]
    rows += [{"edit": name, "goal": goal, "measure": "side_flip_rate", "value": float(side["flipped"].mean())},
             {"edit": name, "goal": goal, "measure": "side_abs_dq", "value": float(side["abs_dq"].mean())},
             {"edit": name, "goal": goal, "measure": "all_flip_rate", "value": float(effects["flipped"].mean())}]
    for row in closed.itertuples():
        rows.append({"edit": name, "goal": goal, "measure": f"closed_{row.metric}_diff", "value": row.diff,
                     "ci_low": row.diff_ci_low, "ci_high": row.diff_ci_high})
    return rows


# ----------------------------------------------------------------------------------- summary

def _key(name: str) -> str:
    return name.replace(".", "_")


def _diffs(closed: pd.DataFrame, condition: str) -> dict[str, float]:
    rows = closed[closed.condition == condition].set_index("metric")
    out = {}
    for metric in ("success", "collision"):
        row = rows.loc[metric]
        out |= {f"{metric}_diff": row["diff"], f"{metric}_diff_ci_low": row["diff_ci_low"],
                f"{metric}_diff_ci_high": row["diff_ci_high"]}
    return out


def most_affecting_head(closed: pd.DataFrame, heads: int, mode: str) -> tuple[int, dict[str, float]]:
    """The head whose ablation changes closed-loop success or collision rate most (max of |Δ|)."""
    scored = []
    for h in range(heads):
        diffs = _diffs(closed, f"head{h}_{mode}")
        scored.append((max(abs(diffs["success_diff"]), abs(diffs["collision_diff"])), -h, diffs))
    score, neg_h, diffs = max(scored, key=lambda t: (t[0], t[1]))
    return -neg_h, diffs


def summary(net: EgoAttentionNetwork, open_loop: pd.DataFrame, closed: pd.DataFrame, act: pd.DataFrame,
            path: pd.DataFrame, perturb: pd.DataFrame, editing: pd.DataFrame) -> dict:
    base = closed[closed.condition == "none"].set_index("metric")
    ol = open_loop.set_index("condition")
    out: dict[str, Any] = {"closed_loop_baseline": {f"{m}_rate": base.loc[m, "value"]
                                                    for m in ("success", "collision", "timeout")}
                           | {"episodes": int(base.loc["success", "episodes"])}}
    heads = {}
    for mode in ("zero", "mean"):
        h, diffs = most_affecting_head(closed, net.attention_layer.heads, mode)
        heads[mode] = {"head": h, **diffs, "flip_rate": ol.loc[f"head{h}_{mode}", "flip_rate"]}
    out["head_ablation"] = heads
    out["branch_ablation"] = {
        mode: _diffs(closed, f"branch_{mode}") | {"flip_rate": ol.loc[f"branch_{mode}", "flip_rate"]}
        for mode in ("zero", "mean")}
    neurons = {}
    for layer in neuron_layers(net):
        rows = open_loop[open_loop.target == layer]
        top, rand = rows[rows["mode"] == "top"].iloc[0], rows[rows["mode"] != "top"]
        entry = {"top_flip_rate": top["flip_rate"], "random_flip_rate": rand["flip_rate"].mean(),
                 "top_abs_dq": top["abs_dq"], "random_abs_dq": rand["abs_dq"].mean()}
        top_c = _diffs(closed, top["condition"])
        rand_c = [_diffs(closed, c) for c in rand["condition"]]
        for metric in ("success", "collision"):
            entry[f"top_{metric}_diff"] = top_c[f"{metric}_diff"]
            entry[f"random_{metric}_diff"] = float(np.mean([r[f"{metric}_diff"] for r in rand_c]))
        neurons[_key(layer)] = entry
    out["neuron_ablation"] = neurons
    out["vehicle_removal"] = {
        target: _diffs(closed, f"vehicle_{target}") | {"flip_rate": ol.loc[f"vehicle_{target}", "flip_rate"],
                                                        "abs_dq": ol.loc[f"vehicle_{target}", "abs_dq"]}
        for target in ("most_attended", "random")}
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
    notebook = perturb[(perturb.direction == "uniform") & np.isclose(perturb["size"], NOTEBOOK_SIZE)]
    out["perturbation_notebook"] = {_key(r.layer): {"abs_dq": r.mean_abs_dq, "flip_rate": r.flip_rate}
                                    for r in notebook.itertuples()}
    edits: dict[str, Any] = {}
    for name, group in editing.groupby("edit", sort=True):
        entry = {}
        for r in group.itertuples():
            entry[r.measure] = r.value
            if isinstance(r.ci_low, float) and math.isfinite(r.ci_low):
                entry[f"{r.measure}_ci_low"], entry[f"{r.measure}_ci_high"] = r.ci_low, r.ci_high
        edits[name] = entry
    out["editing"] = edits
    return out


def write_csv(path: Path, table: pd.DataFrame) -> None:
    checkpoint.atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))


def main() -> None:
    params, seed = seed_args(__doc__)
    cfg = params.interventions
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    net = load_net(params, seed, "trained")
    with np.load(DATA / f"seed{seed}" / "rollouts_trained.npz") as data:
        arrays = {name: data[name] for name in data.files}
    obs = torch.as_tensor(arrays["obs"])
    out = seed_results(seed) / "interventions"

    conditions = ablation_conditions(net, arrays, obs, cfg, seed)
    facts = scene_facts(arrays["obs"], params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    try:
        brake: iv.BrakeEdit | None = iv.brake_edit(net, obs, iv.step_danger(facts), cfg.edit_ridge)
    except ValueError as err:          # the agent brakes in every recorded step: nothing to edit
        print(f"no rank-one edit: {err}")
        brake = None
    if brake is not None:
        conditions.append(Condition("edit_rank_one", "edit", brake.layer, "rank_one", edited=brake.net))
    open_rows = [open_loop_row(net, obs, c, cfg, seed) for c in tqdm(conditions, desc="open loop", unit="cond")]

    env_seeds = cfg.env_seeds
    envs = make_runner(params.env, min(cfg.num_envs, len(env_seeds)))
    try:
        tables, episodes, results = closed_loop(net, conditions, envs, env_seeds, None, cfg, seed)
        closed = pd.concat(tables, ignore_index=True)
        head, _ = most_affecting_head(closed, net.attention_layer.heads, "zero")
        scaled = Condition("edit_head_scale", "edit", f"head{head}", f"x{cfg.head_scale:g}",
                           edited=iv.scale_head_output(net, head, cfg.head_scale))
        more, more_episodes, _ = closed_loop(net, [scaled], envs, env_seeds, results["none"], cfg, seed)
    finally:
        envs.close()
    conditions.append(scaled)
    open_rows.append(open_loop_row(net, obs, scaled, cfg, seed))
    closed = pd.concat([closed, *more], ignore_index=True)
    open_loop = pd.DataFrame(open_rows)

    rows = []
    edits = [("edit_head_scale", f"scale head {head}'s output weights by {cfg.head_scale:g} (the head whose zero "
              "ablation changes closed-loop outcomes most)", {"head": head, "factor": cfg.head_scale},
              np.ones(len(obs), dtype=bool))]
    if brake is not None:
        edits.insert(0, ("edit_rank_one", "brake in the most dangerous recorded step where the agent did not",
                         {"step": brake.step, "source_step": brake.source,
                          "value_from_braking_step": int(brake.source >= 0)}, np.arange(len(obs)) != brake.step))
    for condition, goal, info, other in edits:
        edit = next(c for c in conditions if c.name == condition)
        effects = iv.open_loop_effects(net, obs, edited=edit.edited)
        if brake is not None and condition == "edit_rank_one":
            target = effects.iloc[brake.step]
            info |= {"target_action_before": int(target["action"]), "target_action_after": int(target["action_after"]),
                     "target_brakes": int(target["action_after"] == iv.SLOWER), "target_dm": float(target["dm"])}
        rows += edit_rows(condition, goal, info, effects, other, closed[closed.condition == condition])
    editing = pd.DataFrame(rows, columns=["edit", "goal", "measure", "value", "ci_low", "ci_high"])

    act, path = patching(net, arrays, obs, params)
    perturb = perturbation(net, arrays, obs, cfg, seed)
    tables = {"open_loop.csv": open_loop, "closed_loop.csv": closed,
              "closed_loop_episodes.csv": pd.concat([*episodes, *more_episodes], ignore_index=True),
              "patching.csv": act, "path_patching.csv": path, "perturbation.csv": perturb, "editing.csv": editing}
    for name, table in tables.items():
        write_csv(out / name, table)
    result = summary(net, open_loop, closed, act, path, perturb, editing)
    checkpoint.atomic_write_text(out / "summary.json", json_text(result))


if __name__ == "__main__":
    main()
