"""The neurons stage's work on one network, on a tiny network and a hand-made recording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.reading import feature_visualisation, neuron_dictionary, neuron_facts
from egolens.analysis.reading.neuron_study import (
    CHOICE_FACTS,
    layer_names,
    network_tables,
    neuron_tables,
    read_layers,
    targets,
)
from egolens.analysis_config import InterventionsConfig, NeuronsConfig
from egolens.config import Params
from egolens.figures import FEATURE_VIS_DPI, figure_png
from egolens.hooks import activation_names, run_with_cache
from egolens.model import EgoAttentionNetwork
from egolens.sites import site
from egolens.vocabulary import present
from tests.conftest import random_obs, tiny_agent

N, E = 12, 15


@pytest.fixture(scope="module")
def params() -> Params:
    return Params(agent=tiny_agent(), interventions=InterventionsConfig(top_k=2),
                  neurons=NeuronsConfig(top_k=2, over_time_neurons=3, visualise_neurons=1, restarts=2,
                                        optimisation_steps=3))


@pytest.fixture(scope="module")
def net(params: Params) -> EgoAttentionNetwork:
    torch.manual_seed(0)
    return EgoAttentionNetwork.from_config(params.agent).eval()


@pytest.fixture(scope="module")
def arrays(net: EgoAttentionNetwork) -> dict[str, np.ndarray]:
    """A recording as `egolens.rollout` writes it: two episodes of six steps."""
    obs = random_obs(N, E, seed=4)
    q, cache = run_with_cache(net, obs, activation_names(net))
    return {"obs": obs.numpy(), "q": q.numpy(), "action": q.argmax(dim=1).numpy(),
            "episode": np.repeat([7, 8], N // 2), "step": np.tile(np.arange(N // 2), 2),
            "vehicle_id": np.arange(N * E).reshape(N, E), **{k: v.numpy() for k, v in cache.items()}}


def test_layer_names_are_the_post_relu_neurons_of_every_mlp(params):
    assert layer_names(params.agent) == {
        "ego_embedding.hook_post.0": False, "ego_embedding.hook_post.1": False,
        "others_embedding.hook_post.0": True, "others_embedding.hook_post.1": True,
        "output_layer.hook_post.0": False, "output_layer.hook_post.1": False}
    assert site("output_layer.hook_post.1").layer_title == "output MLP hidden layer 1"
    assert site("others_embedding.hook_post.0").layer_title == "others' embedding layer 0"


def test_read_layers_gives_one_row_per_step_or_per_present_other_vehicle(params, arrays):
    layers = read_layers(params, arrays)
    step = layers["output_layer.hook_post.0"]
    np.testing.assert_array_equal(step.acts, arrays["output_layer.hook_post.0"])
    assert len(step.facts) == N and step.keys["row"].isna().all()
    ego = layers["ego_embedding.hook_post.1"]
    np.testing.assert_array_equal(ego.acts, arrays["ego_embedding.hook_post.1"][:, 0])
    others = layers["others_embedding.hook_post.1"]
    step_index, other = np.nonzero(present(arrays["obs"])[:, 1:])
    assert len(others.acts) == len(others.facts) == len(others.keys) == len(step_index)
    np.testing.assert_array_equal(others.acts, arrays["others_embedding.hook_post.1"][step_index, other])
    np.testing.assert_array_equal(others.keys["vehicle_id"], step_index * E + other + 1)
    np.testing.assert_array_equal(others.keys["episode"], arrays["episode"][step_index])
    assert set(neuron_facts.VEHICLE_FACTS) <= set(others.facts.columns)


def test_neuron_tables_label_each_layer_and_point_the_dictionary_at_the_top_row(params, arrays):
    layers = read_layers(params, arrays)
    tables = neuron_tables("trained", layers, arrays, params.neurons)
    assert list(tables) == ["stats", "over_time", "correlations", "dictionary"]
    assert (tables["stats"]["model"] == "trained").all()
    assert tables["stats"].groupby("layer", sort=False)["rows"].first().to_dict() == \
        {name: len(layer.acts) for name, layer in layers.items()}
    assert set(tables["over_time"]["layer"]) == {n for n, layer in layers.items() if not layer.per_vehicle}
    assert (tables["over_time"]["episode"] == 7).all()
    others = layers["others_embedding.hook_post.0"]
    entries = tables["dictionary"][tables["dictionary"]["layer"] == others.name].set_index("neuron")
    top = others.acts.argmax(axis=0)                                        # ties: the first row, as argsort
    np.testing.assert_array_equal(entries["top_vehicle_id"].to_numpy(dtype=int), others.keys["vehicle_id"][top])
    np.testing.assert_array_equal(entries["top_step"].to_numpy(dtype=int), others.keys["step"][top])
    assert entries.columns[:5].tolist() == ["model", "layer", "top_episode", "top_step", "top_row"]
    np.testing.assert_array_equal(entries["significant"], neuron_dictionary.significant(entries["description"]))
    correlations = tables["correlations"]
    assert set(correlations.loc[correlations["layer"] == others.name, "fact"]) == set(neuron_facts.VEHICLE_FACTS)


def test_targets_are_pre_activations_of_chosen_output_neurons_and_each_actions_advantage(params, arrays):
    layers = read_layers(params, arrays)
    correlations = neuron_tables("trained", layers, arrays, params.neurons)["correlations"]
    chosen = targets("trained", layers, correlations, arrays, 2)
    assert [t.layer for t in chosen] == ["output_layer.hook_post.0"] * 2 + ["output_layer.hook_post.1"] * 2 + \
        ["advantage"] * 3
    first = chosen[0]
    assert first.reason == "most active" and first.quantity == "pre-activation"
    assert first.objective.names == ("output_layer.layers.0",)
    np.testing.assert_array_equal(first.recorded, arrays["output_layer.layers.0"][:, int(first.neuron)])
    second = chosen[1]
    assert second.reason == "most correlated" and second.fact in CHOICE_FACTS
    assert f"with {second.fact}" in second.title
    np.testing.assert_allclose(chosen[-1].recorded, feature_visualisation.advantage(arrays["q"])[:, 2])
    assert chosen[-1].neuron == "FASTER"


def test_network_tables_give_every_table_and_one_figure_per_target(params, net, arrays):
    tables, figures = network_tables("untrained", net, arrays, params, seed=0)
    assert list(tables) == ["stats", "over_time", "correlations", "dictionary", "lens", "lens_summary", "tuned_lens",
                            "lens_controls", "feature_vis"]
    controls = tables["lens_controls"]
    assert list(controls["lens"]) == ["logit"] * 4 + ["tuned"] * 4
    # the tuned lens's majority baseline is the most frequent final action's share of the held-out steps
    tuned = controls[controls["lens"] == "tuned"].set_index("quantity")
    held = tables["tuned_lens"][(tables["tuned_lens"]["split"] == "held_out") & tables["tuned_lens"]["k"].isna()]
    assert tuned.loc["full_minus_ego", "value"] == pytest.approx(
        held.set_index("site").loc["full", "agreement"] - held.set_index("site").loc["ego", "agreement"])
    assert (tuned["n_steps"] == held["n"].iloc[0]).all()
    assert all((table["model"] == "untrained").all() for table in tables.values())
    vis = tables["feature_vis"]
    assert len(vis) == (2 * 1 + 3) * params.neurons.restarts
    assert list(figures) == list(pd.unique(vis["file"]))
    assert "feature_vis/untrained_output_layer.hook_post.1_" in list(figures)[1]
    assert vis.groupby("file")["best"].sum().eq(1).all()
    best = vis[vis["best"]].set_index("file")["value"]
    pd.testing.assert_series_equal(best.sort_index(), vis.groupby("file")["value"].max())
    assert tables["tuned_lens"]["split"].isin(["train", "held_out"]).all()


def test_figure_png_is_byte_stable_and_carries_no_software_stamp(params, arrays):
    obs = arrays["obs"]
    def drawn():
        return feature_visualisation.scene_pair(obs[0], obs[1], params.env.features_range, "a", "b", "t")
    first = figure_png(drawn(), FEATURE_VIS_DPI)
    again = figure_png(drawn(), FEATURE_VIS_DPI)
    assert first == again and first.startswith(b"\x89PNG") and b"matplotlib" not in first
