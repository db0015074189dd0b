"""The per-network attributions study: layers read off the network, tables joined across networks."""

from __future__ import annotations

import pandas as pd

from egolens.analysis.attribution.attribution_study import Layers, combine
from egolens.model import EgoAttentionNetwork
from tests.conftest import tiny_net


def test_conductance_layers_follow_the_networks_depth():
    deep = EgoAttentionNetwork(in_features=7, feature_size=8, heads=2, embedding_layers=[8, 8, 8],
                               output_layers=[8, 8, 8])
    layers = Layers.of(deep)
    embeddings = tuple(f"{mlp}.hook_post.{i}" for mlp in ("ego_embedding", "others_embedding") for i in range(3))
    assert layers.analysed == (*embeddings, "attention_layer.hook_resid", "output_layer.hook_post.0",
                               "output_layer.hook_post.1", "output_layer.hook_post.2")
    assert layers.cuts == layers.analysed[6:] and layers.refined == "attention_layer.hook_resid"
    assert layers.rows == {layer: layer.split("_")[0] for layer in embeddings}
    assert Layers.of(tiny_net()).cuts == ("attention_layer.hook_resid", "output_layer.hook_post.0")


def test_combine_stacks_each_tables_rows_network_by_network():
    frame = pd.DataFrame
    per_network = {"trained": {"a": [frame({"x": [1]}), frame({"x": [2]})], "sanity": [frame({"x": [9]})]},
                   "untrained": {"a": [frame({"x": [3]})]}}
    tables = combine(per_network)
    assert tables["a"].x.tolist() == [1, 2, 3] and tables["sanity"].x.tolist() == [9]
    assert list(tables["a"].index) == [0, 1, 2]
