"""Every hook site of the network, named once: its hook name, whether it holds neurons, whether it
has one row per other vehicle, its labels for a reader and its JSON key.

TransformerLens's `get_act_name` is the model: code asks for a site by what it is
(`mlp_post(OUTPUT_MLP, 0)`, `RESID`) and never spells a hook name itself. The names are module
names of `egolens.model.EgoAttentionNetwork` (`egolens.hooks` reads and edits them).

Shapes (B steps, H heads, E entities with row 0 the ego, d = D / H): `hook_q` [B, H, 1, d],
`hook_k` / `hook_v` [B, H, E, d], `hook_scores` / `hook_pattern` [B, H, 1, E], `hook_z`
[B, H, 1, d], `hook_combined` / `hook_resid` [B, D]; an MLP's `hook_post.i` (its neurons) is
[B, 1, U] for the ego embedding, [B, E-1, U] for the others' embedding (one row per other
vehicle) and [B, U] for the output MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ATTENTION = "attention_layer"
Q_SITE = f"{ATTENTION}.hook_q"
K_SITE = f"{ATTENTION}.hook_k"
V_SITE = f"{ATTENTION}.hook_v"
SCORES = f"{ATTENTION}.hook_scores"
PATTERN = f"{ATTENTION}.hook_pattern"
Z = f"{ATTENTION}.hook_z"
COMBINED = f"{ATTENTION}.hook_combined"
RESID = f"{ATTENTION}.hook_resid"
"""The attention layer's sites; `RESID` is h_in, the output MLP's input."""

EGO_EMBEDDING, OTHERS_EMBEDDING, OUTPUT_MLP = "ego_embedding", "others_embedding", "output_layer"
MLPS = (EGO_EMBEDDING, OTHERS_EMBEDDING, OUTPUT_MLP)
"""The network's MLPs, in the order every table lists their neurons."""

_POST = ".hook_post."
_MLP_LABELS = {EGO_EMBEDDING: "ego embedding", OTHERS_EMBEDDING: "others embedding", OUTPUT_MLP: "output MLP"}
_MLP_SHORT = {EGO_EMBEDDING: "ego emb. ", OTHERS_EMBEDDING: "others emb. ", OUTPUT_MLP: "output MLP "}
_MLP_LAYER = {EGO_EMBEDDING: "ego embedding layer", OTHERS_EMBEDDING: "others' embedding layer",
              OUTPUT_MLP: "output MLP hidden layer"}


@dataclass(frozen=True)
class Site:
    """One hook site.

    name: the hook name (`others_embedding.hook_post.0`); neurons: a post-ReLU hidden layer whose
    units are the network's neurons; per_vehicle: one row per other vehicle (the others'
    embedding); label: a reader's name, layers counted from 1 ("others embedding, layer 1");
    short: an axis label, the index as in the name ("others emb. 0"); layer_title: the neuron
    figures' title form ("others' embedding layer 0"); key: the JSON key, dots as underscores
    (`others_embedding_hook_post_0`).
    """

    name: str
    neurons: bool
    per_vehicle: bool
    label: str
    short: str
    layer_title: str
    key: str


def mlp_post(mlp: str, index: int) -> str:
    """The hook name of hidden layer `index` (post-ReLU) of MLP `mlp`: `output_layer.hook_post.0`."""
    return f"{mlp}{_POST}{index}"


def json_key(name: str) -> str:
    """A site's key in a summary JSON: `output_layer.hook_post.0` -> `output_layer_hook_post_0`."""
    return name.replace(".", "_")


def site(name: str) -> Site:
    """The `Site` of a hook name; a name that is not an MLP's hidden layer keeps itself as labels
    (the attention sites' short label drops the `attention_layer.hook_` prefix: "attention resid")."""
    mlp, _, index = name.partition(_POST)
    if mlp in _MLP_LABELS and index.isdigit():
        return Site(name, True, mlp == OTHERS_EMBEDDING, f"{_MLP_LABELS[mlp]}, layer {int(index) + 1}",
                    _MLP_SHORT[mlp] + index, f"{_MLP_LAYER[mlp]} {index}", json_key(name))
    attention = f"{ATTENTION}.hook_"
    short = "attention " + name.removeprefix(attention) if name.startswith(attention) else name
    return Site(name, False, False, name, short, name, json_key(name))


def mlp_posts(net: nn.Module, mlp: str) -> list[str]:
    """The hidden layers (post-ReLU) of MLP `mlp` of `net`, first to last."""
    return [mlp_post(mlp, i) for i in range(len(getattr(net, mlp).hook_post))]


def neuron_layers(net: nn.Module) -> list[str]:
    """Every hidden layer whose units are the network's neurons: the ego embedding's, the others'
    embedding's and the output MLP's `hook_post.i`, in that order."""
    return [name for mlp in MLPS for name in mlp_posts(net, mlp)]


def neuron_sites(embedding_layers: int, output_layers: int) -> list[Site]:
    """`neuron_layers` of a network with that many embedding and output-MLP hidden layers (read off
    the params, before a network exists), as `Site`s."""
    counts = {EGO_EMBEDDING: embedding_layers, OTHERS_EMBEDDING: embedding_layers, OUTPUT_MLP: output_layers}
    return [site(mlp_post(mlp, i)) for mlp in MLPS for i in range(counts[mlp])]
