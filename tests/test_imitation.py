"""Behaviour cloning: one Adam step checked by hand, determinism, and the accuracy it reaches."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from egolens.config import AgentConfig, EnvConfig, ImitationConfig
from egolens.env import make_env
from egolens.imitation import action_accuracy, clone_policy, imitation_network
from egolens.model import EgoAttentionNetwork
from egolens.planner_steps import demonstrate
from tests.conftest import random_obs, reference_q, tiny_agent, tiny_net


def hand_labelled(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations [n, 6, 7] and a rule of them as actions: FASTER when the ego's x is positive,
    else SLOWER, IDLE when it is within 0.2 of zero (a set a small network can fit)."""
    obs = random_obs(n, entities=6, seed=seed).numpy()
    x = obs[:, 0, 1]
    actions = np.where(np.abs(x) < 0.2, 1, np.where(x > 0, 2, 0)).astype(np.int64)
    return obs, actions


def test_one_epoch_of_one_batch_is_one_adam_step_on_the_cross_entropy_computed_by_hand():
    net = imitation_network(tiny_agent(), 7, seed=0)
    twin = copy.deepcopy(net)
    before = copy.deepcopy(net.state_dict())
    obs, actions = hand_labelled(5)
    cfg = ImitationConfig(epochs=1, batch_size=5, lr=0.01, weight_decay=0.0)
    run, _ = clone_policy(net, obs, actions, cfg, seed=0)
    # by hand: the outputs are the loop-by-loop forward pass's, the loss −log softmax averaged over the
    # rows, its gradient taken on an untouched twin, and Adam's first step Δ = −lr·g / (|g| + eps)
    q = twin(torch.as_tensor(obs))
    torch.testing.assert_close(q.detach(), reference_q(before, torch.as_tensor(obs), heads=2), rtol=1e-5, atol=1e-6)
    nll = [-(q[i, a] - torch.log(torch.exp(q[i]).sum())) for i, a in enumerate(actions)]
    loss = sum(nll) / len(nll)
    loss.backward()
    assert run.epoch_loss[0] == pytest.approx(float(loss.detach()), rel=1e-5) and run.steps == 1
    grads = dict(twin.named_parameters())
    for name, value in net.state_dict().items():
        grad = grads[name].grad
        expected = before[name] - 0.01 * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)


def test_cloning_is_byte_deterministic_for_a_seed_and_starts_from_the_dqns_initialisation():
    obs, actions = hand_labelled(40)
    cfg = ImitationConfig(epochs=3, batch_size=8, lr=0.01, weight_decay=0.0)
    agent = tiny_agent()
    torch.manual_seed(7)
    dqn_init = EgoAttentionNetwork.from_config(agent, 7, 3).state_dict()
    nets = [imitation_network(agent, 7, seed=7) for _ in range(2)]
    for name, value in nets[0].state_dict().items():
        assert torch.equal(value, dqn_init[name])
    for net in nets:
        clone_policy(net, obs, actions, cfg, seed=7)
    other = imitation_network(agent, 7, seed=7)
    clone_policy(other, obs, actions, cfg, seed=8)                # same init, other batch order
    for name, value in nets[0].state_dict().items():
        assert torch.equal(value, nets[1].state_dict()[name])
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in nets[0].state_dict().items())


def test_cloning_fits_a_hand_labelled_set_and_accuracy_counts_by_hand():
    obs, actions = hand_labelled(60)
    net = imitation_network(tiny_agent(), 7, seed=0)
    cfg = ImitationConfig(epochs=300, batch_size=16, lr=0.01, weight_decay=0.0)
    run, _ = clone_policy(net, obs, actions, cfg, seed=0)
    assert run.epoch_loss[-1] < run.epoch_loss[0] and run.steps == 300 * math.ceil(60 / 16)
    accuracy = action_accuracy(net, obs, actions)
    with torch.no_grad():
        chosen = net(torch.as_tensor(obs)).argmax(dim=1).numpy()
    assert accuracy["all"] == pytest.approx(np.mean(chosen == actions)) and accuracy["all"] >= 0.95
    for a in range(3):
        assert accuracy[f"action{a}"] == pytest.approx(np.mean(chosen[actions == a] == a))


def test_accuracy_of_an_action_never_taken_is_nan_and_bad_shapes_are_refused():
    net = tiny_net()
    obs, _ = hand_labelled(4)
    assert math.isnan(action_accuracy(net, obs, np.zeros(4, dtype=np.int64))["action2"])
    with pytest.raises(ValueError, match="obs"):
        clone_policy(net, obs[0], np.zeros(1, dtype=np.int64), ImitationConfig(), seed=0)


@pytest.mark.slow
def test_cloning_reaches_095_training_accuracy_on_a_tiny_planner_set():
    """Three real planner episodes (two that brake, then go; about 45 s) and the reference network."""
    env = make_env(EnvConfig())
    steps = [demonstrate(env, s)[1] for s in (800_000_002, 800_000_003, 800_000_000)]
    obs = np.concatenate([s.obs for s in steps])
    actions = np.concatenate([s.action for s in steps])
    assert set(actions.tolist()) == {0, 2}
    net = imitation_network(AgentConfig(), 7, seed=0)
    clone_policy(net, obs, actions, ImitationConfig(epochs=100, batch_size=8, lr=1e-3, weight_decay=0.0), seed=0)
    assert action_accuracy(net, obs, actions)["all"] >= 0.95
