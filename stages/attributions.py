"""attributions@seed: integrated gradients, layer and neuron conductance, vehicle Shapley values,
deletion/insertion curves, attention vs attribution and vs scene facts, and the model-parameter
randomisation check, on evenly spaced recorded steps of the trained and the untrained network.

Baselines (named in every table): `others_zeroed` (others' kinematics 0, ego kept),
`typical_scene` (present others replaced by the typical recorded vehicle of that network's
rollouts, ego kept) and `typical_scene_ego` (the same with the ego replaced by the typical
recorded ego too: the only one that attributes anything to the ego row, used for conductance);
Shapley values and deletion/insertion remove vehicles (`ego_alone`)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from egolens import checkpoint
from egolens.analysis import attribution as attr
from egolens.artifacts import json_text
from egolens.config import Params
from egolens.model import EgoAttentionNetwork
from egolens.scene import scene_facts
from egolens.vocabulary import absent_mask, present_others
from stages import DATA, NETWORKS, load_net, seed_args, seed_results

QUANTITIES = ("q", "advantage")
ACTIONS = attr.ACTIONS
CONDUCTANCE_BASELINE = "typical_scene_ego"
LAYERS = ("ego_embedding.hook_post.1", "others_embedding.hook_post.1", "attention_layer.hook_resid",
          "output_layer.hook_post.0", "output_layer.hook_post.1")
CUTS = {"attention_layer.hook_resid": "hook_resid", "output_layer.hook_post.0": "output_hook_post_0",
        "output_layer.hook_post.1": "output_hook_post_1"}
"""Layers every path crosses (their conductances must add up to ΔQ) and their summary keys."""
REFINED_CUT = "attention_layer.hook_resid"
"""The cut whose completeness decides each step's kink grid; every other layer reuses it."""
ROWS = {"ego_embedding.hook_post.1": "ego", "others_embedding.hook_post.1": "others"}
"""Per-entity layers [B, R, D] and whose rows they hold."""
FACTS = ("ttc", "distance", "closing_speed")
MIN_DELTA = 1e-3          # |ΔQ| below which a completeness error is not computed (flagged `tiny`)
TOLERANCE = 0.01          # completeness error must be below 1% of |ΔQ|
ORDER_IG = "ig_others_zeroed"
OUTPUTS = ("ig_features", "ig_vehicles", "completeness", "layer_conductance", "neuron_conductance", "shapley",
           "curves", "curves_auc", "agreement", "attention_facts", "sanity")


@dataclass
class Steps:
    """The analysed recorded steps of one network's rollouts."""

    records: np.ndarray          # [B] rows of the rollouts npz
    episode: np.ndarray          # [N] of every record (to name steps)
    step: np.ndarray             # [N]
    obs: torch.Tensor            # [B, E, F]
    action: torch.Tensor         # [B] the recorded (greedy) action
    vehicle_id: np.ndarray       # [B, E]
    attention: np.ndarray        # [B, H, E] recorded attention
    reference: torch.Tensor      # [N, E, F] every recorded observation (typical-scene reference)

    def name(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Record index in `step` -> record, episode, step."""
        return attr.with_episode_steps(frame, self.episode, self.step)

    @property
    def present(self) -> torch.Tensor:
        return present_others(self.obs)

    @property
    def action_names(self) -> list[str]:
        return [ACTIONS[int(a)] for a in self.action]


def load_steps(params: Params, seed: int, label: str) -> Steps:
    with np.load(DATA / f"seed{seed}" / f"rollouts_{label}.npz") as arrays:
        obs = torch.from_numpy(arrays["obs"]).float()
        records = attr.select_steps(len(obs), params.attributions.max_steps)
        return Steps(records, arrays["episode"], arrays["step"], obs[records],
                     torch.from_numpy(arrays["action"][records]).long(), arrays["vehicle_id"][records],
                     arrays["attention"][records], obs)


def make_baselines(steps: Steps) -> dict[str, torch.Tensor]:
    return {"others_zeroed": attr.others_zeroed(steps.obs),
            "typical_scene": attr.typical_scene(steps.obs, steps.reference),
            "typical_scene_ego": attr.typical_scene(steps.obs, steps.reference, replace_ego=True)}


class Analysis:
    """Every table of one network on its steps; `ig[(baseline, quantity)]` is [A, B, E, F]."""

    def __init__(self, params: Params, seed: int, label: str, net: EgoAttentionNetwork, steps: Steps) -> None:
        self.cfg, self.seed, self.label, self.net, self.steps = params.attributions, seed, label, net, steps
        self.baselines = make_baselines(steps)
        # each baseline's path kinks, shared by every action, quantity and layer attributed along it
        self.kinks = {name: attr.paths.PathKinks(net, steps.obs, base, absent_mask(steps.obs),
                                                 params.attributions.internal_batch_size)
                      for name, base in self.baselines.items()}
        self.ig: dict[tuple[str, str], torch.Tensor] = {}
        self.tables: dict[str, list[pd.DataFrame]] = {}
        self.desc = f"attributions seed {seed} {label}"

    def add(self, name: str, table: pd.DataFrame) -> None:
        """Keep a table; its record indices (`step`) become record, episode, step."""
        self.tables.setdefault(name, []).append(self.steps.name(table) if "step" in table.columns else table)

    def integrated_gradients(self) -> None:
        cfg, s = self.cfg, self.steps
        jobs = list(product(self.baselines, QUANTITIES, range(len(ACTIONS))))
        per_action: dict[tuple[str, str], list[torch.Tensor]] = {}
        for baseline, quantity, action in tqdm(jobs, desc=f"{self.desc}: IG", unit="call"):
            base, advantage = self.baselines[baseline], quantity == "advantage"
            refined = attr.kink_aware_integrated_gradients(
                self.net, s.obs, action, base, cfg.path_grid, cfg.path_grid_max, cfg.segment_points,
                cfg.internal_batch_size, advantage=advantage, tolerance=TOLERANCE, min_delta=MIN_DELTA,
                kinks=self.kinks[baseline])
            ig = refined.attr
            per_action.setdefault((baseline, quantity), []).append(ig)
            labels = {"model": self.label, "method": "ig", "layer": "input", "baseline": baseline,
                      "quantity": quantity, "action": ACTIONS[action]}
            self.add("completeness", attr.completeness_table(
                self.net, s.obs, base, ig, action, advantage=advantage,
                min_delta=MIN_DELTA, tolerance=TOLERANCE, step_ids=s.records, labels=labels, points=refined.points))
            self.add("ig_features", attr.feature_summary(ig, s.obs, labels={
                "model": self.label, "baseline": baseline, "quantity": quantity, "action": ACTIONS[action]}))
        for (baseline, quantity), igs in per_action.items():
            self.ig[baseline, quantity] = torch.stack(igs)
            _, vehicles = attr.attribution_table(attr.chosen(self.ig[baseline, quantity], s.action), s.obs, s.records,
                                                 s.action_names, baseline, self.label, quantity=quantity,
                                                 vehicle_ids=s.vehicle_id)
            self.add("ig_vehicles", vehicles)

    def ig_vehicles(self, baseline: str = "others_zeroed", quantity: str = "q") -> torch.Tensor:
        """[B, E] IG vehicle attribution of the chosen action."""
        return attr.vehicle_attribution(attr.chosen(self.ig[baseline, quantity], self.steps.action))

    def conductance(self) -> None:
        cfg, s, base = self.cfg, self.steps, self.baselines[CONDUCTANCE_BASELINE]
        # the output MLP's input first, its kinks refined per step until complete; every other layer
        # (the later cuts included, whose completeness is still checked) reuses its kink grids
        jobs = list(product(range(len(ACTIONS)), [REFINED_CUT, *(layer for layer in LAYERS if layer != REFINED_CUT)]))
        per_action: dict[str, list[torch.Tensor | None]] = {layer: [None] * len(ACTIONS) for layer in LAYERS}
        grids: dict[int, torch.Tensor] = {}
        points: dict[int, torch.Tensor] = {}
        for action, layer in tqdm(jobs, desc=f"{self.desc}: layer conductance", unit="call"):
            labels = {"model": self.label, "layer": layer, "baseline": CONDUCTANCE_BASELINE, "quantity": "q"}
            if layer == REFINED_CUT:
                refined = attr.kink_aware_layer_conductance(
                    self.net, s.obs, layer, action, base, cfg.path_grid, cfg.path_grid_max, cfg.segment_points,
                    cfg.internal_batch_size, tolerance=TOLERANCE, min_delta=MIN_DELTA,
                    kinks=self.kinks[CONDUCTANCE_BASELINE])
                cond, grids[action], points[action] = refined.attr, refined.grid, refined.points
            else:
                cond = attr.layer_conductance_on_grids(self.net, s.obs, layer, action, base, grids[action],
                                                       cfg.segment_points, cfg.internal_batch_size,
                                                       kinks=self.kinks[CONDUCTANCE_BASELINE])
            if layer in CUTS:
                self.add("completeness", attr.completeness_table(
                    self.net, s.obs, base, cond, action, min_delta=MIN_DELTA, tolerance=TOLERANCE,
                    step_ids=s.records, points=points[action],
                    labels={"model": self.label, "method": "layer_conductance", **labels,
                            "action": ACTIONS[action]}))
            per_action[layer][action] = cond
            self.add("layer_conductance", attr.conductance_table(cond, {**labels, "action": ACTIONS[action]}))
        jobs = []
        for layer in LAYERS:
            cond = attr.chosen(torch.stack(per_action[layer]), s.action)
            self.add("layer_conductance", attr.conductance_table(cond, {
                "model": self.label, "layer": layer, "baseline": CONDUCTANCE_BASELINE, "quantity": "q",
                "action": "chosen"}))
            jobs += [(layer, rank, neuron) for rank, neuron in enumerate(attr.top_neurons(cond, cfg.top_neurons))]
        for layer, rank, neuron in tqdm(jobs, desc=f"{self.desc}: neuron conductance", unit="neuron"):
            # a fixed grid (captum's NeuronConductance): it only breaks a top neuron's conductance
            # down over input features; the neuron's total is the layer conductance above
            kwargs = {"internal_batch_size": cfg.internal_batch_size, "method": "gausslegendre"}
            if layer in ROWS:
                rows = s.present[:, 1:] if ROWS[layer] == "others" else torch.ones(len(s.obs), 1, dtype=torch.bool)
                nc = attr.neuron_conductance_by_rows(self.net, s.obs, layer, neuron, s.action, base, rows,
                                                     cfg.neuron_steps, **kwargs)
            else:
                nc = attr.neuron_conductance(self.net, s.obs, layer, neuron, s.action, base, cfg.neuron_steps, **kwargs)
            self.add("neuron_conductance", attr.feature_summary(nc, s.obs, value_name="conductance", labels={
                "model": self.label, "layer": layer, "neuron": neuron, "rank": rank,
                "baseline": CONDUCTANCE_BASELINE, "quantity": "q", "action": "chosen"}))

    def shapley(self) -> torch.Tensor:
        s = self.steps
        phi = attr.shapley_vehicles(self.net, s.obs, s.action, self.cfg.shapley_samples, seed=self.seed)
        efficiency = attr.completeness_table(self.net, s.obs, attr.ego_alone(s.obs), phi, s.action, fix_mask=False,
                                             min_delta=MIN_DELTA, tolerance=TOLERANCE, step_ids=s.records)
        self.add("shapley_efficiency", efficiency.assign(model=self.label))
        self.add("shapley", attr.vehicle_table(
            phi, s.obs, value_name="shapley", step_ids=s.records, vehicle_ids=s.vehicle_id,
            step_columns={"action": s.action_names, "delta_q": efficiency["delta_f"],
                          "efficiency_abs_error": efficiency["abs_error"],
                          "efficiency_rel_error": efficiency["rel_error"]},
            labels={"model": self.label, "baseline": "ego_alone", "quantity": "q"}))
        return phi

    def curves(self, phi: torch.Tensor) -> None:
        s = self.steps
        orders = [(ORDER_IG, 0, attr.attribution_order(self.ig_vehicles(), s.present)),
                  ("shapley", 0, attr.attribution_order(phi, s.present))]
        orders += [("random", r, attr.random_order(s.present, 1000 * self.seed + r))
                   for r in range(self.cfg.random_orders)]
        for name, repeat, order in tqdm(orders, desc=f"{self.desc}: deletion/insertion", unit="order"):
            curves = attr.deletion_insertion_curves(self.net, s.obs, order, order_name=name, step_ids=s.records,
                                                    labels={"model": self.label, "repeat": repeat})
            self.add("curves", curves)
            self.add("curves_auc", attr.curve_auc(curves))

    def agreement(self, phi: torch.Tensor) -> None:
        s = self.steps
        explanations = [("ig", baseline, quantity, self.ig_vehicles(baseline, quantity))
                        for baseline, quantity in self.ig]
        explanations.append(("shapley", "ego_alone", "q", phi))
        for method, baseline, quantity, values in explanations:
            self.add("agreement", attr.attention_attribution_agreement(
                s.attention, values, ~absent_mask(s.obs), step_ids=s.records,
                labels={"model": self.label, "attribution": method, "baseline": baseline, "quantity": quantity}))

    def attention_facts(self, params: Params) -> None:
        s, scene = self.steps, params.scene
        facts = scene_facts(s.obs.numpy(), params.env, scene.horizon, scene.collision_radius, scene.min_ego_speed)
        facts = {name: facts[name] for name in FACTS}
        pooled = attr.attention_vs_fact(s.attention, facts, level="pooled",
                                        labels={"model": self.label, "statistic": "pooled"})
        per_step = attr.attention_vs_fact(s.attention, facts, level="step", step_ids=s.records,
                                          labels={"model": self.label})
        self.add("attention_facts", pooled)
        self.add("attention_facts", attr.step_summary(per_step, ["model", "head", "fact"], "spearman"))

    def run(self, params: Params) -> torch.Tensor:
        self.integrated_gradients()
        self.conductance()
        phi = self.shapley()
        self.curves(phi)
        self.agreement(phi)
        self.attention_facts(params)
        return phi


def sanity(trained: Analysis, phi_trained: torch.Tensor, untrained_net: EgoAttentionNetwork,
           params: Params) -> list[pd.DataFrame]:
    """Trained vs untrained explanations of the same (the trained network's) steps and actions."""
    cfg, s = params.attributions, trained.steps
    check = {"threshold": cfg.sanity_threshold, "step_ids": s.records}
    tables = []
    for baseline, base in tqdm(trained.baselines.items(), desc=f"{trained.desc}: sanity", unit="baseline"):
        ig_u = attr.kink_aware_integrated_gradients(untrained_net, s.obs, s.action, base, cfg.path_grid,
                                                    cfg.path_grid_max, cfg.segment_points, cfg.internal_batch_size,
                                                    tolerance=TOLERANCE, min_delta=MIN_DELTA).attr
        ig_t = attr.chosen(trained.ig[baseline, "q"], s.action)
        moved = attr.changed_entries(s.obs, base)
        for level, t, u, keep in (("feature", ig_t, ig_u, moved),
                                  ("vehicle", attr.vehicle_attribution(ig_t), attr.vehicle_attribution(ig_u),
                                   moved.any(-1))):
            tables.append(attr.with_randomisation_flags(*attr.randomisation_check(
                t, u, keep=keep, **check, labels={"explanation": "ig", "baseline": baseline, "level": level})))
    phi_u = attr.shapley_vehicles(untrained_net, s.obs, s.action, cfg.shapley_samples, seed=trained.seed)
    tables.append(attr.with_randomisation_flags(*attr.randomisation_check(
        phi_trained, phi_u, keep=s.present, **check,
        labels={"explanation": "shapley", "baseline": "ego_alone", "level": "vehicle"})))
    with torch.no_grad():
        attention_u = untrained_net.get_attention_matrix(s.obs)[:, :, 0]
    for h in range(attention_u.shape[1]):
        tables.append(attr.with_randomisation_flags(*attr.randomisation_check(
            s.attention[:, h], attention_u[:, h], keep=s.present, **check,
            labels={"explanation": f"attention_head{h}", "baseline": "none", "level": "vehicle"})))
    return [s.name(table) for table in tables]


def model_summary(tables: dict[str, pd.DataFrame], label: str) -> dict:
    """The headline numbers of one network from its tables."""
    def rows(name: str, **where) -> pd.DataFrame:
        table = tables[name]
        table = table[table["model"] == label]
        for column, value in where.items():
            table = table[table[column] == value]
        return table

    completeness = {baseline: {quantity: attr.completeness_stats(rows("completeness", method="ig", baseline=baseline,
                                                                      quantity=quantity))
                               for quantity in QUANTITIES}
                    for baseline in ("others_zeroed", "typical_scene", "typical_scene_ego")}
    conductance = {key: attr.completeness_stats(rows("completeness", method="layer_conductance", layer=layer))
                   for layer, key in CUTS.items()}
    efficiency = rows("shapley_efficiency")
    agreement = {}
    for method, baseline in (("ig", "others_zeroed"), ("shapley", "ego_alone")):
        table = rows("agreement", attribution=method, baseline=baseline, quantity="q")
        means = {value: attr.step_summary(table, ["head"], value)
                 .query("statistic == 'step_mean'").set_index("head") for value in ("spearman", "top1_match")}
        agreement[method] = {f"head{h}": {"spearman_mean": means["spearman"].loc[h, "spearman"],
                                          "n_steps": means["spearman"].loc[h, "n"],
                                          "top1_rate": means["top1_match"].loc[h, "top1_match"]}
                             for h in means["spearman"].index}
    auc = attr.step_summary(rows("curves_auc"), ["order", "curve"], "auc_q")
    auc = auc[auc["statistic"] == "step_mean"].set_index(["curve", "order"])["auc_q"]
    curves = {f"{curve}_auc_q": {order: float(auc.loc[(curve, order)]) for order in (ORDER_IG, "shapley", "random")}
              for curve in ("deletion", "insertion")}
    facts = rows("attention_facts").set_index(["head", "fact", "statistic"])["spearman"]
    attention = {f"head{h}": {fact: {statistic: float(facts.loc[(h, fact, statistic)])
                                     for statistic in ("pooled", "step_mean")} for fact in FACTS}
                 for h in sorted(rows("attention_facts")["head"].unique())}
    return {"ig_completeness": completeness,
            "conductance_completeness": conductance,
            "shapley_efficiency": {k: v for k, v in attr.completeness_stats(efficiency).items()
                                   if k in ("max_abs_error", "median_rel_error", "max_rel_error", "n_tiny")},
            "agreement": agreement, **curves, "attention_facts": attention}


def sanity_summary(table: pd.DataFrame) -> dict:
    out: dict = {}
    for (explanation, baseline, level), group in table.groupby(["explanation", "baseline", "level"], sort=True):
        first = group.iloc[0]
        key = explanation if baseline == "none" else f"{explanation}_{baseline}"
        out.setdefault(key, {})[level] = {
            "median_spearman": first["median_spearman"], "median_spearman_abs": first["median_spearman_abs"],
            "flagged": bool(first["flagged"]), "flagged_abs": bool(first["flagged_abs"])}
    return out


def analyse(params: Params, seed: int, label: str) -> dict[str, list[pd.DataFrame]]:
    """Every table of one network's analysis (the trained one's with the randomisation check)."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = load_net(params, seed, label)
    analysis = Analysis(params, seed, label, net, load_steps(params, seed, label))
    phi = analysis.run(params)
    tables = dict(analysis.tables)
    if label == "trained":
        tables["sanity"] = sanity(analysis, phi, load_net(params, seed, "untrained"), params)
    return tables


def main() -> None:
    params, seed = seed_args(__doc__)
    out = seed_results(seed) / "attributions"
    # The two networks' analyses are independent (every random draw is seeded inside them): one
    # process each, so the stage uses both cores. The results do not depend on it.
    with ProcessPoolExecutor(max_workers=len(NETWORKS), mp_context=mp.get_context("fork")) as pool:
        jobs = {label: pool.submit(analyse, params, seed, label) for label in NETWORKS}
        per_label = {label: job.result() for label, job in jobs.items()}
    sanity_table = pd.concat(per_label["trained"].pop("sanity"), ignore_index=True)
    tables = {name: pd.concat([t for label in NETWORKS for t in per_label[label].get(name, [])], ignore_index=True)
              for name in per_label["trained"]}
    tables["sanity"] = sanity_table
    for name in OUTPUTS:
        checkpoint.atomic_write_text(out / f"{name}.csv", tables[name].to_csv(index=False, float_format="%.6g"))
    summary = {label: model_summary(tables, label) for label in NETWORKS}
    summary["sanity"] = sanity_summary(sanity_table)
    checkpoint.atomic_write_text(out / "summary.json", json_text(summary))


if __name__ == "__main__":
    main()
