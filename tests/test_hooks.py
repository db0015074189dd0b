"""run_with_cache / run_with_hooks read and edit named activations without changing the net."""

from __future__ import annotations

import pytest
import torch

from egolens.hooks import activation_names, run_with_cache, run_with_hooks
from egolens.model import EgoAttentionNetwork
from tests.conftest import random_obs


@pytest.fixture
def net():
    torch.manual_seed(0)
    return EgoAttentionNetwork()


def test_cache_holds_every_linear_and_hook_point_and_q_is_unchanged(net):
    obs = random_obs(6, seed=1)
    q, cache = run_with_cache(net, obs)
    torch.testing.assert_close(q, net(obs), rtol=0, atol=0)
    assert set(cache) == set(activation_names(net))
    assert {"attention_layer.query_ego", "attention_layer.hook_pattern", "output_layer.predict",
            "ego_embedding.layers.0", "others_embedding.hook_post.1"} <= set(cache)
    torch.testing.assert_close(cache["output_layer.predict"], q)
    torch.testing.assert_close(cache["attention_layer.hook_pattern"], net.get_attention_matrix(obs))
    # post-ReLU neurons are the ReLU of the Linear before them
    torch.testing.assert_close(cache["output_layer.hook_post.0"], torch.relu(cache["output_layer.layers.0"]))


def test_cached_scores_reproduce_the_pattern(net):
    obs = random_obs(6, seed=2)
    _, cache = run_with_cache(net, obs)
    scores = cache["attention_layer.hook_scores"].masked_fill(
        EgoAttentionNetwork.absent_mask(obs)[:, None, None, :], -1e9)
    torch.testing.assert_close(torch.softmax(scores, -1), cache["attention_layer.hook_pattern"])
    q, k = cache["attention_layer.hook_q"], cache["attention_layer.hook_k"]
    torch.testing.assert_close(q @ k.transpose(-1, -2) / (32 ** 0.5), cache["attention_layer.hook_scores"])


def test_a_hook_returning_a_tensor_replaces_the_activation(net):
    obs = random_obs(4, seed=3)
    _, cache = run_with_cache(net, obs)
    zeroed = run_with_hooks(net, obs, {"output_layer.hook_post.1": lambda a: torch.zeros_like(a)})
    torch.testing.assert_close(zeroed, net.output_layer.predict.bias.expand(4, 3))
    identity = run_with_hooks(net, obs, {"attention_layer.hook_resid": lambda a: a})
    torch.testing.assert_close(identity, net(obs))
    torch.testing.assert_close(net(obs), cache["output_layer.predict"])        # hooks were removed


def test_selected_names_only_and_unknown_names_refused(net):
    obs = random_obs(2, seed=4)
    _, cache = run_with_cache(net, obs, ["attention_layer.hook_z"])
    assert list(cache) == ["attention_layer.hook_z"]
    with pytest.raises(KeyError, match="no activation named 'attention_layer.nope'"):
        run_with_cache(net, obs, ["attention_layer.nope"])
