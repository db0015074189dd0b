"""The attributions study of one network: integrated gradients, layer and neuron conductance, vehicle
Shapley values, deletion/insertion curves, attention vs attribution and vs scene facts and (for
the trained network) the model-parameter randomisation check, on evenly spaced recorded steps.

Baselines (named in every table): `others_zeroed` (others' kinematics 0, ego kept),
`typical_scene` (present others replaced by the typical recorded vehicle of that network's
rollouts, ego kept) and `typical_scene_ego` (the same with the ego replaced by the typical
recorded ego too: the only one that attributes anything to the ego row, used for conductance);
Shapley values and deletion/insertion remove vehicles (`ego_alone`).

No file I/O: the caller hands in the network and its recorded rollouts and writes the tables
(`combine` joins the networks' tables; `attribution_summary.summarize` reads them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from egolens.analysis.attribution import paths, schemes
from egolens.analysis.attribution.attribution_tables import (
    attribution_table,
    chosen,
    feature_summary,
    select_steps,
    step_summary,
    vehicle_attribution,
    vehicle_table,
    with_episode_steps,
)
from egolens.analysis.attribution.baselines import changed_entries, ego_alone, others_zeroed, typical_scene
from egolens.analysis.attribution.conductance import (
    conductance_table,
    layer_conductance,
    neuron_conductance,
    neuron_ranking,
)
from egolens.analysis.attribution.faithfulness import (
    attribution_order,
    completeness_table,
    curve_auc,
    deletion_insertion_curves,
    random_order,
    randomisation_check,
    with_randomisation_flags,
)
from egolens.analysis.attribution.gradients import integrated_gradients
from egolens.analysis.attribution.shapley import shapley_vehicles
from egolens.analysis.reading.attention_agreement import attention_attribution_agreement, attention_vs_fact
from egolens.analysis_config import AttributionsConfig, SceneConfig
from egolens.config import EnvConfig
from egolens.hooks import activation_names
from egolens.scene import scene_facts
from egolens.vocabulary import ACTIONS, absent_mask, present_others

QUANTITIES = ("q", "advantage")
"""What integrated gradients explain: Q(s, a) and the advantage Q(s, a) − mean_a Q(s, ·)."""
BASELINES = ("others_zeroed", "typical_scene", "typical_scene_ego")
CONDUCTANCE_BASELINE = "typical_scene_ego"
FACTS = ("ttc", "distance", "closing_speed")
"""Scene facts (`egolens.scene.scene_facts`) the attention is ranked against."""
ORDER_IG = "ig_others_zeroed"
"""Name of the deletion/insertion order by |IG| (others_zeroed baseline, Q of the chosen action)."""
OUTPUTS = ("ig_features", "ig_vehicles", "completeness", "layer_conductance", "neuron_ranking", "neuron_conductance",
           "shapley", "curves", "curves_auc", "agreement", "attention_facts", "sanity")
"""The tables the attributions stage writes (one CSV each)."""


@dataclass
class Steps:
    """The analysed recorded steps of one network's rollouts."""

    records: np.ndarray          # [B] rows of the rollouts
    episode: np.ndarray          # [N] of every record (to name steps)
    step: np.ndarray             # [N]
    obs: torch.Tensor            # [B, E, F]
    action: torch.Tensor         # [B] the recorded (greedy) action
    vehicle_id: np.ndarray       # [B, E]
    attention: np.ndarray        # [B, H, E] recorded attention
    reference: torch.Tensor      # [N, E, F] every recorded observation (typical-scene reference)

    @classmethod
    def from_rollouts(cls, arrays: Mapping[str, np.ndarray], max_steps: int) -> Steps:
        """`max_steps` evenly spaced records (`select_steps`) of recorded rollouts (arrays obs,
        episode, step, action, vehicle_id, attention of `egolens.rollout`)."""
        obs = torch.from_numpy(arrays["obs"]).float()
        records = select_steps(len(obs), max_steps)
        return cls(records, arrays["episode"], arrays["step"], obs[records],
                   torch.from_numpy(arrays["action"][records]).long(), arrays["vehicle_id"][records],
                   arrays["attention"][records], obs)

    def name(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Record index in `step` -> record, episode, step."""
        return with_episode_steps(frame, self.episode, self.step)

    @property
    def present(self) -> torch.Tensor:
        return present_others(self.obs)

    @property
    def action_names(self) -> list[str]:
        return [ACTIONS[int(a)] for a in self.action]


def make_baselines(steps: Steps) -> dict[str, torch.Tensor]:
    """Every baseline of `BASELINES` for the steps, [B, E, F] each."""
    return {"others_zeroed": others_zeroed(steps.obs),
            "typical_scene": typical_scene(steps.obs, steps.reference),
            "typical_scene_ego": typical_scene(steps.obs, steps.reference, replace_ego=True)}


@dataclass(frozen=True)
class Layers:
    """The named activations conductance is computed at, read off the network's modules."""

    analysed: tuple[str, ...]    # every layer given a conductance table
    cuts: tuple[str, ...]        # layers every path crosses: their conductances must add up to ΔQ
    refined: str                 # the cut whose completeness decides each step's kink grid
    rows: dict[str, str]         # per-entity layers [B, R, D] -> whose rows they hold ("ego" | "others")

    @classmethod
    def of(cls, net: nn.Module) -> Layers:
        """Every hidden layer of each embedding (`hook_post.i`, post-ReLU), the output MLP's input
        (`attention_layer.hook_resid`) and every hidden layer of the output MLP."""
        names = activation_names(net)

        def hidden(mlp: str) -> list[str]:
            return [name for name in names if name.startswith(f"{mlp}.hook_post.")]

        ego, others, resid = hidden("ego_embedding"), hidden("others_embedding"), "attention_layer.hook_resid"
        output = tuple(hidden("output_layer"))
        rows = {layer: "ego" for layer in ego} | {layer: "others" for layer in others}
        return cls((*ego, *others, resid, *output), (resid, *output), resid, rows)


def kink_cut(cfg: AttributionsConfig) -> schemes.KinkCut:
    """The path methods' scheme of the study: kinks on `path_grid` points, refined up to `path_grid_max`."""
    return schemes.KinkCut(cfg.path_grid, cfg.path_grid_max, cfg.segment_points, cfg.internal_batch_size,
                           cfg.tolerance, cfg.min_delta)


class NetworkAnalysis:
    """Every table of one network on its steps; `ig[(baseline, quantity)]` is [A, B, E, F].

    `run()` fills `tables` (name -> list of DataFrames, record indices named by episode and step);
    `randomisation(untrained)` adds the trained-vs-untrained check of the same steps.
    """

    def __init__(self, net: nn.Module, steps: Steps, cfg: AttributionsConfig, env: EnvConfig, scene: SceneConfig,
                 *, seed: int, label: str) -> None:
        self.net, self.steps, self.cfg, self.env, self.scene = net, steps, cfg, env, scene
        self.seed, self.label = seed, label
        self.layers = Layers.of(net)
        self.baselines = make_baselines(steps)
        # each baseline's path kinks, shared by every action, quantity and layer attributed along it
        self.kinks = {name: paths.PathKinks(net, steps.obs, base, absent_mask(steps.obs), cfg.internal_batch_size)
                      for name, base in self.baselines.items()}
        self.scheme = kink_cut(cfg)
        self.ig: dict[tuple[str, str], torch.Tensor] = {}
        self.phi: torch.Tensor | None = None
        self.tables: dict[str, list[pd.DataFrame]] = {}
        self.desc = f"attributions seed {seed} {label}"

    def add(self, name: str, table: pd.DataFrame) -> None:
        """Keep a table; its record indices (`step`) become record, episode, step."""
        self.tables.setdefault(name, []).append(self.steps.name(table) if "step" in table.columns else table)

    def run(self) -> dict[str, list[pd.DataFrame]]:
        self.integrated_gradients()
        self.conductance()
        self.phi = self.shapley()
        self.curves(self.phi)
        self.agreement(self.phi)
        self.attention_facts()
        return self.tables

    def _completeness(self, baseline: torch.Tensor, attr: torch.Tensor, action: int | torch.Tensor,
                      **kwargs: object) -> pd.DataFrame:
        cfg = self.cfg
        return completeness_table(self.net, self.steps.obs, baseline, attr, action, min_delta=cfg.min_delta,
                                  tolerance=cfg.tolerance, step_ids=self.steps.records, **kwargs)

    def integrated_gradients(self) -> None:
        s = self.steps
        jobs = list(product(self.baselines, QUANTITIES, range(len(ACTIONS))))
        per_action: dict[tuple[str, str], list[torch.Tensor]] = {}
        for baseline, quantity, action in tqdm(jobs, desc=f"{self.desc}: IG", unit="call"):
            base, advantage = self.baselines[baseline], quantity == "advantage"
            refined = integrated_gradients(self.net, s.obs, base, action, self.scheme, advantage=advantage,
                                           kinks=self.kinks[baseline])
            ig = refined.attr
            per_action.setdefault((baseline, quantity), []).append(ig)
            labels = {"model": self.label, "method": "ig", "layer": "input", "baseline": baseline,
                      "quantity": quantity, "action": ACTIONS[action]}
            self.add("completeness", self._completeness(base, ig, action, advantage=advantage, labels=labels,
                                                        points=refined.points))
            self.add("ig_features", feature_summary(ig, s.obs, labels={
                "model": self.label, "baseline": baseline, "quantity": quantity, "action": ACTIONS[action]}))
        for (baseline, quantity), igs in per_action.items():
            self.ig[baseline, quantity] = torch.stack(igs)
            _, vehicles = attribution_table(chosen(self.ig[baseline, quantity], s.action), s.obs, s.records,
                                            s.action_names, baseline, self.label, quantity=quantity,
                                            vehicle_ids=s.vehicle_id)
            self.add("ig_vehicles", vehicles)

    def ig_vehicles(self, baseline: str = "others_zeroed", quantity: str = "q") -> torch.Tensor:
        """[B, E] IG vehicle attribution of the chosen action."""
        return vehicle_attribution(chosen(self.ig[baseline, quantity], self.steps.action))

    def conductance(self) -> None:
        cfg, s, base, layers = self.cfg, self.steps, self.baselines[CONDUCTANCE_BASELINE], self.layers
        # the refined cut first, its kinks refined per step until complete; every other layer
        # (the later cuts included, whose completeness is still checked) reuses its kink grids
        order = [layers.refined, *(layer for layer in layers.analysed if layer != layers.refined)]
        jobs = list(product(range(len(ACTIONS)), order))
        per_action: dict[str, list[torch.Tensor | None]] = {layer: [None] * len(ACTIONS) for layer in layers.analysed}
        grids: dict[int, torch.Tensor] = {}
        points: dict[int, torch.Tensor] = {}
        for action, layer in tqdm(jobs, desc=f"{self.desc}: layer conductance", unit="call"):
            labels = {"model": self.label, "layer": layer, "baseline": CONDUCTANCE_BASELINE, "quantity": "q"}
            scheme = self.scheme if layer == layers.refined else self.scheme.on_grids(grids[action])
            result = layer_conductance(self.net, layer, s.obs, base, action, scheme,
                                       kinks=self.kinks[CONDUCTANCE_BASELINE])
            cond = result.attr
            if layer == layers.refined:
                grids[action], points[action] = result.grid, result.points
            if layer in layers.cuts:
                self.add("completeness", self._completeness(base, cond, action, points=points[action], labels={
                    "model": self.label, "method": "layer_conductance", **labels, "action": ACTIONS[action]}))
            per_action[layer][action] = cond
            self.add("layer_conductance", conductance_table(cond, {**labels, "action": ACTIONS[action]}))
        neurons = []
        for layer in layers.analysed:
            cond = chosen(torch.stack(per_action[layer]), s.action)
            self.add("layer_conductance", conductance_table(cond, {
                "model": self.label, "layer": layer, "baseline": CONDUCTANCE_BASELINE, "quantity": "q",
                "action": "chosen"}))
            ranking = neuron_ranking(cond, {"model": self.label, "layer": layer})
            self.add("neuron_ranking", ranking)
            top = ranking["neuron"].head(cfg.top_neurons)
            neurons += [(layer, rank, int(neuron)) for rank, neuron in enumerate(top)]
        for layer, rank, neuron in tqdm(neurons, desc=f"{self.desc}: neuron conductance", unit="neuron"):
            # a fixed grid (captum's NeuronConductance): it only breaks a top neuron's conductance
            # down over input features; the neuron's total is the layer conductance above
            rows = None if layer not in layers.rows else (
                s.present[:, 1:] if layers.rows[layer] == "others" else torch.ones(len(s.obs), 1, dtype=torch.bool))
            nc = neuron_conductance(self.net, layer, neuron, s.obs, base, s.action, schemes.FixedGrid(
                cfg.neuron_steps, "gausslegendre", cfg.internal_batch_size), rows=rows)
            self.add("neuron_conductance", feature_summary(nc, s.obs, value_name="conductance", labels={
                "model": self.label, "layer": layer, "neuron": neuron, "rank": rank,
                "baseline": CONDUCTANCE_BASELINE, "quantity": "q", "action": "chosen"}))

    def shapley(self) -> torch.Tensor:
        """Vehicle Shapley values of the chosen action [B, E], with their efficiency check."""
        s = self.steps
        phi = shapley_vehicles(self.net, s.obs, s.action, self.cfg.shapley_samples, seed=self.seed)
        efficiency = self._completeness(ego_alone(s.obs), phi, s.action, fix_mask=False)
        self.add("shapley_efficiency", efficiency.assign(model=self.label))
        self.add("shapley", vehicle_table(
            phi, s.obs, value_name="shapley", step_ids=s.records, vehicle_ids=s.vehicle_id,
            step_columns={"action": s.action_names, "delta_q": efficiency["delta_f"],
                          "efficiency_abs_error": efficiency["abs_error"],
                          "efficiency_rel_error": efficiency["rel_error"]},
            labels={"model": self.label, "baseline": "ego_alone", "quantity": "q"}))
        return phi

    def curves(self, phi: torch.Tensor) -> None:
        s = self.steps
        orders = [(ORDER_IG, 0, attribution_order(self.ig_vehicles(), s.present)),
                  ("shapley", 0, attribution_order(phi, s.present))]
        orders += [("random", r, random_order(s.present, 1000 * self.seed + r)) for r in range(self.cfg.random_orders)]
        for name, repeat, order in tqdm(orders, desc=f"{self.desc}: deletion/insertion", unit="order"):
            curves = deletion_insertion_curves(self.net, s.obs, order, order_name=name, step_ids=s.records,
                                               labels={"model": self.label, "repeat": repeat})
            self.add("curves", curves)
            self.add("curves_auc", curve_auc(curves))

    def agreement(self, phi: torch.Tensor) -> None:
        s = self.steps
        explanations = [("ig", baseline, quantity, self.ig_vehicles(baseline, quantity))
                        for baseline, quantity in self.ig]
        explanations.append(("shapley", "ego_alone", "q", phi))
        for method, baseline, quantity, values in explanations:
            self.add("agreement", attention_attribution_agreement(
                s.attention, values, ~absent_mask(s.obs), min_vehicles=self.cfg.min_vehicles, step_ids=s.records,
                labels={"model": self.label, "attribution": method, "baseline": baseline, "quantity": quantity}))

    def attention_facts(self) -> None:
        s, scene = self.steps, self.scene
        facts = scene_facts(s.obs.numpy(), self.env, scene.horizon, scene.collision_radius, scene.min_ego_speed)
        facts = {name: facts[name] for name in FACTS}
        pooled = attention_vs_fact(s.attention, facts, level="pooled", min_vehicles=self.cfg.min_vehicles,
                                   labels={"model": self.label, "statistic": "pooled"})
        per_step = attention_vs_fact(s.attention, facts, level="step", min_vehicles=self.cfg.min_vehicles,
                                     step_ids=s.records, labels={"model": self.label})
        self.add("attention_facts", pooled)
        self.add("attention_facts", step_summary(per_step, ["model", "head", "fact"], "spearman"))

    def randomisation(self, untrained: nn.Module) -> None:
        """Table `sanity`: this (trained) network's explanations of its steps and actions vs those of
        `untrained` (same architecture, initial weights). Needs `run()` first."""
        if self.phi is None:
            raise RuntimeError("run() the analysis before its randomisation check")
        cfg, s = self.cfg, self.steps
        check = {"threshold": cfg.sanity_threshold, "step_ids": s.records}
        tables = []
        for baseline, base in tqdm(self.baselines.items(), desc=f"{self.desc}: sanity", unit="baseline"):
            ig_u = integrated_gradients(untrained, s.obs, base, s.action, self.scheme).attr
            ig_t = chosen(self.ig[baseline, "q"], s.action)
            moved = changed_entries(s.obs, base)
            for level, t, u, keep in (("feature", ig_t, ig_u, moved),
                                      ("vehicle", vehicle_attribution(ig_t), vehicle_attribution(ig_u),
                                       moved.any(-1))):
                tables.append(with_randomisation_flags(*randomisation_check(
                    t, u, keep=keep, **check, labels={"explanation": "ig", "baseline": baseline, "level": level})))
        phi_u = shapley_vehicles(untrained, s.obs, s.action, cfg.shapley_samples, seed=self.seed)
        tables.append(with_randomisation_flags(*randomisation_check(
            self.phi, phi_u, keep=s.present, **check,
            labels={"explanation": "shapley", "baseline": "ego_alone", "level": "vehicle"})))
        with torch.no_grad():
            attention_u = untrained.get_attention_matrix(s.obs)[:, :, 0]
        for h in range(attention_u.shape[1]):
            tables.append(with_randomisation_flags(*randomisation_check(
                s.attention[:, h], attention_u[:, h], keep=s.present, **check,
                labels={"explanation": f"attention_head{h}", "baseline": "none", "level": "vehicle"})))
        for table in tables:
            self.add("sanity", table)


def combine(per_network: Mapping[str, Mapping[str, list[pd.DataFrame]]]) -> dict[str, pd.DataFrame]:
    """The networks' tables ({label: NetworkAnalysis.tables}) as one DataFrame per name, the
    networks in the order given."""
    names = dict.fromkeys(name for tables in per_network.values() for name in tables)
    return {name: pd.concat([t for tables in per_network.values() for t in tables.get(name, [])], ignore_index=True)
            for name in names}
