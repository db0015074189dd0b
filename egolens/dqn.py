"""DQN as rl-agents' `DQNAgent` runs it with the intersection baseline (REFERENCE.md, 'DQN').

In the order the algorithm runs: epsilon schedule, replay buffer, double-DQN target, the
agent (act, update, target copy), then the training loop over (possibly parallel)
environments, which can stop at any checkpoint and resume to the same bytes.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egolens.config import SEED_STRIDE, AgentConfig, EpsilonConfig
from egolens.demonstrations import Demonstrations
from egolens.env import outcome
from egolens.model import EgoAttentionNetwork
from egolens.runner import EnvRunner, EpisodeSchedule, Transition


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


class DemoStore:
    """Demonstration transitions for DQfD, kept apart from the replay and never overwritten.

    Built from a demonstration table by the trainer's own n-step window (so a demonstration
    transition is what the agent would have stored had it played those actions), each with its
    first step alone. Tensors as a `ReplayBuffer` with `one_step`, of length N (the table's steps).
    """

    def __init__(self, demos: Demonstrations, n_steps: int, gamma: float, timeout_terminal: bool) -> None:
        window = NStepWindow(n_steps, gamma, 1)
        rows = []
        for t in range(len(demos)):
            terminal = bool(demos.terminated[t]) or (bool(demos.truncated[t]) and timeout_terminal)
            rows += window.push_with_first(0, demos.obs[t], int(demos.action[t]), float(demos.reward[t]),
                                           demos.next_obs[t], terminal, bool(demos.ended[t]))
        if window.windows[0]:
            raise ValueError("the demonstrations' last episode does not end")
        self.obs = torch.as_tensor(np.stack([r[0][0] for r in rows]))
        self.action = torch.as_tensor([r[0][1] for r in rows], dtype=torch.int64)
        self.reward = torch.as_tensor([r[0][2] for r in rows], dtype=torch.float32)
        self.next_obs = torch.as_tensor(np.stack([r[0][3] for r in rows]))
        self.terminal = torch.as_tensor([float(r[0][4]) for r in rows])
        self.steps = torch.as_tensor([float(r[0][5]) for r in rows])
        self.reward1 = torch.as_tensor([r[1][0] for r in rows], dtype=torch.float32)
        self.next_obs1 = torch.as_tensor(np.stack([r[1][1] for r in rows]))
        self.terminal1 = torch.as_tensor([float(r[1][2]) for r in rows])

    def __len__(self) -> int:
        return len(self.action)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """`batch_size` distinct demonstration transitions, uniformly (as `ReplayBuffer.sample`)."""
        idx = torch.as_tensor(rng.choice(len(self), size=batch_size, replace=False))
        return {key: getattr(self, key)[idx] for key in ("obs", "next_obs", "action", "reward", "terminal", "steps",
                                                          *ONE_STEP_KEYS)}


def large_margin(q: torch.Tensor, action: torch.Tensor, demo: torch.Tensor, margin: float) -> torch.Tensor:
    """DQfD's supervised term per row: max_a[Q(s,a) + l(a_E,a)] − Q(s,a_E), l = margin for a ≠ a_E
    and 0 for a = a_E, on demonstration rows; exactly 0 on the others.

    q: [B, A] Q-values; action: [B] the demonstrator's a_E; demo: [B] bool -> [B] (≥ 0; 0 where
    Q(s,a_E) already beats every other action by at least the margin).
    """
    bonus = torch.full_like(q, margin).scatter(1, action[:, None], 0.0)
    chosen = q.gather(1, action[:, None]).squeeze(1)
    per_row = (q + bonus).max(dim=1).values - chosen
    return torch.where(demo, per_row, torch.zeros_like(per_row))


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
        self.demos: DemoStore | None = None   # DQfD's demonstrations (`use_demonstrations`)
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
        size = len(obs) if batch is None else batch
        with torch.no_grad():
            rows = [self.value_net(torch.as_tensor(o)[None].expand(size, *o.shape))[0] for o in obs]
            return torch.stack(rows).argmax(dim=1).numpy()

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

    def use_demonstrations(self, demos: DemoStore) -> None:
        """Keep `demos` for DQfD (agent.dqfd must be enabled); checks there are enough for a batch."""
        if not self.cfg.dqfd.enabled:
            raise ValueError("demonstrations given but agent.dqfd.enabled is false")
        need = self.cfg.batch_size if self.cfg.dqfd.pretrain_steps else self.cfg.dqfd_rows
        if len(demos) < need:
            raise ValueError(f"{len(demos)} demonstration transitions, fewer than the {need} a batch draws "
                             "(demonstrations.episodes too small for agent.batch_size)")
        self.demos = demos

    def _target(self, reward: torch.Tensor, next_obs: torch.Tensor, terminal: torch.Tensor,
                steps: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.double:
            return double_dqn_target(self.value_net, self.target_net, reward, next_obs, terminal, self.cfg.gamma,
                                     steps)
        return dqn_target(self.target_net, reward, next_obs, terminal, self.cfg.gamma, steps)

    def _td(self, q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(q, target) if self.cfg.loss == "l2" else F.smooth_l1_loss(q, target)

    def dqfd_loss(self, batch: dict[str, torch.Tensor], demo: torch.Tensor) -> torch.Tensor:
        """1-step TD + n-step TD on every row + weight · mean large margin over the demonstration rows.

        batch: a one-step batch (`ReplayBuffer` with one_step, or `DemoStore`), B rows; demo: [B] bool.
        """
        q_all = self.value_net(batch["obs"])                                        # [B, A]
        q = q_all.gather(1, batch["action"][:, None]).squeeze(1)
        n_step = self._target(batch["reward"], batch["next_obs"], batch["terminal"], batch["steps"])
        one_step = self._target(batch["reward1"], batch["next_obs1"], batch["terminal1"], None)
        margin = large_margin(q_all, batch["action"], demo, self.cfg.dqfd.margin).sum() / demo.sum()
        return self._td(q, one_step) + self._td(q, n_step) + self.cfg.dqfd.weight * margin

    def _dqfd_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The agent's rows, then round(demo_fraction · batch_size) demonstration rows; demo mask [B]."""
        assert self.demos is not None
        rows = self.cfg.dqfd_rows
        own = self.replay.sample(self.cfg.batch_size - rows, self.rng)
        demos = self.demos.sample(rows, self.rng)
        batch = {key: torch.cat([own[key], demos[key]]) for key in own}
        return batch, torch.arange(self.cfg.batch_size) >= self.cfg.batch_size - rows

    def pretrain(self) -> list[float]:
        """DQfD's pre-training: agent.dqfd.pretrain_steps gradient steps on demonstration batches alone."""
        if self.demos is None:
            raise ValueError("pre-training needs demonstrations (use_demonstrations)")
        losses = []
        for _ in range(self.cfg.dqfd.pretrain_steps):
            batch = self.demos.sample(self.cfg.batch_size, self.rng)
            losses.append(self._step(self.dqfd_loss(batch, torch.ones(self.cfg.batch_size, dtype=torch.bool))))
        return losses

    def update(self) -> float | None:
        """One gradient step on a replay batch; None while the replay holds less than a batch.
        With demonstrations (DQfD) the batch mixes both and the loss is `dqfd_loss`."""
        if len(self.replay) < self.cfg.batch_size:
            return None
        if self.demos is not None:
            return self._step(self.dqfd_loss(*self._dqfd_batch()))
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


RESUME_FORMAT = 2
"""Version of `Trainer.state_dict`'s layout (part of a resume state's fingerprint). A state without
running exploration options (written before they existed) loads as one with none."""


class Trainer:
    """Collect with N envs, learn one gradient step per transition, record episodes.

    Episode k of agent seed s always runs on env seed s·SEED_STRIDE + k; episodes are handed
    to envs by an `EpisodeSchedule` (deterministic for a given N). With one env the loop is
    the reference algorithm: act, step, store, one gradient step.

    With N > 1 envs (one worker process each) the algorithm runs in rounds. Round r: every
    playing env gets an ε-greedy action (a greedy one is row 0 of the network applied to a
    batch of copies of the env's observation, one per playing env; the exploration draws are
    made in env order); the gradient
    steps owed for round r−1's transitions run; round r's transitions are stored in env order
    and finished episodes recorded. So each gradient step samples a replay that lacks the N
    newest transitions, every action is chosen by the network after all gradient steps owed
    so far, and the total number of gradient steps is the same as with one env (the last ones
    run after the final step). The rounds fix the order of every draw and weight change, not
    the timing: round r's gradient steps run while the simulators step, and an env whose step
    is done starts its round r+1 step at once, before a slower env has finished round r
    (`_Pipeline`). No number changes, because an action needs only the round's ε draws (they
    need no observation), its own env's observation (computed in a batch of copies of it alone,
    so no other env's observation can touch its bits), the weights
    after round r's gradient steps, and the episode the env starts if its step ends one.

    `run` can stop at any checkpoint; a new Trainer loaded with that state continues to the
    same final bytes (in-progress episodes are restored by replaying their recorded actions
    from their seeds).

    With agent.dqfd enabled, `demonstrations` (required then) go to a `DemoStore` and `run`
    pre-trains on them before the first env step (DQfD).
    """

    def __init__(self, cfg: AgentConfig, seed: int, episodes: int, num_envs: int,
                 in_features: int, n_entities: int, n_actions: int = 3,
                 demonstrations: Demonstrations | None = None) -> None:
        seed_everything(seed)
        self.seed, self.episodes, self.num_envs = seed, episodes, num_envs
        self.agent = DQNAgent(cfg, seed, in_features, n_entities, n_actions)
        self.initial_state_dict = copy.deepcopy(self.agent.value_net.state_dict())
        if cfg.dqfd.enabled:
            if demonstrations is None:
                raise ValueError("agent.dqfd.enabled needs the demonstrations (the demonstrations stage's output)")
            self.agent.use_demonstrations(DemoStore(demonstrations, cfg.n_steps, cfg.gamma, cfg.timeout_terminal))
        self.records: list[EpisodeRecord] = []
        self.schedule = EpisodeSchedule(episodes, num_envs)
        self.env_actions: list[list[int]] = [[] for _ in range(num_envs)]
        self.env_return = [0.0] * num_envs
        self.window = NStepWindow(cfg.n_steps, cfg.gamma, num_envs)
        self.owed_updates = 0
        self.loss_sum, self.loss_count = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "records": [asdict(r) for r in self.records],
                "schedule": self.schedule.state_dict(), "env_actions": [list(a) for a in self.env_actions],
                "env_return": list(self.env_return), "window": self.window.state_dict(),
                "owed_updates": self.owed_updates,
                "loss_sum": self.loss_sum, "loss_count": self.loss_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.records = [EpisodeRecord(**r) for r in state["records"]]
        self.schedule.load_state_dict(state["schedule"])
        self.env_actions = [list(a) for a in state["env_actions"]]
        self.env_return = list(state["env_return"])
        self.window.load_state_dict(state["window"])
        self.owed_updates = state["owed_updates"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]

    def env_seed(self, episode: int) -> int:
        return training_env_seed(self.seed, episode)

    def restore_envs(self, runner: EnvRunner) -> dict[int, np.ndarray]:
        """Start (or, after a resume, replay) every env's episode; env -> current obs [E, F]."""
        if not self.schedule.playing:
            return runner.reset({i: self.env_seed(e) for i, e in self.schedule.start().items()})
        return runner.replay({i: (self.env_seed(e), self.env_actions[i])
                              for i, e in enumerate(self.schedule.playing) if e is not None})

    def _learn(self) -> None:
        """The gradient steps owed for the transitions stored so far."""
        for _ in range(self.owed_updates):
            loss = self.agent.update()
            if loss is not None:
                self.loss_sum += loss
                self.loss_count += 1
        self.owed_updates = 0

    def run(self, runner: EnvRunner, on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
            checkpoint_every: int = 50, progress: Callable[[EpisodeRecord], None] | None = None) -> list[EpisodeRecord]:
        """Train until `episodes` episodes have finished; return their records in finish order.

        runner: an `EnvRunner` of `num_envs` envs. on_checkpoint(state) is called every
        `checkpoint_every` finished episodes (at the end of a round, the state a resume needs).
        """
        if runner.num_envs != self.num_envs:
            raise ValueError(f"runner has {runner.num_envs} envs, the trainer was built for {self.num_envs}")
        if self.agent.demos is not None and not self.schedule.playing and not self.records:
            self.agent.pretrain()      # before the first env step only (a resumed run is past it)
        obs = self.restore_envs(runner)
        if self.num_envs == 1:
            self._run_one(runner, obs, on_checkpoint, checkpoint_every, progress)
        else:
            _Pipeline(self, runner, obs).run(on_checkpoint, checkpoint_every, progress)
        self._learn()
        return self.records

    def _run_one(self, runner: EnvRunner, obs: dict[int, np.ndarray],
                 on_checkpoint: Callable[[dict[str, Any]], None] | None, checkpoint_every: int,
                 progress: Callable[[EpisodeRecord], None] | None) -> None:
        """The reference loop of one env: act, step, store, learn."""
        agent, schedule = self.agent, self.schedule
        while not schedule.done:
            action = int(agent.act(obs[0][None])[0])
            offers = schedule.offers()
            runner.step_async({0: action}, {i: self.env_seed(e) for i, e in offers.items()})
            step = runner.step_wait()[0]
            self._store(0, obs[0], action, step)
            obs[0] = _next_obs(step)
            self._learn()
            if step.ended:
                self._close_round([0], {0: step}, offers, agent.steps, on_checkpoint, checkpoint_every, progress,
                                  self.state_dict)

    def _store(self, i: int, obs: np.ndarray, action: int, step: Transition) -> None:
        """Env i's transition into its n-step window (and what leaves it into the replay)."""
        agent = self.agent
        terminal = step.terminated or (step.truncated and agent.cfg.timeout_terminal)
        for transition, first in self.window.push_with_first(i, obs, action, step.reward, step.obs, terminal,
                                                             step.ended):
            agent.replay.add(*transition, first=first)
        self.env_actions[i].append(action)
        self.env_return[i] += step.reward
        self.owed_updates += 1

    def _close_round(self, active: list[int], results: dict[int, Transition], offers: dict[int, int],
                     steps: int, on_checkpoint: Callable[[dict[str, Any]], None] | None, checkpoint_every: int,
                     progress: Callable[[EpisodeRecord], None] | None,
                     state: Callable[[], dict[str, Any]]) -> None:
        """Record the episodes that ended this round in env order (`steps`: the ε clock after the
        round's actions), hand out the next episodes, and checkpoint with `state()` when due."""
        ended = [i for i in active if results[i].ended]
        crossed = False
        for i in ended:
            record = self._finish(i, results[i], steps)
            if progress is not None:
                progress(record)
            crossed |= len(self.records) % checkpoint_every == 0
        self.schedule.advance(ended, offers)
        if crossed and on_checkpoint is not None and not self.schedule.done:
            on_checkpoint(state())

    def _finish(self, i: int, last: Transition, steps: int) -> EpisodeRecord:
        agent = self.agent
        episode = self.schedule.playing[i]
        assert episode is not None
        record = EpisodeRecord(
            episode=episode, env_seed=self.env_seed(episode), ret=self.env_return[i], length=len(self.env_actions[i]),
            outcome=outcome(last.terminated, last.truncated, last.crashed), epsilon=epsilon(steps, agent.cfg.epsilon),
            loss=self.loss_sum / self.loss_count if self.loss_count else float("nan"),
            steps=steps, updates=agent.updates)
        self.records.append(record)
        self.loss_sum, self.loss_count = 0.0, 0
        self.env_actions[i] = []
        self.env_return[i] = 0.0
        return record


class _Pipeline:
    """The rounds of `Trainer` with N > 1 envs, run so that no simulator waits for another.

    Round r is open while its steps run. As soon as its actions are all sent, the gradient
    steps owed for round r−1 run (the learner works while the simulators step), and then the
    ε draws of round r+1 are made (in env order; they need no observation). When env i's
    round-r result is in, env i gets its round r+1 action and steps again, provided what that
    action depends on is known: round r+1's draws, how many envs play round r+1 (the batch
    its greedy row is computed in) and the episode it starts if its step ends one. When every
    round-r result is in, the round closes: transitions are stored in env order, episodes
    recorded, next episodes handed out, the remaining round r+1 actions chosen and sent. Every
    draw and weight change happens in the order the plain round loop makes them, so the bytes
    are the same; only the waiting goes. An env is at most one round ahead of the slowest.
    """

    def __init__(self, trainer: Trainer, runner: EnvRunner, obs: dict[int, np.ndarray]) -> None:
        self.trainer, self.runner, self.agent, self.schedule = trainer, runner, trainer.agent, trainer.schedule
        self.obs = obs                                        # env -> obs its round-r action was chosen on
        self.active: list[int] = []                           # envs playing round r, in env order
        self.offers: dict[int, int] = {}                      # round r's episode offers
        self.actions: dict[int, int] = {}                     # round r's actions (all sent)
        self.results: dict[int, Transition] = {}              # round r's results received so far
        self.draws: dict[int, int | None] = {}                # env -> its round r+1 ε draw, once made (env order)
        self.early: dict[int, tuple[int, int | None]] = {}    # env -> its round r+1 (action, offer), sent
        self.ahead: dict[int, Transition] = {}                # round r+1 results of early envs
        self.learned = False
        self.snapshot: dict[str, Any] = {}                    # ε clock and RNGs when round r's learning ended

    def run(self, on_checkpoint: Callable[[dict[str, Any]], None] | None, checkpoint_every: int,
            progress: Callable[[EpisodeRecord], None] | None) -> None:
        trainer = self.trainer
        self._open_round()
        while True:
            if not self.learned:
                trainer._learn()
                self.learned = True
                self.snapshot = {"steps": self.agent.steps, "options": _options_state(self.agent.options),
                                 "rng": _rng_state(self.agent.rng),
                                 "torch_rng": torch.get_rng_state()}
                self._act_early()
            if len(self.results) < len(self.active):
                for i, result in self.runner.receive().items():
                    (self.ahead if i in self.early else self.results)[i] = result
                self._act_early()
                continue
            for i in self.active:
                trainer._store(i, self.obs[i], self.actions[i], self.results[i])
            trainer._close_round(self.active, self.results, self.offers, self.snapshot["steps"], on_checkpoint,
                                 checkpoint_every, progress, self._round_end_state)
            if self.schedule.done:
                return
            for i in self.active:
                self.obs[i] = _next_obs(self.results[i])
            self._open_round()

    def _open_round(self) -> None:
        """The next round becomes round r: its actions not sent early are chosen and sent."""
        self.active, self.offers = self.schedule.active, self.schedule.offers()
        if not self.draws:
            self.draws = dict(zip(self.active, self.agent.explore(self.active)))
        elif list(self.draws) != self.active or any(self.offers.get(i) != o for i, (_, o) in self.early.items()):
            raise RuntimeError("the round's envs or episode offers differ from those foreseen")   # never expected
        rest = [i for i in self.active if i not in self.early]
        chosen = dict(zip(rest, self._actions(rest, self.obs)))
        for i in rest:
            self.runner.send(i, chosen[i], self._env_seed(self.offers.get(i)))
        self.actions = {i: chosen[i] if i in chosen else self.early[i][0] for i in self.active}   # env order
        self.results, self.early, self.ahead, self.draws = self.ahead, {}, {}, {}
        self.learned = False

    def _actions(self, envs: list[int], obs: Mapping[int, np.ndarray]) -> list[int]:
        """The actions of `envs` on their observations obs[i] [E, F]: the round's exploration
        draws, and greedy ones each computed in a batch of as many copies as the round has envs."""
        greedy = [i for i in envs if self.draws[i] is None]
        best: dict[int, int] = {}
        if greedy:
            rows = np.stack([obs[i] for i in greedy])
            best = dict(zip(greedy, self.agent.greedy(rows, batch=len(self.draws)).tolist()))
        return [self.draws[i] if self.draws[i] is not None else int(best[i]) for i in envs]

    def _act_early(self) -> None:
        """Send round r+1 steps to the envs whose action is already determined."""
        if not self.learned:
            return
        foreseen = self._next_round()
        if foreseen is None:
            return
        active, offers = foreseen
        if not self.draws:
            self.draws = dict(zip(active, self.agent.explore(active)))
        for i in active:
            if i in self.early or i not in self.results or i not in offers:
                continue
            action = self._actions([i], {i: _next_obs(self.results[i])})[0]
            self.runner.send(i, action, self._env_seed(offers[i]))
            self.early[i] = (action, offers[i])

    def _next_round(self) -> tuple[list[int], dict[int, int | None]] | None:
        """Round r+1's envs and those of their episode offers that round r's missing results
        cannot change; None while the envs of round r+1 are not known yet.

        An env still stepping keeps playing if it has an offer; given that, an env's next offer
        is the k-th lowest unstarted episode for a fixed k, and every missing result that ends
        an episode removes one more from the unstarted ones. So the offer lies between the one
        computed as if no missing step ended an episode and the one as if all did.
        """
        pending = [i for i in self.active if i not in self.results]
        if any(i not in self.offers for i in pending):
            return None
        ended = [i for i in self.active if i in self.results and self.results[i].ended]
        outcomes = []
        for extra in ([], pending):
            schedule = EpisodeSchedule(self.schedule.total, self.schedule.num_envs)
            schedule.load_state_dict(self.schedule.state_dict())
            schedule.advance(ended + extra, self.offers)
            outcomes.append((schedule.active, schedule.offers()))
        (active, low), (_, high) = outcomes
        return active, {i: low.get(i) for i in active if low.get(i) == high.get(i)}

    def _env_seed(self, offer: int | None) -> int | None:
        return None if offer is None else self.trainer.env_seed(offer)

    def _round_end_state(self) -> dict[str, Any]:
        """The trainer's state at the end of round r as the plain round loop has it: without
        the draws made early for round r+1 (a resume makes them again)."""
        state = self.trainer.state_dict()
        state["agent"].update(self.snapshot)
        return state


def _next_obs(step: Transition) -> np.ndarray:
    """The observation an env's next action is chosen on (the new episode's, after a reset)."""
    return step.reset_obs if step.reset_obs is not None else step.obs


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
