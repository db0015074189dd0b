"""egolens.sites: every hook site named once, and the names are the network's own."""

from __future__ import annotations

from egolens import sites
from egolens.hooks import activation_names
from tests.conftest import tiny_net


def test_every_named_site_is_an_activation_of_the_network():
    names = set(activation_names(tiny_net()))
    attention = {sites.Q_SITE, sites.K_SITE, sites.V_SITE, sites.SCORES, sites.PATTERN, sites.Z, sites.COMBINED,
                 sites.RESID}
    assert attention <= names
    assert set(sites.neuron_layers(tiny_net())) <= names


def test_neuron_layers_list_the_embeddings_then_the_output_mlp_first_to_last():
    net = tiny_net()
    expected = [name for mlp in ("ego_embedding", "others_embedding", "output_layer")
                for name in activation_names(net) if name.startswith(f"{mlp}.hook_post.")]
    assert sites.neuron_layers(net) == expected
    embedding, output = len(net.ego_embedding.hook_post), len(net.output_layer.hook_post)
    assert [s.name for s in sites.neuron_sites(embedding, output)] == expected


def test_only_the_others_embedding_has_one_row_per_vehicle():
    flags = {s.name: s.per_vehicle for s in sites.neuron_sites(2, 1)}
    assert flags == {"ego_embedding.hook_post.0": False, "ego_embedding.hook_post.1": False,
                     "others_embedding.hook_post.0": True, "others_embedding.hook_post.1": True,
                     "output_layer.hook_post.0": False}
    assert not sites.site(sites.K_SITE).per_vehicle and not sites.site(sites.K_SITE).neurons


def test_labels_and_json_keys_of_a_hidden_layer_and_an_attention_site():
    layer = sites.site(sites.mlp_post(sites.OTHERS_EMBEDDING, 0))
    assert (layer.name, layer.neurons, layer.label, layer.short, layer.layer_title, layer.key) == (
        "others_embedding.hook_post.0", True, "others embedding, layer 1", "others emb. 0",
        "others' embedding layer 0", "others_embedding_hook_post_0")
    output = sites.site("output_layer.hook_post.1")
    assert (output.label, output.short, output.layer_title) == ("output MLP, layer 2", "output MLP 1",
                                                                "output MLP hidden layer 1")
    resid = sites.site(sites.RESID)
    assert (resid.short, resid.label, resid.key) == ("attention resid", sites.RESID, "attention_layer_hook_resid")
