"""The neurons stage's work on one network: its layers read from a recording, the neuron and lens
tables, and the feature visualisations (targets chosen, observations optimised, figures drawn).

`network_tables` returns the tables (one CSV each, rows labelled by `model`) and the figures
(keyed by their path relative to the stage's output directory); `neuron_stats.summarize` turns the
tables of every network into summary.json. No file I/O: the stage loads the network and the
recorded rollout and writes what comes back.

A recording is `egolens.rollout`'s arrays: obs [N, E, F], action [N], q [N, A], episode and step
[N], vehicle_id [N, E], attention, and the activations by name (`output_layer.hook_post.0` [N, U],
`others_embedding.hook_post.1` [N, E-1, U], the pre-activations `output_layer.layers.0`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from egolens.analysis.reading import feature_visualisation, lens, neuron_dictionary, neuron_facts, neuron_stats
from egolens.analysis_config import NeuronsConfig
from egolens.config import AgentConfig, Params
from egolens.model import EgoAttentionNetwork
from egolens.progress import Progress, no_progress
from egolens.scene import scene_facts
from egolens.sites import OUTPUT_MLP, neuron_sites, site
from egolens.vocabulary import ACTIONS, PRESENT_AT

CHOICE_FACTS = ("ego_speed", "nearest_distance", "min_ttc")
"""Scene facts (not Q-values or the action) whose correlation picks output neurons to visualise."""

@dataclass
class Layer:
    """One layer of one network: acts [M, U] aligned with facts (M rows) and keys (episode, step,
    row, vehicle_id per row; row and vehicle_id <NA> for step-level layers)."""

    name: str
    per_vehicle: bool
    acts: np.ndarray
    facts: pd.DataFrame
    keys: pd.DataFrame


def layer_names(agent: AgentConfig) -> dict[str, bool]:
    """{layer: per_vehicle} for the embeddings' and the output MLP's neurons (post-ReLU)."""
    return {s.name: s.per_vehicle for s in neuron_sites(len(agent.embedding_layers), len(agent.output_layers))}


def read_layers(params: Params, arrays: dict[str, np.ndarray]) -> dict[str, Layer]:
    """Every layer of `layer_names` from a recording: step-level layers one row per step (with
    `neuron_facts.step_facts_frame`), the others' embedding one row per present other vehicle (with
    `neuron_facts.vehicle_facts_frame`)."""
    obs, action = arrays["obs"], arrays["action"]
    facts = scene_facts(obs, params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    step_facts = neuron_facts.step_facts_frame(obs, facts, action, arrays["q"], params.env)
    vehicle_facts = neuron_facts.vehicle_facts_frame(obs, facts, action)
    index, row = vehicle_facts["step_index"].to_numpy(), vehicle_facts["row"].to_numpy()
    vehicle_keys = pd.DataFrame({"episode": arrays["episode"][index], "step": arrays["step"][index],
                                 "row": row, "vehicle_id": arrays["vehicle_id"][index, row]})
    step_keys = pd.DataFrame({"episode": arrays["episode"], "step": arrays["step"],
                              "row": pd.array([None] * len(obs), dtype="Int64"),
                              "vehicle_id": pd.array([None] * len(obs), dtype="Int64")})
    layers = {}
    for name, per_vehicle in layer_names(params.agent).items():
        if per_vehicle:
            acts, _, _ = neuron_facts.vehicle_rows(arrays[name], obs)
            layers[name] = Layer(name, True, acts, vehicle_facts.drop(columns=["step_index", "row"]), vehicle_keys)
        else:
            layers[name] = Layer(name, False, neuron_facts.step_activations(arrays[name]), step_facts, step_keys)
    return layers


def labelled(table: pd.DataFrame, model: str, **columns: object) -> pd.DataFrame:
    """A copy of `table` with the columns model, then `columns`, first (constant values)."""
    table = table.copy()
    for i, (name, value) in enumerate({"model": model, **columns}.items()):
        table.insert(i, name, value)
    return table


def neuron_tables(model: str, layers: dict[str, Layer], arrays: dict[str, np.ndarray], cfg: NeuronsConfig,
                  progress: Progress = no_progress) -> dict[str, pd.DataFrame]:
    """stats, over_time (step-level layers, the first recorded episode), correlations and the
    semantic dictionary (with each neuron's top recorded row and whether it is `significant`) of
    one network's layers."""
    first_episode = int(arrays["episode"][0])
    tables: dict[str, list[pd.DataFrame]] = {"stats": [], "over_time": [], "correlations": [], "dictionary": []}
    for layer in progress(list(layers.values()), f"{model} neurons"):
        stats = neuron_stats.activation_stats(layer.acts, layer.name)
        stats.insert(2, "rows", len(layer.acts))
        tables["stats"].append(labelled(stats, model))
        if not layer.per_vehicle:
            over_time = neuron_stats.activations_over_time(layer.acts, arrays["episode"], arrays["step"], first_episode,
                                                      cfg.over_time_neurons)
            tables["over_time"].append(labelled(over_time, model, layer=layer.name, episode=first_episode))
        columns = list(neuron_facts.VEHICLE_FACTS) if layer.per_vehicle else None
        correlations = neuron_stats.neuron_fact_correlations(layer.acts, layer.facts, cfg.ttc_cap, columns=columns)
        tables["correlations"].append(labelled(correlations, model, layer=layer.name))
        entries = neuron_dictionary.semantic_dictionary(layer.acts, layer.facts, cfg.top_k,
                                                        min_lift=cfg.dictionary_min_lift, alpha=cfg.dictionary_alpha,
                                                        max_clauses=cfg.dictionary_max_clauses)
        top = neuron_dictionary.top_activations(layer.acts, layer.keys, 1).set_index("neuron")
        for i, key in enumerate(("episode", "step", "row", "vehicle_id")):
            entries.insert(1 + i, f"top_{key}", top.loc[entries["neuron"], key].to_numpy())
        entries["significant"] = neuron_dictionary.significant(entries["description"])
        tables["dictionary"].append(labelled(entries, model, layer=layer.name))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}


def lens_tables(model: str, net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], cfg: NeuronsConfig,
                seed: int) -> dict[str, pd.DataFrame]:
    """lens (per step and site), lens_summary and tuned_lens (episodes held out, split by `seed`)
    of one network on its recorded observations."""
    obs = torch.as_tensor(arrays["obs"])
    labels = pd.DataFrame({"episode": arrays["episode"], "step": arrays["step"]})
    table = lens.logit_lens(net, obs, labels=labels)
    tuned = lens.tuned_lens_for(net, obs, held_out_fraction=cfg.lens_held_out, ridge=cfg.lens_ridge, seed=seed,
                                groups=arrays["episode"])
    states = lens.lens_states(net, obs)
    held = lens.held_out_agreement({key: states.sites()[key] for key in ((lens.EGO, None), (lens.FULL, None))},
                                   states.q, cfg.lens_held_out, cfg.lens_ridge, seed, arrays["episode"])
    final = states.q.argmax(dim=1).numpy()
    controls = pd.concat([labelled(lens.lens_controls(rows, final, arrays["episode"], cfg.bootstrap_resamples, seed),
                                   model, lens=name)
                          for name, rows in (("logit", table[table["k"].isna()]), ("tuned", held))],
                         ignore_index=True)
    return {"lens": labelled(table, model), "lens_summary": labelled(lens.lens_summary(table), model),
            "tuned_lens": labelled(tuned, model), "lens_controls": controls}


# --------------------------------------------------------------------------------------------
# Feature visualisation


@dataclass
class Target:
    """A feature-visualisation objective and what it is compared with."""

    layer: str
    neuron: str
    objective: feature_visualisation.Objective
    recorded: np.ndarray
    """The objective's value at every recorded step [N]."""
    reason: str
    fact: str | None
    spearman: float
    quantity: str
    title: str


def targets(model: str, layers: dict[str, Layer], correlations: pd.DataFrame, arrays: dict[str, np.ndarray],
            n: int) -> list[Target]:
    """`n` neurons per output-MLP layer (most active / most correlated with a `CHOICE_FACTS` fact,
    `feature_visualisation.neurons_to_visualise`) and each action's advantage.

    A neuron's objective is its pre-activation (the Linear before the ReLU, `output_layer.layers.i`
    for `output_layer.hook_post.i`): the ReLU is monotone, so both peak together, and the
    pre-activation has a gradient where the neuron is silent, which the ReLU output has not.
    correlations: the network's `correlations` table (layer, neuron, fact, spearman).
    """
    chosen_targets = []
    for layer in (v for v in layers.values() if v.name.startswith(f"{OUTPUT_MLP}.")):
        linear = layer.name.replace(".hook_post.", ".layers.")
        scene_correlations = correlations[(correlations["layer"] == layer.name)
                                          & correlations["fact"].isin(CHOICE_FACTS)]
        for pick in feature_visualisation.neurons_to_visualise(layer.acts, scene_correlations, n).itertuples():
            why = pick.reason if pick.reason == "most active" else \
                f"{pick.reason}: ρ = {pick.spearman:+.2f} with {pick.fact}"
            chosen_targets.append(Target(
                layer.name, str(pick.neuron), feature_visualisation.neuron_objective(linear, int(pick.neuron)),
                neuron_facts.step_activations(arrays[linear])[:, pick.neuron], pick.reason, pick.fact, pick.spearman,
                "pre-activation",
                f"{model} network, {site(layer.name).layer_title}, neuron {pick.neuron} ({why})"))
    advantages = feature_visualisation.advantage(arrays["q"])
    for a, name in enumerate(ACTIONS):
        objective = feature_visualisation.advantage_objective(a)
        chosen_targets.append(Target("advantage", name, objective, advantages[:, a], "action",
                                     None, np.nan, "advantage",
                                     f"{model} network, advantage of {name}: Q({name}) − mean Q"))
    return chosen_targets


def feature_vis(model: str, net: EgoAttentionNetwork, layers: dict[str, Layer], correlations: pd.DataFrame,
                arrays: dict[str, np.ndarray], params: Params, seed: int,
                progress: Progress = no_progress) -> tuple[pd.DataFrame, dict[str, Figure]]:
    """Optimise an observation for each of `targets` (presence of the `feature_visualisation.typical_step`, the
    recorded states as the prior) and draw the best restart beside the top recorded step.

    Returns (one row per (target, restart), {"feature_vis/<model>_<layer>_<neuron>.png": figure}).
    """
    cfg = params.neurons
    obs, episode, step, action = arrays["obs"], arrays["episode"], arrays["step"], arrays["action"]
    typical = feature_visualisation.typical_step(obs)
    presence = obs[typical, :, 0]
    n_present = int((presence >= PRESENT_AT).sum())
    rows, figures = [], {}
    for target in progress(targets(model, layers, correlations, arrays, cfg.visualise_neurons),
                           f"{model} feature vis"):
        optimised, values = feature_visualisation.optimise_observation(
            net, target.objective, presence, n_restarts=cfg.restarts, steps=cfg.optimisation_steps, lr=cfg.lr,
            prior_obs=obs, prior_weight=cfg.prior_weight, diversity=cfg.diversity, seed=seed)
        best, top = int(np.argmax(values)), int(np.argmax(target.recorded))
        file = f"feature_vis/{model}_{target.layer}_{target.neuron}.png"
        figures[file] = feature_visualisation.scene_pair(
            optimised[best], obs[top], params.env.features_range,
            f"optimised (best of {cfg.restarts} restarts): {target.quantity} {values[best]:.2f}\n"
            f"{n_present} vehicles, rows of episode {episode[typical]}, step {step[typical]} (median count)",
            f"top recorded step: {target.quantity} {target.recorded[top]:.2f}\n"
            f"episode {episode[top]}, step {step[top]}, action taken {ACTIONS[action[top]]}", target.title)
        for restart, value in enumerate(values):
            rows.append({
                "model": model, "layer": target.layer, "neuron": target.neuron, "objective": target.objective.label,
                "reason": target.reason, "fact": target.fact, "spearman": target.spearman, "restart": restart,
                "value": float(value), "best": restart == best, "recorded_max": float(target.recorded[top]),
                "top_episode": int(episode[top]), "top_step": int(step[top]),
                "presence_episode": int(episode[typical]), "presence_step": int(step[typical]),
                "n_present": n_present, "file": file})
    return pd.DataFrame(rows), figures


def network_tables(model: str, net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], params: Params, seed: int,
                   progress: Progress = no_progress) -> tuple[dict[str, pd.DataFrame], dict[str, Figure]]:
    """Everything the neurons stage computes for the `model` network ("trained" or "untrained")
    from its recording: tables stats, over_time, correlations, dictionary, lens, lens_summary,
    tuned_lens, feature_vis (rows labelled by model), and the feature-visualisation figures."""
    layers = read_layers(params, arrays)
    tables = neuron_tables(model, layers, arrays, params.neurons, progress) | \
        lens_tables(model, net, arrays, params.neurons, seed)
    tables["feature_vis"], figures = feature_vis(model, net, layers, tables["correlations"], arrays, params, seed,
                                                 progress)
    return tables, figures
