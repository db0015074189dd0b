"""Steering on a tiny hand-made network: the action flips at the α computed by hand, α = 0 is the
unsteered network bit for bit (open and closed loop), directions match direct computations, and
bad grids or sites fail naming them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.intervening import steering as st
from egolens.analysis.reading import probes as pr
from egolens.episodes import greedy
from egolens.hooks import run_with_cache
from egolens.play import play
from egolens.probes_config import validate_alphas
from egolens.vocabulary import ACTIONS
from tests.conftest import random_obs, tiny_net, toy_runner

SITE = "output_layer.hook_post.0"
"""The output MLP's only hidden layer of `tiny_net`: Q = W·h + b right after it."""
SLOWER, IDLE, FASTER = (ACTIONS.index(a) for a in ("SLOWER", "IDLE", "FASTER"))


def hand_made_head() -> torch.nn.Module:
    """tiny_net whose output layer reads Q(SLOWER) and Q(FASTER) off the hidden units with hand-set
    weights, and whose IDLE is never chosen."""
    net = tiny_net(seed=3)
    with torch.no_grad():
        predict = net.output_layer.predict
        predict.weight.zero_()
        predict.weight[SLOWER, :4] = torch.tensor([1.0, -0.5, 0.25, 0.0])
        predict.weight[FASTER, 2:6] = torch.tensor([0.5, 1.0, -1.0, 0.3])
        predict.bias[:] = torch.tensor([0.4, -100.0, 0.0])
    return net


def test_steering_flips_the_action_at_the_alpha_computed_by_hand():
    net = hand_made_head()
    obs = random_obs(64, seed=5)
    q0, cache = run_with_cache(net, obs, [SITE])
    step = int(torch.nonzero(q0.argmax(dim=1) == SLOWER)[0])          # a step where the agent slows down
    one = obs[step:step + 1].numpy()
    weight = net.output_layer.predict.weight.detach().double().numpy()
    direction = weight[FASTER] - weight[SLOWER]                        # raises Q(F) − Q(S) fastest
    acts = cache[SITE].double().numpy()
    scale = np.sqrt(np.mean(np.sum(acts**2, axis=1)))
    assert st.activation_scale(acts) == pytest.approx(scale)
    # Q(F) − Q(S) grows by α·scale·(W_F − W_S)·d̂ = α·scale·‖d‖: it reaches 0 at α*.
    gap = float(q0[step, FASTER] - q0[step, SLOWER])
    alpha_star = -gap / (scale * np.linalg.norm(direction))
    assert alpha_star > 0
    for alpha, action in ((0.0, SLOWER), (alpha_star * 0.99, SLOWER), (alpha_star * 1.01, FASTER)):
        assert st.steered_policy(net, SITE, direction, alpha, scale)(one)[0] == action
    q = st.steered_net(net, SITE, direction, 2.0, scale)(obs).detach()
    expected = q0 + torch.as_tensor(2.0 * scale * direction / np.linalg.norm(direction) @ weight.T).float()
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-4)


def test_alpha_zero_is_the_unsteered_network_bit_for_bit():
    net = tiny_net(seed=2)
    obs = random_obs(32, seed=1)
    direction = np.arange(8.0) - 3.0
    with torch.no_grad():
        unsteered = net(obs)
        steered = st.steered_net(net, "others_embedding.hook_post.1", direction, 0.0, 1.7)(obs)
        moved = st.steered_net(net, "others_embedding.hook_post.1", direction, 0.5, 1.7)(obs)
    assert torch.equal(steered, unsteered)
    assert not torch.allclose(moved, unsteered)                        # a per-vehicle site: every row moves
    np.testing.assert_array_equal(st.steered_policy(net, SITE, direction, 0.0, 1.0)(obs.numpy()),
                                  greedy(net, obs.numpy(), batch=1))


def test_alpha_zero_plays_the_unsteered_episodes():
    net = tiny_net(seed=4, heads=2)
    seeds = list(range(6))
    with toy_runner(1) as runner:
        plain = play(net, runner, seeds)
    with toy_runner(1) as runner:
        steered = play(st.steered_policy(net, SITE, np.ones(8), 0.0, 1.0), runner, seeds)
    assert steered == plain


def test_mean_difference_and_random_directions():
    acts = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 1.0], [9.0, 9.0]])
    action = np.array([SLOWER, SLOWER, FASTER, FASTER, IDLE])
    np.testing.assert_allclose(st.mean_difference_direction(acts, action), [2.0 - 1.0, 1.0 - 3.0])
    with pytest.raises(ValueError, match="no recorded row with action FASTER"):
        st.mean_difference_direction(acts, np.array([SLOWER] * 5))
    with pytest.raises(ValueError, match=r"\[rows, units\]"):
        st.mean_difference_direction(np.zeros((5, 2, 2)), action)
    randoms = st.random_directions(16, 3, seed=0)
    assert all(np.linalg.norm(r) == pytest.approx(1.0) for r in randoms)
    assert not np.allclose(randoms[0], randoms[1])
    np.testing.assert_array_equal(randoms[2], st.random_directions(16, 3, seed=0)[2])
    with pytest.raises(ValueError, match="at least 3"):
        st.random_directions(16, 2, seed=0)
    # equal norms: every direction is added at the same length α·scale
    for d in [*randoms, np.arange(16.0)]:
        assert float(st.steering_vector(d, 0.5, 4.0).norm()) == pytest.approx(2.0, rel=1e-6)


def test_probe_direction_is_the_unit_weight_vector():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((200, 3)) * np.array([1.0, 5.0, 1.0])
    episode = np.repeat(np.arange(20), 10)
    fit = pr.fit_probe(features, (features[:, 1] > 0).astype(int), episode, "binary")
    direction = st.probe_direction(fit)
    np.testing.assert_allclose(direction, fit.direction / np.linalg.norm(fit.direction))
    assert direction[1] > 0.9
    categorical = pr.fit_probe(features, np.argmax(features, axis=1), episode, "categorical")
    with pytest.raises(ValueError, match="categorical"):
        st.probe_direction(categorical)


def test_bad_alpha_grids_and_sites_fail_naming_them():
    assert validate_alphas([1.0, -2.0, 0.0]) == (-2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"steering.alphas = \[-1.0, 1.0\]: the grid must contain 0"):
        validate_alphas([-1.0, 1.0])
    with pytest.raises(ValueError, match="steering.alphas.*repeated"):
        validate_alphas([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="steering.alphas.*finite"):
        validate_alphas([0.0, float("nan")])
    with pytest.raises(KeyError, match="no activation named 'output_layer.hook_post.7'"):
        st.steered_policy(tiny_net(), "output_layer.hook_post.7", np.ones(8), 1.0, 1.0)
    with pytest.raises(ValueError, match="positive norm"):
        st.unit(np.zeros(4))
