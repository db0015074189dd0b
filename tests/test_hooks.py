"""run_with_cache / run_with_hooks read and edit named activations without changing the net."""

from __future__ import annotations

import pytest
import torch

from egolens.hooks import activation_names, capture, run_with_cache, run_with_hooks
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


def test_a_cache_with_gradients_gives_the_gradient_autograd_gives_through_the_net(net):
    obs = random_obs(4, seed=2)
    q, cache = run_with_cache(net, obs, ["attention_layer.hook_resid"], grad=True)
    resid = cache["attention_layer.hook_resid"]
    assert resid.requires_grad and q.requires_grad
    grad, = torch.autograd.grad(q[:, 1].sum(), resid)
    # independent: the output MLP applied to the cached residual by hand
    leaf = resid.detach().requires_grad_()
    hidden = leaf
    for linear in net.output_layer.layers:
        hidden = torch.relu(linear(hidden))
    expected, = torch.autograd.grad(net.output_layer.predict(hidden)[:, 1].sum(), leaf)
    torch.testing.assert_close(grad, expected)


def test_capture_keeps_outputs_and_module_inputs_of_every_pass_latest_wins(net):
    obs = random_obs(3, seed=3)
    with capture(net, ["ego_embedding.layers.0"], inputs=["output_layer.layers.0"]) as seen:
        net(obs[:1])
        net(obs)
    _, cache = run_with_cache(net, obs)
    torch.testing.assert_close(seen["ego_embedding.layers.0"], cache["ego_embedding.layers.0"])
    torch.testing.assert_close(seen["output_layer.layers.0"], cache["attention_layer.hook_resid"])
    assert not net.ego_embedding.layers[0]._forward_hooks            # removed on exit


def test_capture_keeps_forward_mode_tangents_when_not_detached(net):
    net = net.double()
    obs, direction = random_obs(2, seed=4).double(), random_obs(2, seed=5).double()
    mask, site = net.absent_mask(obs), "attention_layer.hook_resid"
    with capture(net, [site], detach=False) as seen, torch.autograd.forward_ad.dual_level():
        net(torch.autograd.forward_ad.make_dual(obs, direction), mask)
        tangent = torch.autograd.forward_ad.unpack_dual(seen[site]).tangent
    eps = 1e-6
    _, plus = run_with_cache(net, obs + eps * direction, [site], mask)
    _, minus = run_with_cache(net, obs - eps * direction, [site], mask)
    torch.testing.assert_close(tangent, (plus[site] - minus[site]) / (2 * eps), rtol=1e-5, atol=1e-7)
