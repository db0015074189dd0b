"""DQN pieces against hand computations, and the trainer's bookkeeping on a toy env."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from egolens.collector import Trainer, TrainingEpisode
from egolens.config import AgentConfig, EpsilonConfig
from egolens.dqn import (
    DQNAgent,
    NStepWindow,
    ReplayBuffer,
    clamp_gradients,
    double_dqn_target,
    dqn_target,
    epsilon,
)
from egolens.episodes import outcome
from tests.conftest import ToyEnv, random_obs, slow_toy_runner, tiny_agent, toy_runner


class TableQ(nn.Module):
    """Q(s, ·) read from a table; the state index is obs[:, 0]."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.table[obs[:, 0].long()]


def test_double_dqn_target_lets_the_online_net_choose_and_the_target_net_evaluate():
    online = TableQ([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]])    # argmax: s0 -> 1, s1 -> 2
    target = TableQ([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    next_obs = torch.tensor([[0.0], [1.0]])
    reward = torch.tensor([1.0, -1.0])
    y = double_dqn_target(online, target, reward, next_obs, torch.zeros(2), gamma=0.5)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.5 * 20.0, -1.0 + 0.5 * 60.0]))
    # Not max_a Q_target (30, 60) and not Q_online's own value (5, 4).


def test_terminal_next_states_do_not_bootstrap_but_truncated_ones_do():
    online = TableQ([[0.0, 1.0, 0.0]])
    target = TableQ([[0.0, 8.0, 0.0]])
    next_obs = torch.zeros(2, 1)
    y = double_dqn_target(online, target, torch.tensor([2.0, 2.0]), next_obs, torch.tensor([1.0, 0.0]), gamma=0.95)
    torch.testing.assert_close(y, torch.tensor([2.0, 2.0 + 0.95 * 8.0]))


def test_trainer_stores_termination_not_truncation_as_terminal():
    cfg = tiny_agent(memory_capacity=500)
    trainer = Trainer(cfg, seed=0, episodes=12, num_envs=1, in_features=7, n_entities=4)
    trainer.run(toy_runner(1))
    replay = trainer.agent.replay
    ends = {r.env_seed: r for r in trainer.records}
    # Episode seeds 0..11 run back to back; find each episode's last transition.
    position = 0
    for seed in range(12):
        length = 2 + seed % 4
        position += length
        assert ends[seed].length == length
        assert replay.terminal[position - 1].item() == float(seed % 2 == 0)
        assert replay.terminal[position - length:position - 1].sum().item() == 0.0
        expected = "collision" if seed % 6 == 0 else ("arrived" if seed % 2 == 0 else "timeout")
        assert ends[seed].outcome == expected


@pytest.mark.parametrize("t, value", [(0, 1.0), (15000, 0.05 + 0.95 * math.exp(-1)),
                                      (45000, 0.05 + 0.95 * math.exp(-3)), (10**7, 0.05)])
def test_epsilon_schedule_matches_the_reference(t, value):
    assert epsilon(t, EpsilonConfig()) == pytest.approx(value, abs=1e-12)


def test_target_network_is_copied_every_target_update_gradient_steps():
    agent = DQNAgent(tiny_agent(target_update=3), seed=0, in_features=7, n_entities=4)
    obs, _ = ToyEnv().reset(seed=1)
    for i in range(8):
        agent.replay.add(obs, i % 3, 1.0, obs, False)

    def same() -> bool:
        return all(torch.equal(a, b) for a, b in zip(agent.value_net.state_dict().values(),
                                                       agent.target_net.state_dict().values()))
    history = []
    for _ in range(6):
        agent.update()
        history.append(same())
    assert history == [False, False, True, False, False, True]


def test_gradient_elements_are_clamped_not_rescaled():
    layer = nn.Linear(2, 2)
    layer.weight.grad = torch.tensor([[5.0, -0.3], [-7.0, 0.9]])
    layer.bias.grad = torch.tensor([1.5, -1.5])
    clamp_gradients(layer, 1.0)
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[1.0, -0.3], [-1.0, 0.9]]))
    torch.testing.assert_close(layer.bias.grad, torch.tensor([1.0, -1.0]))


def test_update_applies_the_clamp(monkeypatch):
    agent = DQNAgent(tiny_agent(), seed=0, in_features=7, n_entities=4)
    obs = np.ones((4, 7), dtype=np.float32)
    for _ in range(4):
        agent.replay.add(obs, 0, 1e6, obs, True)                  # a huge TD error
    seen = []
    monkeypatch.setattr(agent.optimizer, "step", lambda: seen.append(
        max(p.grad.abs().max().item() for p in agent.value_net.parameters())))
    agent.update()
    assert seen and seen[0] <= agent.cfg.grad_clip


def test_learning_waits_for_a_full_batch():
    agent = DQNAgent(tiny_agent(batch_size=4), seed=0, in_features=7, n_entities=4)
    obs = np.ones((4, 7), dtype=np.float32)
    for _ in range(3):
        agent.replay.add(obs, 0, 0.0, obs, False)
        assert agent.update() is None
    agent.replay.add(obs, 0, 0.0, obs, False)
    assert agent.update() is not None


def test_replay_is_a_ring_and_samples_distinct_stored_transitions():
    replay = ReplayBuffer(5, (1, 1))
    for i in range(8):
        replay.add(np.full((1, 1), i), i % 3, float(i), np.full((1, 1), i), False)
    assert len(replay) == 5
    assert sorted(replay.reward.tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    batch = replay.sample(5, np.random.default_rng(0))
    assert sorted(batch["reward"].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]


def final_state(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.agent.value_net.state_dict().items()}


@pytest.mark.parametrize("num_envs", [1, 2, 3])
def test_training_is_deterministic_and_resumes_to_the_same_result(num_envs):
    check_deterministic_and_resumable(tiny_agent(), num_envs)


def check_deterministic_and_resumable(cfg, num_envs: int, runner=None, **trainer_kwargs) -> None:
    """Two runs give the same records and weights; a run killed after its second checkpoint and
    resumed from it (with fresh envs, as after a crash) ends in the same bytes. runner: a
    factory of the runner (default: toy envs); trainer_kwargs go to every Trainer."""
    def trainer() -> Trainer:
        return Trainer(cfg, seed=3, episodes=30, num_envs=num_envs, in_features=7, n_entities=4, **trainer_kwargs)

    def run(t: Trainer, **kwargs) -> None:
        with (runner() if runner else toy_runner(num_envs)) as envs:
            t.run(envs, **kwargs)

    full = trainer()
    run(full)
    again = trainer()
    run(again)
    assert repr(again.records) == repr(full.records)
    assert sorted(r.episode for r in full.records) == list(range(30))     # every episode played once

    saved = []

    class KilledError(Exception):
        pass

    def kill_after_second_checkpoint(state: dict) -> None:
        saved.append(state)
        if len(saved) == 2:
            raise KilledError

    cut = trainer()
    with pytest.raises(KilledError):
        run(cut, on_checkpoint=kill_after_second_checkpoint, checkpoint_every=7)
    resumed = trainer()
    resumed.load_state_dict(saved[-1])
    assert 14 <= len(resumed.records) < 30
    run(resumed, checkpoint_every=7)
    assert repr(resumed.records) == repr(full.records)
    for k, v in final_state(full).items():
        assert torch.equal(final_state(resumed)[k], v), k
    assert resumed.agent.steps == full.agent.steps and resumed.agent.updates == full.agent.updates


def test_episode_env_seeds_are_disjoint_across_agent_seeds():
    a = Trainer(tiny_agent(), seed=0, episodes=5, num_envs=2, in_features=7, n_entities=4)
    b = Trainer(tiny_agent(), seed=1, episodes=5, num_envs=2, in_features=7, n_entities=4)
    for trainer in (a, b):
        with toy_runner(2) as runner:
            trainer.run(runner)
    assert not {r.env_seed for r in a.records} & {r.env_seed for r in b.records}


# ------------------------------------------------------------------------------ recipe options

def test_plain_dqn_target_takes_the_target_nets_max():
    target = TableQ([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    y = dqn_target(target, torch.tensor([1.0, -1.0]), torch.tensor([[0.0], [1.0]]), torch.tensor([0.0, 1.0]), 0.5)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.5 * 30.0, -1.0]))


def test_n_step_targets_discount_the_bootstrap_by_gamma_to_the_k():
    online = TableQ([[0.0, 1.0, 0.0]])
    target = TableQ([[0.0, 8.0, 0.0]])
    y = double_dqn_target(online, target, torch.tensor([2.0, 2.0]), torch.zeros(2, 1), torch.zeros(2), 0.5,
                          steps=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(y, torch.tensor([2.0 + 0.5 * 8.0, 2.0 + 0.125 * 8.0]))


def test_n_step_window_collapses_rewards_and_flushes_at_the_episode_end():
    window = NStepWindow(n=3, gamma=0.5, num_envs=2)
    obs = [np.full((1, 1), t, dtype=np.float32) for t in range(6)]
    assert window.push(0, obs[0], 0, 1.0, obs[1], False, False) == []
    assert window.push(1, obs[0], 2, 7.0, obs[1], False, False) == []       # another env's window is separate
    assert window.push(0, obs[1], 1, 2.0, obs[2], False, False) == []
    ready = window.push(0, obs[2], 2, 4.0, obs[3], False, False)
    (s, a, r, s2, terminal, k), = ready
    assert (s[0, 0], a, r, s2[0, 0], terminal, k) == (0, 0, 1.0 + 0.5 * 2.0 + 0.25 * 4.0, 3, False, 3)
    ready = window.push(0, obs[3], 0, 8.0, obs[4], True, True)               # the episode ends: flush
    assert [(t[0][0, 0], t[2], t[3][0, 0], t[4], t[5]) for t in ready] == [
        (1, 2.0 + 0.5 * 4.0 + 0.25 * 8.0, 4, True, 3), (2, 4.0 + 0.5 * 8.0, 4, True, 2), (3, 8.0, 4, True, 1)]
    one = NStepWindow(n=1, gamma=0.5, num_envs=1)
    assert [t[5] for t in one.push(0, obs[0], 1, 3.0, obs[1], False, False)] == [1]


def test_huber_loss_and_timeout_terminal_are_applied():
    cfg = tiny_agent(memory_capacity=500, loss="smooth_l1", timeout_terminal=True)
    trainer = Trainer(cfg, seed=0, episodes=6, num_envs=1, in_features=7, n_entities=4)
    calls = []
    original = torch.nn.functional.smooth_l1_loss

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    torch.nn.functional.smooth_l1_loss = spy
    try:
        with toy_runner(1) as runner:
            trainer.run(runner)
    finally:
        torch.nn.functional.smooth_l1_loss = original
    assert calls and len(calls) == trainer.agent.updates
    replay = trainer.agent.replay
    ends = np.cumsum([2 + s % 4 for s in range(6)]) - 1
    assert replay.terminal[:len(replay)].nonzero().flatten().tolist() == ends.tolist()   # truncations too


def test_training_stops_on_a_non_finite_loss():
    trainer = Trainer(tiny_agent(lr=1e30), seed=0, episodes=30, num_envs=1, in_features=7, n_entities=4)
    with toy_runner(1) as runner, pytest.raises(FloatingPointError, match="non-finite TD loss"):
        trainer.run(runner)


@pytest.mark.parametrize("overrides", [{"n_steps": 3}, {"double": False, "loss": "smooth_l1", "gamma": 0.99}])
def test_recipes_stay_deterministic_and_resumable(overrides):
    check_deterministic_and_resumable(tiny_agent(**overrides), num_envs=2)


def test_training_stops_when_a_weight_becomes_non_finite(monkeypatch):
    agent = DQNAgent(tiny_agent(), seed=0, in_features=7, n_entities=4)
    obs, _ = ToyEnv().reset(seed=1)
    for i in range(8):
        agent.replay.add(obs, i % 3, 1.0, obs, False)
    step = agent.optimizer.step

    def poisoned_step(*args, **kwargs):
        step(*args, **kwargs)
        with torch.no_grad():
            agent.value_net.output_layer.predict.bias[0] = float("inf")

    monkeypatch.setattr(agent.optimizer, "step", poisoned_step)
    with pytest.raises(FloatingPointError, match=r"non-finite weights \['output_layer.predict.bias'\]"):
        agent.update()


# ------------------------------------------------------------------------------ N envs: rounds, pipelined

def plain_round_loop(cfg, num_envs: int, episodes: int, seed: int = 3) -> Trainer:
    """The spec of training with N envs, on in-process toy envs, one round at a time: every
    playing env acts on one batch of observations, every env steps, the gradient steps the
    previous round owes run, the transitions are stored and the ended episodes recorded in
    env order, the ended envs start the episodes they were offered."""
    t = Trainer(cfg, seed=seed, episodes=episodes, num_envs=num_envs, in_features=7, n_entities=4)
    agent, schedule = t.agent, t.schedule
    envs = [ToyEnv() for _ in range(num_envs)]
    obs = {i: envs[i].reset(seed=t.env_seed(e))[0] for i, e in schedule.start().items()}
    owed, losses, ret, length = 0, [], [0.0] * num_envs, [0] * num_envs
    while not schedule.done:
        active, offers = schedule.active, schedule.offers()
        actions = agent.act(np.stack([obs[i] for i in active]), active)
        losses += [loss for loss in (agent.update() for _ in range(owed)) if loss is not None]
        owed, ended = 0, []
        for i, action in zip(active, actions):
            o, reward, terminated, truncated, info = envs[i].step(int(action))
            terminal = terminated or (truncated and cfg.timeout_terminal)
            for transition in t.window.push(i, obs[i], int(action), reward, o, terminal, terminated or truncated):
                agent.replay.add(*transition)
            ret[i] += reward
            length[i] += 1
            owed += 1
            obs[i] = o
            if terminated or truncated:
                ended.append((i, outcome(terminated, truncated, info["crashed"])))
                if i in offers:
                    obs[i] = envs[i].reset(seed=t.env_seed(offers[i]))[0]
        for i, how in ended:
            e = schedule.playing[i]
            t.records.append(TrainingEpisode(episode=e, env_seed=t.env_seed(e), ret=ret[i], length=length[i],
                                             outcome=how, epsilon=agent.epsilon,
                                             loss=sum(losses) / len(losses) if losses else math.nan,
                                             steps=agent.steps, updates=agent.updates))
            losses, ret[i], length[i] = [], 0.0, 0
        schedule.advance([i for i, _ in ended], offers)
    for _ in range(owed):
        agent.update()
    return t


def same_run(a: Trainer, b: Trainer) -> bool:
    def optimizer_tensors(t: Trainer) -> list[torch.Tensor]:
        return [v for s in t.agent.optimizer.state_dict()["state"].values() for v in s.values()]
    return (repr(a.records) == repr(b.records)
            and all(torch.equal(x, y) for x, y in zip(final_state(a).values(), final_state(b).values()))
            and all(torch.equal(x, y) for x, y in zip(optimizer_tensors(a), optimizer_tensors(b)))
            and (a.agent.steps, a.agent.updates) == (b.agent.steps, b.agent.updates))


@pytest.mark.parametrize("delays", [[0.0, 0.0], [0.003, 0.0], [0.0, 0.002, 0.003]])
@pytest.mark.parametrize("overrides", [{}, {"n_steps": 3, "gamma": 0.9}])
def test_pipelined_training_equals_the_plain_round_loop(delays, overrides):
    cfg = tiny_agent(**overrides)
    pipelined = Trainer(cfg, seed=3, episodes=40, num_envs=len(delays), in_features=7, n_entities=4)
    with slow_toy_runner(delays) as runner:
        pipelined.run(runner)
    assert same_run(pipelined, plain_round_loop(cfg, len(delays), 40))


def test_more_envs_than_episodes_equals_the_plain_round_loop():
    trainer = Trainer(tiny_agent(), seed=3, episodes=2, num_envs=3, in_features=7, n_entities=4)
    with slow_toy_runner([0.001, 0.0, 0.002]) as runner:
        trainer.run(runner)
    assert same_run(trainer, plain_round_loop(tiny_agent(), 3, 2))


@pytest.mark.parametrize("fast", [0, 1])
def test_an_env_whose_step_is_done_steps_on_while_the_other_is_still_stepping(tmp_path, fast):
    """The faster env starts its round r+1 step before the slower has finished round r. (Env 1
    does so only where env 0's running step cannot change the episode env 1 starts next, e.g.
    once every episode has started: env 0 takes the lowest unstarted episode when it ends.)"""
    logs = [tmp_path / "env0.log", tmp_path / "env1.log"]
    delays = [0.0, 0.0]
    delays[1 - fast] = 0.03
    trainer = Trainer(tiny_agent(), seed=3, episodes=20, num_envs=2, in_features=7, n_entities=4)
    with slow_toy_runner(delays, logs) as runner:
        trainer.run(runner)
    steps = [[tuple(map(float, line.split())) for line in log.read_text().splitlines()] for log in logs]
    rounds = min(len(s) for s in steps)
    assert rounds > 20
    ahead = [r for r in range(1, rounds) if steps[fast][r][0] < steps[1 - fast][r - 1][1]]
    assert ahead, f"env {fast} never started a step before env {1 - fast} had finished the round before"


def test_an_env_stepping_ahead_without_its_next_episode_is_reset_by_a_call_of_its_own_to_the_same_bytes():
    """Env 1, the faster, steps ahead while env 0's running step may still change the episode env 1
    starts next; when such a step ends env 1's episode, env 1 is reset once the offer is known."""
    resets = []
    trainer = Trainer(tiny_agent(), seed=3, episodes=30, num_envs=2, in_features=7, n_entities=4)
    with slow_toy_runner([0.02, 0.0]) as runner:
        send_reset = runner.send_reset
        runner.send_reset = lambda i, seed: resets.append(i) or send_reset(i, seed)
        trainer.run(runner)
    assert resets and set(resets) <= {1}
    assert same_run(trainer, plain_round_loop(tiny_agent(), 2, 30))


@pytest.mark.parametrize("delays", [[0.0, 0.004], [0.003, 0.0, 0.001]])
def test_pipelined_training_resumes_to_the_same_bytes_when_a_checkpoint_falls_while_an_env_is_ahead(delays):
    check_deterministic_and_resumable(tiny_agent(), len(delays), lambda: slow_toy_runner(delays))


def test_an_envs_greedy_action_is_computed_from_copies_of_its_own_observation_alone(monkeypatch):
    """By construction no env's greedy action depends on which other envs share the forward pass
    (on some CPUs a row's last bits do): every batch the network sees holds one observation."""
    agent = DQNAgent(AgentConfig(), seed=0, in_features=7, n_entities=6)
    seen = []
    forward = agent.value_net.forward
    monkeypatch.setattr(agent.value_net, "forward", lambda x: seen.append(x.clone()) or forward(x))
    obs = random_obs(3, seed=1).numpy()
    actions = agent.greedy(obs)
    assert [tuple(batch.shape[:1]) for batch in seen] == [(3,)] * 3
    assert all(torch.equal(batch, batch[:1].expand_as(batch)) for batch in seen)
    with torch.no_grad():
        alone = [int(forward(torch.as_tensor(o)[None].repeat(3, 1, 1))[0].argmax()) for o in obs]
    assert actions.tolist() == alone


# ------------------------------------------------------------------------------ exploration: ε and εz

def reference_epsilon_greedy_draws(cfg, seed: int, steps: int) -> list[int | None]:
    """Today's ε-greedy written out: per step one uniform draw against ε, then a uniform action."""
    rng, draws = np.random.default_rng(seed), []
    for t in range(steps):
        draws.append(int(rng.integers(3)) if rng.random() < epsilon(t, cfg.epsilon) else None)
    return draws


def test_options_of_duration_one_are_epsilon_greedy_draw_for_draw():
    cfg = tiny_agent(epsilon={"start": 1.0, "final": 0.05, "tau": 40.0})
    agent = DQNAgent(cfg, seed=5, in_features=7, n_entities=4)
    draws = [d for _ in range(100) for d in agent.explore([0, 1])]
    assert draws == reference_epsilon_greedy_draws(cfg, seed=5, steps=200)
    assert agent.options == {}


def test_zeta_options_repeat_their_action_and_make_no_epsilon_draw_while_running():
    cfg = tiny_agent(epsilon={"start": 1.0, "final": 1.0, "tau": 40.0},
                     exploration={"duration": "zeta", "zeta_mu": 2.0, "max_duration": 6})
    agent = DQNAgent(cfg, seed=5, in_features=7, n_entities=4)
    rng = np.random.default_rng(5)   # the agent's own draws, replayed by hand
    expected, lengths = [], []
    while len(expected) < 300:
        assert rng.random() < 1.0
        action, length = int(rng.integers(3)), int(min(rng.zipf(2.0), 6))
        expected += [action] * length
        lengths.append(length)
    draws = [agent.explore([0])[0] for _ in range(300)]
    assert draws == expected[:300]
    assert max(lengths) == 6 and min(lengths) == 1 and len(set(lengths)) > 2   # heavy-tailed, capped


def test_each_env_keeps_its_own_option():
    cfg = tiny_agent(epsilon={"start": 1.0, "final": 1.0, "tau": 40.0},
                     exploration={"duration": "zeta", "zeta_mu": 1.5, "max_duration": 50})
    agent = DQNAgent(cfg, seed=2, in_features=7, n_entities=4)
    first = agent.explore([0, 1])
    assert agent.options                       # an option of more than one step is running
    for env, (action, _) in list(agent.options.items()):
        assert action == first[env]
        assert agent.explore([env]) == [action]


@pytest.mark.parametrize("num_envs", [1, 2])
def test_zeta_exploration_is_deterministic_and_resumable(num_envs):
    cfg = tiny_agent(exploration={"duration": "zeta", "zeta_mu": 2.0, "max_duration": 4})
    check_deterministic_and_resumable(cfg, num_envs)


def test_pipelined_zeta_exploration_equals_the_plain_round_loop():
    cfg = tiny_agent(exploration={"duration": "zeta", "zeta_mu": 2.0, "max_duration": 4})
    pipelined = Trainer(cfg, seed=3, episodes=40, num_envs=2, in_features=7, n_entities=4)
    with slow_toy_runner([0.003, 0.0]) as runner:
        pipelined.run(runner)
    assert same_run(pipelined, plain_round_loop(cfg, 2, 40))
