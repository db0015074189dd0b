"""DQfD (Hester et al. 2018): the large-margin term and the loss against hand computations, the
demonstration store, mixed batches, pre-training, and determinism / resumption of a DQfD run."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from egolens.collector import Trainer
from egolens.config import validate_params
from egolens.demonstrations import Demonstrations, check_arrays, demonstration_arrays
from egolens.dqfd import DemoStore, DQfDAgent, large_margin
from egolens.model import EgoAttentionNetwork
from egolens.planner_steps import record_episode
from egolens.training import run_identity
from tests.conftest import ToyEnv, default_params, random_obs, reference_q, tiny_agent, toy_runner
from tests.test_dqn import check_deterministic_and_resumable

DQFD = {"enabled": True, "margin": 0.8, "weight": 1.0, "demo_fraction": 0.25, "pretrain_steps": 0}


def dqfd_agent(**overrides):
    """tiny_agent with DQfD on (n_steps 2, batch 4: one demonstration row per batch)."""
    dqfd = {**DQFD, **overrides.pop("dqfd", {})}
    return tiny_agent(n_steps=2, dqfd=dqfd, **overrides)


def toy_demonstrations(seeds=(3, 4, 6, 11), entities: int = 4) -> Demonstrations:
    """ToyEnv episodes (seed s lasts 2 + s % 4 steps) with actions cycling 2, 0, 1."""
    episodes = [record_episode(ToyEnv(entities), s, [(2, 0, 1)[t % 3] for t in range(2 + s % 4)]) for s in seeds]
    return check_arrays(demonstration_arrays(episodes, list(seeds)))


# ------------------------------------------------------------------------------ the margin term


def hand_margin(q_row: list[float], expert: int, margin: float) -> float:
    return max(q + (0.0 if a == expert else margin) for a, q in enumerate(q_row)) - q_row[expert]


def test_large_margin_matches_a_hand_computation_on_a_tiny_network():
    torch.manual_seed(0)
    net = EgoAttentionNetwork.from_config(tiny_agent(), 7, 3)
    obs = random_obs(6, entities=5, seed=1)
    q = net(obs)
    q_hand = reference_q(net.state_dict(), obs, heads=2).tolist()          # loop-by-loop forward pass
    action = torch.tensor([0, 1, 2, 2, 1, 0])
    demo = torch.tensor([True, True, True, False, False, False])
    got = large_margin(q, action, demo, 0.8).detach()
    for i in range(6):
        expected = hand_margin(q_hand[i], int(action[i]), 0.8) if demo[i] else 0.0
        assert float(got[i]) == pytest.approx(expected, abs=1e-5)
    assert (got[~demo] == 0.0).all()                                      # exactly zero off the demonstrations
    assert (got[demo] > 0).all()                         # none of these a_E leads by 0.8 (checked by hand above)


def test_large_margin_is_exactly_zero_where_the_demonstrated_action_leads_by_the_margin_and_positive_otherwise():
    q = torch.tensor([[3.0, 1.0, 2.0],     # a_E = 0 leads by 1.0 >= margin 0.8: zero
                      [0.5, 1.0, 0.2],     # a_E = 0 not the argmax: 1.0 + 0.8 − 0.5
                      [1.0, 1.5, 1.0],     # a_E = 1 leads by 0.5 < 0.8: 1.0 + 0.8 − 1.5
                      [0.0, 9.0, 0.0]])    # a_E = 2, not a demonstration: zero
    action = torch.tensor([0, 0, 1, 2])
    demo = torch.tensor([True, True, True, False])
    got = large_margin(q, action, demo, 0.8)
    assert float(got[0]) == 0.0 and float(got[3]) == 0.0
    assert got[1:3].tolist() == pytest.approx([1.3, 0.3])
    q.requires_grad_(True)
    large_margin(q, action, demo, 0.8).sum().backward()                  # pushes Q(a_E) up, the rival down
    assert q.grad.tolist() == [[0, 0, 0], [-1, 1, 0], [1, -1, 0], [0, 0, 0]]


# --------------------------------------------------------------------------------- the loss


class LookupQ(nn.Module):
    """Q(s, ·) = table[k] where k = obs[:, 0, 1] (the ego's second feature holds a state index)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.table[obs[:, 0, 1].long()]


def state(k: int) -> torch.Tensor:
    obs = torch.zeros(4, 7)
    obs[0, 0], obs[0, 1] = 1.0, float(k)
    return obs


def test_dqfd_loss_is_one_step_td_plus_n_step_td_plus_the_weighted_mean_margin_by_hand():
    cfg = dqfd_agent(gamma=0.5, dqfd={"weight": 2.0, "margin": 0.8})
    agent = DQfDAgent(cfg, seed=0, in_features=7, n_entities=4)
    online = [[1.0, 2.0, 0.0], [0.0, 0.5, 3.0], [2.0, 1.0, 1.5], [0.0, 0.0, 1.0]]
    target = [[4.0, 0.0, 1.0], [1.0, 2.0, 6.0], [0.5, 3.0, 2.0], [1.0, 5.0, 0.0]]
    agent.value_net, agent.target_net = LookupQ(online), LookupQ(target)
    batch = {"obs": torch.stack([state(0), state(2)]), "action": torch.tensor([1, 0]),
             "reward": torch.tensor([1.5, -1.0]), "next_obs": torch.stack([state(3), state(1)]),
             "terminal": torch.tensor([0.0, 1.0]), "steps": torch.tensor([2.0, 2.0]),
             "reward1": torch.tensor([1.0, 0.25]), "next_obs1": torch.stack([state(1), state(3)]),
             "terminal1": torch.tensor([0.0, 0.0])}
    demo = torch.tensor([False, True])
    loss = agent.dqfd_loss(batch, demo)
    # by hand: q = (Q(0)[1], Q(2)[0]) = (2.0, 2.0); double DQN: the online net picks, the target net values
    q = [2.0, 2.0]
    one = [1.0 + 0.5 * target[1][2], 0.25 + 0.5 * target[3][2]]          # online argmax at 1 is 2, at 3 is 2
    n = [1.5 + 0.25 * target[3][2], -1.0]                                 # γ² after 2 steps; terminal: no bootstrap
    td = sum((a - b) ** 2 for a, b in zip(q, one)) / 2 + sum((a - b) ** 2 for a, b in zip(q, n)) / 2
    margin = hand_margin(online[2], 0, 0.8)                               # the one demonstration row
    assert loss.item() == pytest.approx(td + 2.0 * margin)


# ------------------------------------------------------------------ store, batches, pre-training


def test_the_demo_store_holds_the_n_step_transitions_and_their_first_steps():
    demos = toy_demonstrations(seeds=(3, 4))            # 5 steps (truncated), then 2 steps (terminated)
    store = DemoStore(demos, n_steps=2, gamma=0.5, timeout_terminal=False)
    assert len(store) == 7
    r = demos.reward
    for t in range(7):
        last = t in (4, 6)                              # an episode's last step collapses alone
        expected = r[t] if last else r[t] + 0.5 * r[t + 1]
        assert float(store.reward[t]) == pytest.approx(expected, rel=1e-6)
        assert float(store.steps[t]) == (1.0 if last else 2.0)
        np.testing.assert_array_equal(store.next_obs[t].numpy(), demos.next_obs[t if last else t + 1])
        assert float(store.reward1[t]) == pytest.approx(r[t], rel=1e-6)
        np.testing.assert_array_equal(store.next_obs1[t].numpy(), demos.next_obs[t])
        np.testing.assert_array_equal(store.obs[t].numpy(), demos.obs[t])
    # the truncation (step 4) is not terminal; the 2-step row 5 reaches the termination, its first step does not
    assert store.terminal.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert store.terminal1.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert store.action.tolist() == demos.action.tolist()


def test_a_dqfd_batch_has_a_fixed_share_of_demonstrations_which_the_full_replay_never_overwrites():
    cfg = dqfd_agent(batch_size=8, memory_capacity=10, dqfd={"demo_fraction": 0.4})    # round(3.2) = 3 rows
    agent = DQfDAgent(cfg, seed=0, in_features=7, n_entities=4)
    demos = toy_demonstrations()
    agent.use_demonstrations(DemoStore(demos, 2, cfg.gamma, False))
    before = agent.demos.obs.clone()
    for k in range(25):                                  # 2.5 times the replay's capacity
        obs = np.full((4, 7), 100.0 + k, dtype=np.float32)
        agent.replay.add(obs, 1, 0.0, obs, False, 1, first=(0.0, obs, False))
    batch, demo = agent._dqfd_batch()
    assert demo.tolist() == [False] * 5 + [True] * 3
    assert (batch["obs"][:5, 0, 0] >= 115).all()                          # the agent's newest 10 transitions
    stored = {tuple(o.flatten().tolist()) for o in demos.obs}
    assert all(tuple(o.flatten().tolist()) in stored for o in batch["obs"][5:])
    assert torch.equal(agent.demos.obs, before)


def test_pretraining_takes_its_gradient_steps_on_demonstrations_alone_and_counts_them():
    cfg = dqfd_agent(target_update=3, dqfd={"pretrain_steps": 6})
    agent = DQfDAgent(cfg, seed=0, in_features=7, n_entities=4)
    agent.use_demonstrations(DemoStore(toy_demonstrations(), 2, cfg.gamma, False))
    start = copy.deepcopy(agent.value_net.state_dict())
    losses = agent.pretrain()
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert agent.updates == 6 and len(agent.replay) == 0 and agent.steps == 0
    assert any(not torch.equal(v, agent.value_net.state_dict()[k]) for k, v in start.items())
    for k, v in agent.target_net.state_dict().items():                   # copied at update 6
        assert torch.equal(v, agent.value_net.state_dict()[k]), k


def test_a_dqfd_trainer_needs_its_demonstrations_and_enough_of_them():
    with pytest.raises(ValueError, match="needs the demonstrations"):
        Trainer(dqfd_agent(), seed=0, episodes=2, num_envs=1, in_features=7, n_entities=4)
    with pytest.raises(ValueError, match="fewer than the 4 a batch draws"):
        Trainer(dqfd_agent(dqfd={"pretrain_steps": 5}), seed=0, episodes=2, num_envs=1, in_features=7, n_entities=4,
                demonstrations=toy_demonstrations(seeds=(4,)))                      # 2 steps
    agent = DQfDAgent(tiny_agent(), seed=0, in_features=7, n_entities=4)
    with pytest.raises(ValueError, match="dqfd.enabled is false"):
        agent.use_demonstrations(DemoStore(toy_demonstrations(), 1, 0.9, False))


@pytest.mark.parametrize("num_envs", [1, 2])
def test_a_dqfd_run_is_deterministic_and_resumes_to_the_same_bytes(num_envs):
    check_deterministic_and_resumable(dqfd_agent(dqfd={"pretrain_steps": 6}), num_envs,
                                      demonstrations=toy_demonstrations())


def test_a_dqfd_run_learns_differently_from_the_plain_dqn():
    def weights(cfg, **kwargs):
        trainer = Trainer(cfg, seed=3, episodes=12, num_envs=1, in_features=7, n_entities=4, **kwargs)
        with toy_runner(1) as envs:
            trainer.run(envs)
        return trainer.agent.value_net.state_dict()

    plain = weights(tiny_agent(n_steps=2))
    dqfd = weights(dqfd_agent(), demonstrations=toy_demonstrations())
    assert any(not torch.equal(v, dqfd[k]) for k, v in plain.items())


# ------------------------------------------------------------------------------------- params


@pytest.mark.parametrize("change, needle", [
    ({"n_steps": 1}, "agent.dqfd.enabled needs agent.n_steps >= 2"),
    ({"dqfd": {**DQFD, "demo_fraction": 0.001}}, "agent.dqfd.demo_fraction = 0.001 gives 0 demonstration rows"),
    ({"dqfd": {**DQFD, "demo_fraction": 0.999}}, "gives 64 demonstration rows of agent.batch_size = 64"),
    ({"dqfd": {**DQFD, "margin": 0.0}}, "agent.dqfd.margin = 0.0"),
    ({"dqfd": {**DQFD, "pretrain_steps": -1}}, "agent.dqfd.pretrain_steps = -1"),
])
def test_bad_dqfd_params_are_refused_naming_the_key(change, needle):
    raw = copy.deepcopy(default_params())
    raw["agent"]["dqfd"] = dict(DQFD)
    raw["agent"].update(change)
    with pytest.raises(ValueError, match=re.escape(needle)):
        validate_params(raw)


def test_dqfd_is_part_of_the_run_identity_only_when_on_and_then_with_its_demonstrations():
    raw = copy.deepcopy(default_params())
    off = run_identity(validate_params(raw))
    assert "dqfd" not in off["agent"] and "demonstrations" not in off
    raw["agent"]["dqfd"]["margin"] = 0.5
    assert run_identity(validate_params(raw)) == off                     # an off option's values change nothing
    raw["agent"]["dqfd"]["enabled"] = True
    on = validate_params(raw)
    with pytest.raises(ValueError, match="give their digest"):
        run_identity(on)
    identity = run_identity(on, "abc")
    assert identity["agent"]["dqfd"]["margin"] == 0.5 and identity["demonstrations"] == "abc"
