"""DQN as rl-agents' `DQNAgent` runs it with the intersection baseline (REFERENCE.md, 'DQN').

In the order the algorithm runs: epsilon schedule, replay buffer, double-DQN target, the
agent (act, update, target copy), then the training loop over (possibly parallel)
environments, which can stop at any checkpoint and resume to the same bytes.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egolens.config import SEED_STRIDE, AgentConfig, EpsilonConfig
from egolens.env import outcome
from egolens.model import EgoAttentionNetwork


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; make torch deterministic and single-threaded.

    Two threads made seeded runs differ and slowed updates when the other core was busy.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def epsilon(t: int, cfg: EpsilonConfig) -> float:
    """Exploration rate after t action steps: final + (start − final)·exp(−t/tau)."""
    return cfg.final + (cfg.start - cfg.final) * math.exp(-t / cfg.tau)


def training_env_seed(seed: int, episode: int) -> int:
    """Env seed of training episode `episode` of agent seed `seed` (disjoint across seeds)."""
    return seed * SEED_STRIDE + episode


class ReplayBuffer:
    """Uniform replay of transitions (s, a, r, s′, terminal), a ring of fixed capacity.

    obs, next_obs: [capacity, E, F] float32; action: [capacity] int64; reward, terminal: [capacity].
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]) -> None:
        self.capacity = capacity
        self.obs = torch.zeros((capacity, *obs_shape))
        self.next_obs = torch.zeros((capacity, *obs_shape))
        self.action = torch.zeros(capacity, dtype=torch.int64)
        self.reward = torch.zeros(capacity)
        self.terminal = torch.zeros(capacity)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        """Store one transition; truncation is not terminal (the value of s′ still counts)."""
        i = self.position
        self.obs[i] = torch.as_tensor(obs)
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.action[i] = int(action)
        self.reward[i] = float(reward)
        self.terminal[i] = float(terminal)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A uniform batch of `batch_size` distinct stored transitions (as rl-agents' random.sample)."""
        idx = torch.as_tensor(rng.choice(self.size, size=batch_size, replace=False))
        return {"obs": self.obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "next_obs": self.next_obs[idx], "terminal": self.terminal[idx]}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {"obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
                "action": self.action[:n].clone(), "reward": self.reward[:n].clone(),
                "terminal": self.terminal[:n].clone(), "position": self.position, "size": n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["size"]
        for key in ("obs", "next_obs", "action", "reward", "terminal"):
            getattr(self, key)[:n] = state[key]
        self.position, self.size = state["position"], n


def double_dqn_target(online: nn.Module, target: nn.Module, reward: torch.Tensor, next_obs: torch.Tensor,
                      terminal: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + γ·Q_target(s′, argmax_a′ Q_online(s′, a′))·(1 − terminal); shapes [B]."""
    with torch.no_grad():
        best = online(next_obs).argmax(dim=1, keepdim=True)       # [B, 1]
        next_q = target(next_obs).gather(1, best).squeeze(1)       # [B]
        return reward + gamma * (1.0 - terminal) * next_q


def clamp_gradients(net: nn.Module, bound: float) -> None:
    """Clamp every gradient element into [−bound, bound] (rl-agents' clamp, not norm clipping)."""
    for param in net.parameters():
        if param.grad is not None:
            param.grad.data.clamp_(-bound, bound)


class DQNAgent:
    """Online and target Q-networks, Adam, replay, ε-greedy; counters for the schedules."""

    def __init__(self, cfg: AgentConfig, seed: int, in_features: int, n_entities: int, n_actions: int = 3) -> None:
        self.cfg = cfg
        self.n_actions = n_actions
        torch.manual_seed(seed)
        self.value_net = EgoAttentionNetwork.from_config(cfg, in_features, n_actions)
        self.target_net = copy.deepcopy(self.value_net)
        self.target_net.eval()
        self.optimizer = torch.optim.Adam(self.value_net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.replay = ReplayBuffer(cfg.memory_capacity, (n_entities, in_features))
        self.rng = np.random.default_rng(seed)
        self.steps = 0     # action steps taken (the ε clock)
        self.updates = 0   # gradient steps taken (the target-copy clock)

    @property
    def epsilon(self) -> float:
        return epsilon(self.steps, self.cfg.epsilon)

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """obs: [N, E, F] -> argmax_a Q(obs, a): [N] int."""
        with torch.no_grad():
            return self.value_net(torch.as_tensor(obs)).argmax(dim=1).numpy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """ε-greedy actions for a batch of N envs; each counts as one action step. obs: [N, E, F]."""
        actions = self.greedy(obs)
        for i in range(len(actions)):
            if self.rng.random() < self.epsilon:
                actions[i] = self.rng.integers(self.n_actions)
            self.steps += 1
        return actions

    def update(self) -> float | None:
        """One gradient step on a replay batch; None while the replay holds less than a batch."""
        if len(self.replay) < self.cfg.batch_size:
            return None
        batch = self.replay.sample(self.cfg.batch_size, self.rng)
        q = self.value_net(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        target = double_dqn_target(self.value_net, self.target_net, batch["reward"], batch["next_obs"],
                                   batch["terminal"], self.cfg.gamma)
        loss = F.mse_loss(q, target)
        self.optimizer.zero_grad()
        loss.backward()
        clamp_gradients(self.value_net, self.cfg.grad_clip)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.cfg.target_update == 0:
            self.target_net.load_state_dict(self.value_net.state_dict())
        return float(loss.item())

    def state_dict(self) -> dict[str, Any]:
        return {"value_net": self.value_net.state_dict(), "target_net": self.target_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(),
                "rng": _rng_state(self.rng), "torch_rng": torch.get_rng_state(),
                "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value_net.load_state_dict(state["value_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = _rng_from_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.steps, self.updates = state["steps"], state["updates"]


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator state as plain types (big ints as strings, safe under weights_only)."""
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def _rng_from_state(saved: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": saved["bit_generator"],
            "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
            "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}


@dataclass
class EpisodeRecord:
    """One finished training episode; `loss` is the mean TD loss of the gradient steps taken
    since the previous episode ended (NaN before learning starts)."""

    episode: int
    env_seed: int
    ret: float
    length: int
    outcome: str
    epsilon: float
    loss: float
    steps: int
    updates: int


class Trainer:
    """Collect with N envs in lock-step, learn after every transition, record episodes.

    Episode k of agent seed s always runs on env seed s·SEED_STRIDE + k; episodes are handed
    to envs in the order they free up (lowest env index first), so a run is deterministic
    for a given N. `run` can stop at any checkpoint; a new Trainer loaded with that state
    continues to the same final bytes (in-progress episodes are restored by replaying their
    recorded actions from their seeds).
    """

    def __init__(self, cfg: AgentConfig, seed: int, episodes: int, num_envs: int,
                 in_features: int, n_entities: int, n_actions: int = 3) -> None:
        seed_everything(seed)
        self.seed, self.episodes, self.num_envs = seed, episodes, num_envs
        self.agent = DQNAgent(cfg, seed, in_features, n_entities, n_actions)
        self.initial_state_dict = copy.deepcopy(self.agent.value_net.state_dict())
        self.records: list[EpisodeRecord] = []
        self.next_episode = num_envs
        self.env_episode = list(range(num_envs))
        self.env_actions: list[list[int]] = [[] for _ in range(num_envs)]
        self.env_return = [0.0] * num_envs
        self.loss_sum, self.loss_count = 0.0, 0

    @property
    def done(self) -> bool:
        return len(self.records) >= self.episodes

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "records": [asdict(r) for r in self.records],
                "next_episode": self.next_episode, "env_episode": list(self.env_episode),
                "env_actions": [list(a) for a in self.env_actions], "env_return": list(self.env_return),
                "loss_sum": self.loss_sum, "loss_count": self.loss_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.records = [EpisodeRecord(**r) for r in state["records"]]
        self.next_episode = state["next_episode"]
        self.env_episode = list(state["env_episode"])
        self.env_actions = [list(a) for a in state["env_actions"]]
        self.env_return = list(state["env_return"])
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]

    def _seeds(self, envs: list[int]) -> list[int | None]:
        return [training_env_seed(self.seed, self.env_episode[i]) if i in envs else None
                for i in range(self.num_envs)]

    def _reset(self, envs: Any, which: list[int]) -> np.ndarray:
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[which] = True
        obs, _ = envs.reset(seed=self._seeds(which), options={"reset_mask": mask})
        return np.asarray(obs, dtype=np.float32)

    def restore_envs(self, envs: Any) -> np.ndarray:
        """Bring every env to its in-progress episode's current state; return obs [N, E, F].

        Each env is reset from its episode's seed and replays its recorded actions; an env
        with fewer actions starts later so all finish their replay on the same vector step.
        """
        everyone = list(range(self.num_envs))
        obs = self._reset(envs, everyone)
        lengths = [len(a) for a in self.env_actions]
        longest = max(lengths)
        for t in range(longest):
            starting = [i for i in everyone if longest - lengths[i] == t and t > 0]
            if starting:
                fresh = self._reset(envs, starting)
                obs[starting] = fresh[starting]
            actions = np.array([a[t - (longest - len(a))] if t >= longest - len(a) else 0
                                for a in self.env_actions])
            obs = np.asarray(envs.step(actions)[0], dtype=np.float32)
        idle = [i for i in everyone if lengths[i] == 0 and longest > 0]
        if idle:
            fresh = self._reset(envs, idle)
            obs[idle] = fresh[idle]
        return obs

    def run(self, envs: Any, on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
            checkpoint_every: int = 50, progress: Callable[[EpisodeRecord], None] | None = None) -> list[EpisodeRecord]:
        """Train until `episodes` episodes have finished; return their records in finish order.

        envs: a gymnasium vector env of `num_envs` sub-envs with autoreset disabled.
        on_checkpoint(state) is called every `checkpoint_every` finished episodes.
        """
        obs = self.restore_envs(envs)
        agent = self.agent
        while not self.done:
            actions = agent.act(obs)
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            next_obs = np.asarray(next_obs, dtype=np.float32)
            for i in range(self.num_envs):
                agent.replay.add(obs[i], int(actions[i]), float(rewards[i]), next_obs[i], bool(terminated[i]))
                self.env_actions[i].append(int(actions[i]))
                self.env_return[i] += float(rewards[i])
            for _ in range(self.num_envs):
                loss = agent.update()
                if loss is not None:
                    self.loss_sum += loss
                    self.loss_count += 1
            ended = [i for i in range(self.num_envs) if terminated[i] or truncated[i]]
            crossed = False
            for i in ended:
                record = self._finish(i, bool(terminated[i]), bool(truncated[i]), bool(infos["crashed"][i]))
                if progress is not None:
                    progress(record)
                crossed |= len(self.records) % checkpoint_every == 0
                if self.done:
                    return self.records
            if ended:
                fresh = self._reset(envs, ended)
                next_obs[ended] = fresh[ended]
            obs = next_obs
            if crossed and on_checkpoint is not None:
                on_checkpoint(self.state_dict())
        return self.records

    def _finish(self, i: int, terminated: bool, truncated: bool, crashed: bool) -> EpisodeRecord:
        agent = self.agent
        record = EpisodeRecord(
            episode=self.env_episode[i], env_seed=training_env_seed(self.seed, self.env_episode[i]),
            ret=self.env_return[i], length=len(self.env_actions[i]),
            outcome=outcome(terminated, truncated, crashed), epsilon=agent.epsilon,
            loss=self.loss_sum / self.loss_count if self.loss_count else float("nan"),
            steps=agent.steps, updates=agent.updates)
        self.records.append(record)
        self.loss_sum, self.loss_count = 0.0, 0
        self.env_episode[i] = self.next_episode
        self.next_episode += 1
        self.env_actions[i] = []
        self.env_return[i] = 0.0
        return record



def training_summary(records: list[EpisodeRecord], window: int = 100) -> dict[str, float | int]:
    """Headline numbers of a run: totals and the rates over its last `window` episodes."""
    last = records[-window:]
    return {
        "episodes": len(records),
        "steps": records[-1].steps if records else 0,
        "updates": records[-1].updates if records else 0,
        "final_epsilon": round(records[-1].epsilon, 6) if records else 1.0,
        f"return_last{window}": round(float(np.mean([r.ret for r in last])), 6) if last else 0.0,
        f"success_last{window}": round(float(np.mean([r.outcome == "arrived" for r in last])), 6) if last else 0.0,
        f"collision_last{window}": round(float(np.mean([r.outcome == "collision" for r in last])), 6) if last else 0.0,
    }
