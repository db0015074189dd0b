"""neurons@seed: activation statistics, neuron–fact correlations and the semantic dictionary of
the embedding and output-MLP neurons, logit and tuned lenses, and feature visualisations
(an optimised observation beside the top recorded step) of the trained and untrained networks."""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from egolens import checkpoint
from egolens.analysis import lens, neurons
from egolens.artifacts import json_text
from egolens.config import Params
from egolens.model import EgoAttentionNetwork
from egolens.scene import scene_facts
from egolens.vocabulary import ACTIONS, PRESENT_AT
from stages import DATA, NETWORKS, load_net, seed_args, seed_results

PNG_METADATA = {"Software": None}
"""No matplotlib version stamp in the PNGs: same figure, same bytes."""
DPI = 100

LR = 0.05
PRIOR_WEIGHT = 0.1
"""Weight of the squared distance to the mean recorded state (the prior) in feature visualisation."""
DIVERSITY = 0.1
"""Reward for restarts that end apart (rms distance between restarts)."""
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


def layer_names(params: Params) -> dict[str, bool]:
    """{layer: per_vehicle} for the embeddings' and the output MLP's neurons (post-ReLU)."""
    embedding, output = range(len(params.agent.embedding_layers)), range(len(params.agent.output_layers))
    return ({f"ego_embedding.hook_post.{i}": False for i in embedding}
            | {f"others_embedding.hook_post.{i}": True for i in embedding}
            | {f"output_layer.hook_post.{i}": False for i in output})


def read_layers(params: Params, arrays: dict[str, np.ndarray]) -> dict[str, Layer]:
    obs, action = arrays["obs"], arrays["action"]
    facts = scene_facts(obs, params.env, params.scene.horizon, params.scene.collision_radius,
                        params.scene.min_ego_speed)
    step_facts = neurons.step_facts_frame(obs, facts, action, arrays["q"], params.env)
    vehicle_facts = neurons.vehicle_facts_frame(obs, facts, action)
    index, row = vehicle_facts["step_index"].to_numpy(), vehicle_facts["row"].to_numpy()
    vehicle_keys = pd.DataFrame({"episode": arrays["episode"][index], "step": arrays["step"][index],
                                 "row": row, "vehicle_id": arrays["vehicle_id"][index, row]})
    step_keys = pd.DataFrame({"episode": arrays["episode"], "step": arrays["step"],
                              "row": pd.array([None] * len(obs), dtype="Int64"),
                              "vehicle_id": pd.array([None] * len(obs), dtype="Int64")})
    layers = {}
    for name, per_vehicle in layer_names(params).items():
        if per_vehicle:
            acts, _, _ = neurons.vehicle_rows(arrays[name], obs)
            layers[name] = Layer(name, True, acts, vehicle_facts.drop(columns=["step_index", "row"]), vehicle_keys)
        else:
            layers[name] = Layer(name, False, neurons.step_activations(arrays[name]), step_facts, step_keys)
    return layers


def with_model(table: pd.DataFrame, model: str, **columns: object) -> pd.DataFrame:
    table = table.copy()
    for i, (name, value) in enumerate({"model": model, **columns}.items()):
        table.insert(i, name, value)
    return table


def neuron_tables(model: str, layers: dict[str, Layer], arrays: dict[str, np.ndarray],
                  params: Params) -> dict[str, pd.DataFrame]:
    """stats, over_time, correlations, dictionary of one network's layers."""
    first_episode = int(arrays["episode"][0])
    tables: dict[str, list[pd.DataFrame]] = {"stats": [], "over_time": [], "correlations": [], "dictionary": []}
    for layer in tqdm(layers.values(), desc=f"{model} neurons", unit="layer"):
        stats = neurons.activation_stats(layer.acts, layer.name)
        stats.insert(2, "rows", len(layer.acts))
        tables["stats"].append(with_model(stats, model))
        if not layer.per_vehicle:
            over_time = neurons.activations_over_time(layer.acts, arrays["episode"], arrays["step"], first_episode,
                                                      params.neurons.over_time_neurons)
            tables["over_time"].append(with_model(over_time, model, layer=layer.name, episode=first_episode))
        columns = list(neurons.VEHICLE_FACTS) if layer.per_vehicle else None
        correlations = neurons.neuron_fact_correlations(layer.acts, layer.facts, columns=columns)
        tables["correlations"].append(with_model(correlations, model, layer=layer.name))
        entries = neurons.semantic_dictionary(layer.acts, layer.facts, params.neurons.top_k)
        top = neurons.top_activations(layer.acts, layer.keys, 1).set_index("neuron")
        entries.insert(1, "top_episode", top.loc[entries["neuron"], "episode"].to_numpy())
        entries.insert(2, "top_step", top.loc[entries["neuron"], "step"].to_numpy())
        entries.insert(3, "top_row", top.loc[entries["neuron"], "row"].to_numpy())
        entries.insert(4, "top_vehicle_id", top.loc[entries["neuron"], "vehicle_id"].to_numpy())
        entries["significant"] = neurons.significant(entries["description"])
        tables["dictionary"].append(with_model(entries, model, layer=layer.name))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}


def lens_tables(model: str, net: EgoAttentionNetwork, arrays: dict[str, np.ndarray], params: Params,
                seed: int) -> dict[str, pd.DataFrame]:
    """lens (per step and site), lens_summary, tuned_lens of one network."""
    obs = torch.as_tensor(arrays["obs"])
    labels = pd.DataFrame({"episode": arrays["episode"], "step": arrays["step"]})
    table = lens.logit_lens(net, obs, labels=labels)
    tuned = lens.tuned_lens_for(net, obs, held_out_fraction=params.neurons.lens_held_out, seed=seed,
                                groups=arrays["episode"])
    return {"lens": with_model(table, model), "lens_summary": with_model(lens.lens_summary(table), model),
            "tuned_lens": with_model(tuned, model)}


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    with checkpoint.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def readable(layer: str) -> str:
    """'output_layer.hook_post.0' -> 'output MLP hidden layer 0'."""
    part, _, index = layer.rpartition(".")
    kind = {"output_layer.hook_post": "output MLP hidden layer", "ego_embedding.hook_post": "ego embedding layer",
            "others_embedding.hook_post": "others' embedding layer"}.get(part, part)
    return f"{kind} {index}"


@dataclass
class Target:
    """A feature-visualisation objective and what it is compared with."""

    layer: str
    neuron: str
    objective: neurons.Objective
    recorded: np.ndarray
    """The objective's value at every recorded step [N]."""
    reason: str
    fact: str | None
    spearman: float
    quantity: str
    title: str


def targets(model: str, layers: dict[str, Layer], correlations: pd.DataFrame, arrays: dict[str, np.ndarray],
            n: int) -> list[Target]:
    """`n` neurons per output-MLP layer (most active / most correlated with a scene fact) and each
    action's advantage.

    A neuron's objective is its pre-activation (the Linear before the ReLU, `output_layer.layers.i`
    for `output_layer.hook_post.i`): the ReLU is monotone, so both peak together, and the
    pre-activation has a gradient where the neuron is silent, which the ReLU output has not.
    """
    chosen_targets = []
    for layer in (v for v in layers.values() if v.name.startswith("output_layer.")):
        linear = layer.name.replace(".hook_post.", ".layers.")
        scene_correlations = correlations[(correlations["layer"] == layer.name)
                                          & correlations["fact"].isin(CHOICE_FACTS)]
        for pick in neurons.neurons_to_visualise(layer.acts, scene_correlations, n).itertuples():
            why = pick.reason if pick.reason == "most active" else \
                f"{pick.reason}: ρ = {pick.spearman:+.2f} with {pick.fact}"
            chosen_targets.append(Target(
                layer.name, str(pick.neuron), neurons.neuron_objective(linear, int(pick.neuron)),
                neurons.step_activations(arrays[linear])[:, pick.neuron], pick.reason, pick.fact, pick.spearman,
                "pre-activation",
                f"{model} network, {readable(layer.name)}, neuron {pick.neuron} ({why})"))
    advantages = neurons.advantage(arrays["q"])
    for a, name in enumerate(ACTIONS):
        chosen_targets.append(Target("advantage", name, neurons.advantage_objective(a), advantages[:, a], "action",
                                     None, np.nan, "advantage",
                                     f"{model} network, advantage of {name}: Q({name}) − mean Q"))
    return chosen_targets


def feature_vis(model: str, net: EgoAttentionNetwork, layers: dict[str, Layer], correlations: pd.DataFrame,
                arrays: dict[str, np.ndarray], params: Params, seed: int, out: Path) -> pd.DataFrame:
    """Optimise an observation for each target; draw the best restart beside the top recorded
    step (feature_vis/<model>_<layer>_<neuron>.png). One row per (target, restart)."""
    cfg = params.neurons
    obs, episode, step, action = arrays["obs"], arrays["episode"], arrays["step"], arrays["action"]
    typical = neurons.typical_step(obs)
    presence = obs[typical, :, 0]
    n_present = int((presence >= PRESENT_AT).sum())
    rows = []
    for target in tqdm(targets(model, layers, correlations, arrays, cfg.visualise_neurons),
                       desc=f"{model} feature vis", unit="objective"):
        optimised, values = neurons.optimise_observation(
            net, target.objective, presence, n_restarts=cfg.restarts, steps=cfg.optimisation_steps, lr=LR,
            prior_obs=obs, prior_weight=PRIOR_WEIGHT, diversity=DIVERSITY, seed=seed)
        best, top = int(np.argmax(values)), int(np.argmax(target.recorded))
        file = f"feature_vis/{model}_{target.layer}_{target.neuron}.png"
        fig = neurons.scene_pair(
            optimised[best], obs[top], params.env.features_range,
            f"optimised (best of {cfg.restarts} restarts): {target.quantity} {values[best]:.2f}\n"
            f"{n_present} vehicles, rows of episode {episode[typical]}, step {step[typical]} (median count)",
            f"top recorded step: {target.quantity} {target.recorded[top]:.2f}\n"
            f"episode {episode[top]}, step {step[top]}, action taken {ACTIONS[action[top]]}", target.title)
        write_bytes(out / file, png(fig))
        for restart, value in enumerate(values):
            rows.append({
                "model": model, "layer": target.layer, "neuron": target.neuron, "objective": target.objective.label,
                "reason": target.reason, "fact": target.fact, "spearman": target.spearman, "restart": restart,
                "value": float(value), "best": restart == best, "recorded_max": float(target.recorded[top]),
                "top_episode": int(episode[top]), "top_step": int(step[top]),
                "presence_episode": int(episode[typical]), "presence_step": int(step[typical]),
                "n_present": n_present, "file": file})
    return pd.DataFrame(rows)


def summary(tables: dict[str, pd.DataFrame]) -> dict:
    """Per model: per layer the dead fraction, mean sparsity (1 − fraction active) and described
    neurons; logit-lens agreement and tuned-lens held-out agreement per site without k."""
    out: dict = {}
    stats, dictionary = tables["stats"], tables["dictionary"]
    lens_summary, tuned = tables["lens_summary"], tables["tuned_lens"]
    for model in NETWORKS:
        layers = {}
        for layer, group in stats[stats["model"] == model].groupby("layer", sort=False):
            entries = dictionary[(dictionary["model"] == model) & (dictionary["layer"] == layer)]
            layers[layer.replace(".", "_")] = {"dead_fraction": float(group["dead"].mean()),
                                               "mean_sparsity": float(1.0 - group["frac_active"].mean()),
                                               "described_neurons": int(entries["significant"].sum())}
        logit = lens_summary[(lens_summary["model"] == model) & lens_summary["k"].isna()]
        held = tuned[(tuned["model"] == model) & tuned["k"].isna() & (tuned["split"] == "held_out")]
        out[model] = {
            "layers": layers,
            "described_neurons": int(dictionary[dictionary["model"] == model]["significant"].sum()),
            "logit_lens_agreement": dict(zip(logit["site"], logit["agreement"].astype(float))),
            "tuned_lens_held_out_agreement": dict(zip(held["site"], held["agreement"].astype(float))),
        }
    return finite_rounded(out)


def finite_rounded(value: object, path: str = "summary") -> object:
    """Plain numbers rounded to 6 significant digits; NaN or inf is an error (DVC metrics)."""
    if isinstance(value, dict):
        return {k: finite_rounded(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, bool | int | np.integer):
        return int(value)
    if not math.isfinite(float(value)):
        raise ValueError(f"{path} = {value} is not a finite number")
    return float(f"{float(value):.6g}")


def main() -> None:
    params, seed = seed_args(__doc__)
    matplotlib.use("Agg")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = seed_results(seed) / "neurons"
    shutil.rmtree(out, ignore_errors=True)
    parts: dict[str, list[pd.DataFrame]] = {}
    for model in NETWORKS:
        net = load_net(params, seed, model)
        with np.load(DATA / f"seed{seed}" / f"rollouts_{model}.npz") as npz:
            arrays = {name: npz[name] for name in npz.files}
        layers = read_layers(params, arrays)
        tables = neuron_tables(model, layers, arrays, params) | lens_tables(model, net, arrays, params, seed)
        tables["feature_vis"] = feature_vis(model, net, layers, tables["correlations"], arrays, params, seed, out)
        for name, table in tables.items():
            parts.setdefault(name, []).append(table)
    tables = {name: pd.concat(tables, ignore_index=True) for name, tables in parts.items()}
    for name, table in tables.items():
        checkpoint.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
    checkpoint.atomic_write_text(out / "summary.json", json_text(summary(tables)))


if __name__ == "__main__":
    main()
