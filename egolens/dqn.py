"""DQN as rl-agents' `DQNAgent` runs it with the intersection baseline (README, "The network and the DQN").

In the order the algorithm runs: seeding, epsilon schedule, replay buffer, double-DQN target,
n-step returns, the agent (act, update, target copy). The training loop over (possibly
parallel) environments, which can stop at any checkpoint and resume to the same bytes, is
`egolens.collector.Trainer`.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egolens.config import SEED_STRIDE, AgentConfig, EpsilonConfig
from egolens.episodes import greedy
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
    """Uniform replay of transitions (s, a, r, s′, terminal, k), a ring of fixed capacity.

    A transition may span k ≥ 1 env steps (n-step returns): r is then the discounted sum of
    its k rewards and s′ the state k steps later.
    obs, next_obs: [capacity, E, F] float32; action: [capacity] int64; reward, terminal, steps: [capacity].
    With `one_step` (DQfD) each transition also keeps its first step alone: reward1, terminal1
    [capacity] and next_obs1 [capacity, E, F].
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], one_step: bool = False) -> None:
        self.capacity = capacity
        self.obs = torch.zeros((capacity, *obs_shape))
        self.next_obs = torch.zeros((capacity, *obs_shape))
        self.action = torch.zeros(capacity, dtype=torch.int64)
        self.reward = torch.zeros(capacity)
        self.terminal = torch.zeros(capacity)
        self.steps = torch.ones(capacity)
        self.keys = ("obs", "next_obs", "action", "reward", "terminal", "steps")
        if one_step:
            self.reward1 = torch.zeros(capacity)
            self.next_obs1 = torch.zeros((capacity, *obs_shape))
            self.terminal1 = torch.zeros(capacity)
            self.keys += ONE_STEP_KEYS
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminal: bool,
            steps: int = 1, first: tuple[float, np.ndarray, bool] | None = None) -> None:
        """Store one transition spanning `steps` env steps; `first` = its first step's (reward,
        next_obs, terminal), kept only by a buffer made with `one_step`."""
        i = self.position
        self.obs[i] = torch.as_tensor(obs)
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.action[i] = int(action)
        self.reward[i] = float(reward)
        self.terminal[i] = float(terminal)
        self.steps[i] = float(steps)
        if "reward1" in self.keys:
            if first is None:
                raise ValueError("a one-step replay needs each transition's first step")
            self.reward1[i], self.next_obs1[i], self.terminal1[i] = float(first[0]), torch.as_tensor(first[1]), \
                float(first[2])
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A uniform batch of `batch_size` distinct stored transitions (as rl-agents' random.sample)."""
        idx = torch.as_tensor(rng.choice(self.size, size=batch_size, replace=False))
        return {key: getattr(self, key)[idx] for key in self.keys}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {**{key: getattr(self, key)[:n].clone() for key in self.keys}, "position": self.position, "size": n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["size"]
        for key in self.keys:
            getattr(self, key)[:n] = state[key]
        self.position, self.size = state["position"], n


def double_dqn_target(online: nn.Module, target: nn.Module, reward: torch.Tensor, next_obs: torch.Tensor,
                      terminal: torch.Tensor, gamma: float, steps: torch.Tensor | None = None) -> torch.Tensor:
    """r + γᵏ·Q_target(s′, argmax_a′ Q_online(s′, a′))·(1 − terminal); shapes [B] (k = steps, default 1)."""
    with torch.no_grad():
        best = online(next_obs).argmax(dim=1, keepdim=True)       # [B, 1]
        next_q = target(next_obs).gather(1, best).squeeze(1)       # [B]
        return reward + _discount(gamma, steps) * (1.0 - terminal) * next_q


def dqn_target(target: nn.Module, reward: torch.Tensor, next_obs: torch.Tensor, terminal: torch.Tensor,
               gamma: float, steps: torch.Tensor | None = None) -> torch.Tensor:
    """r + γᵏ·max_a′ Q_target(s′, a′)·(1 − terminal) (plain DQN); shapes [B]."""
    with torch.no_grad():
        next_q = target(next_obs).max(dim=1).values
        return reward + _discount(gamma, steps) * (1.0 - terminal) * next_q


def _discount(gamma: float, steps: torch.Tensor | None) -> float | torch.Tensor:
    if steps is None or bool((steps == 1).all()):
        return gamma            # the one-step target, bit for bit as before n-step returns existed
    return torch.pow(torch.tensor(gamma), steps)


class NStepWindow:
    """Turns each env's stream of one-step transitions into n-step transitions.

    push() returns the transitions ready for the replay: once an env has n steps in its window
    the oldest leaves as (s_t, a_t, Σ_{i<n} γ^i r_{t+i}, s_{t+n}, terminal_{t+n-1}, n); when an
    episode ends every transition left in the window leaves, each collapsed to the end. With
    n = 1 every transition leaves at once, unchanged.
    """

    def __init__(self, n: int, gamma: float, num_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.windows: list[list[tuple[np.ndarray, int, float, np.ndarray, bool]]] = [[] for _ in range(num_envs)]

    def push(self, env: int, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
             terminal: bool, ended: bool) -> list[tuple[np.ndarray, int, float, np.ndarray, bool, int]]:
        return [collapsed for collapsed, _ in self.push_with_first(env, obs, action, reward, next_obs, terminal,
                                                                     ended)]

    def push_with_first(self, env: int, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
                        terminal: bool, ended: bool
                        ) -> list[tuple[tuple[np.ndarray, int, float, np.ndarray, bool, int],
                                        tuple[float, np.ndarray, bool]]]:
        """`push`, each leaving transition paired with its first step alone: (reward, next_obs, terminal)."""
        window = self.windows[env]
        window.append((obs, action, reward, next_obs, terminal))
        ready = []
        while window and (ended or len(window) >= self.n):
            ready.append((self._collapse(window), window[0][2:]))
            window.pop(0)
        return ready

    def _collapse(self, window: list[tuple[np.ndarray, int, float, np.ndarray, bool]]
                  ) -> tuple[np.ndarray, int, float, np.ndarray, bool, int]:
        obs, action, ret, _, _ = window[0]
        discount = 1.0
        for _, _, reward, _, _ in window[1:]:
            discount *= self.gamma
            ret += discount * reward
        _, _, _, next_obs, terminal = window[-1]
        return obs, action, ret, next_obs, terminal, len(window)

    def state_dict(self) -> dict[str, Any]:
        return {"windows": [[(torch.as_tensor(o), a, r, torch.as_tensor(n), t) for o, a, r, n, t in w]
                            for w in self.windows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.windows = [[(o.numpy(), a, r, n.numpy(), t) for o, a, r, n, t in w] for w in state["windows"]]


ONE_STEP_KEYS = ("reward1", "next_obs1", "terminal1")
"""What a DQfD batch holds besides the n-step transition: its first step alone (1-step TD)."""


def clamp_gradients(params: nn.Module | list[torch.Tensor], bound: float) -> None:
    """Clamp every gradient element of a net (or of a list of its parameters) into
    [−bound, bound] (rl-agents' clamp, not norm clipping)."""
    params = list(params.parameters()) if isinstance(params, nn.Module) else params
    grads = [param.grad for param in params if param.grad is not None]
    if grads:
        torch._foreach_clamp_min_(grads, -bound)
        torch._foreach_clamp_max_(grads, bound)


class DQNAgent:
    """Online and target Q-networks, Adam, replay, ε-greedy; counters for the schedules."""

    def __init__(self, cfg: AgentConfig, seed: int, in_features: int, n_entities: int, n_actions: int = 3) -> None:
        self.cfg = cfg
        self.n_actions = n_actions
        torch.manual_seed(seed)
        self.value_net = EgoAttentionNetwork.from_config(cfg, in_features, n_actions)
        self.target_net = copy.deepcopy(self.value_net)
        self.target_net.eval()
        self.params = list(self.value_net.parameters())   # listed once: named_modules() costs ~5% of an update
        self.optimizer = torch.optim.Adam(self.value_net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          foreach=True)
        self.replay = ReplayBuffer(cfg.memory_capacity, (n_entities, in_features), one_step=cfg.dqfd.enabled)
        self.rng = np.random.default_rng(seed)
        self.steps = 0     # action steps taken (the ε clock)
        self.options: dict[int, tuple[int, int]] = {}   # env -> (action, steps left) of its running option
        self.updates = 0   # gradient steps taken (the target-copy clock)

    @property
    def epsilon(self) -> float:
        return epsilon(self.steps, self.cfg.epsilon)

    def greedy(self, obs: np.ndarray, batch: int | None = None) -> np.ndarray:
        """obs: [N, E, F] -> argmax_a Q(obs, a): [N] int.

        Each row's action is computed on its own, as row 0 of a batch of `batch` (default N)
        copies of that observation: which observations share a forward pass can change the last
        bits of a row on some CPUs (MKL), so by construction no env's action depends on another's.
        """
        return greedy(self.value_net, obs, batch)

    def act(self, obs: np.ndarray, envs: Sequence[int] | None = None) -> np.ndarray:
        """ε-greedy actions for a batch of N envs (`envs`, default 0..N−1, one per row); each
        counts as one action step. obs: [N, E, F]."""
        actions = self.greedy(obs)
        for i, explore in enumerate(self.explore(range(len(actions)) if envs is None else envs)):
            if explore is not None:
                actions[i] = explore
        return actions

    def explore(self, envs: Sequence[int]) -> list[int | None]:
        """The exploration draws of one action step of each env in `envs`, in order: a random
        action, or None where the greedy one is taken. They need no observation, so they can be
        made first.

        With probability ε an env starts an option: a uniformly drawn action kept for a duration
        (one step, or zeta-distributed: `ExplorationConfig`); no ε draw is made while it runs.
        Options run on across an env's episode boundary: the draws of a step are made before
        it is known whether the env's previous step ended its episode.
        """
        draws: list[int | None] = []
        for env in envs:
            action, left = self.options.pop(env, (None, 0))
            if left == 0:
                action = None
                if self.rng.random() < self.epsilon:
                    action, left = int(self.rng.integers(self.n_actions)), self._option_length()
            if action is not None and left > 1:
                self.options[env] = (action, left - 1)
            draws.append(action)
            self.steps += 1
        return draws

    def _option_length(self) -> int:
        cfg = self.cfg.exploration
        if cfg.duration == "one":
            return 1
        return int(min(self.rng.zipf(cfg.zeta_mu), cfg.max_duration))

    def _target(self, reward: torch.Tensor, next_obs: torch.Tensor, terminal: torch.Tensor,
                steps: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.double:
            return double_dqn_target(self.value_net, self.target_net, reward, next_obs, terminal, self.cfg.gamma,
                                     steps)
        return dqn_target(self.target_net, reward, next_obs, terminal, self.cfg.gamma, steps)

    def _td(self, q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(q, target) if self.cfg.loss == "l2" else F.smooth_l1_loss(q, target)

    def update(self) -> float | None:
        """One gradient step on a replay batch; None while the replay holds less than a batch."""
        if len(self.replay) < self.cfg.batch_size:
            return None
        batch = self.replay.sample(self.cfg.batch_size, self.rng)
        q = self.value_net(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        target = self._target(batch["reward"], batch["next_obs"], batch["terminal"], batch["steps"])
        return self._step(self._td(q, target))

    def _step(self, loss: torch.Tensor) -> float:
        """One Adam step on `loss` (gradients clamped), the target copy when due; the loss's value."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite TD loss {loss.item()} at gradient step {self.updates + 1} "
                                     f"(lr {self.cfg.lr}, gamma {self.cfg.gamma}): training stopped")
        self.optimizer.zero_grad()
        loss.backward()
        clamp_gradients(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        bad = []
        if not torch.isfinite(torch.stack([p.sum() for p in self.params])).all():   # cheap first look
            bad = [name for name, p in self.value_net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"non-finite weights {bad} after gradient step {self.updates + 1} "
                                     f"(lr {self.cfg.lr}): training stopped")
        self.updates += 1
        if self.updates % self.cfg.target_update == 0:
            self.target_net.load_state_dict(self.value_net.state_dict())
        return float(loss.item())

    def state_dict(self) -> dict[str, Any]:
        return {"value_net": self.value_net.state_dict(), "target_net": self.target_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(),
                "rng": _rng_state(self.rng), "torch_rng": torch.get_rng_state(),
                "steps": self.steps, "updates": self.updates, "options": _options_state(self.options)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value_net.load_state_dict(state["value_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = _rng_from_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.steps, self.updates = state["steps"], state["updates"]
        self.options = {int(env): (a, left) for env, (a, left) in state.get("options", {}).items()}


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator state as plain types (big ints as strings, safe under weights_only)."""
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def _options_state(options: Mapping[int, tuple[int, int]]) -> dict[str, list[int]]:
    """Running options as plain types (string keys, safe under weights_only)."""
    return {str(env): [a, left] for env, (a, left) in options.items()}


def _rng_from_state(saved: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": saved["bit_generator"],
            "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
            "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}
