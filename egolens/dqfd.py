"""DQfD (Hester et al. 2018) on top of `egolens.dqn`: demonstrations kept apart from the replay,
a fixed share of every batch, and the loss 1-step TD + n-step TD + λ·large margin on demonstration
rows, with optional pre-training on demonstrations alone. `DQfDAgent` is the DQN agent the trainer
uses when agent.dqfd is enabled; the plain agent is untouched by it.
"""

from __future__ import annotations

import numpy as np
import torch

from egolens.config import AgentConfig
from egolens.demonstrations import Demonstrations
from egolens.dqn import ONE_STEP_KEYS, DQNAgent, NStepWindow


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


class DQfDAgent(DQNAgent):
    """`DQNAgent` whose gradient steps, once demonstrations are given (`use_demonstrations`), mix
    them into every batch and add DQfD's terms (`dqfd_loss`)."""

    def __init__(self, cfg: AgentConfig, seed: int, in_features: int, n_entities: int, n_actions: int = 3) -> None:
        super().__init__(cfg, seed, in_features, n_entities, n_actions)
        self.demos: DemoStore | None = None

    def use_demonstrations(self, demos: DemoStore) -> None:
        """Keep `demos` for DQfD (agent.dqfd must be enabled); checks there are enough for a batch."""
        if not self.cfg.dqfd.enabled:
            raise ValueError("demonstrations given but agent.dqfd.enabled is false")
        need = self.cfg.batch_size if self.cfg.dqfd.pretrain_steps else self.cfg.dqfd_rows
        if len(demos) < need:
            raise ValueError(f"{len(demos)} demonstration transitions, fewer than the {need} a batch draws "
                             "(demonstrations.episodes too small for agent.batch_size)")
        self.demos = demos

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
        """One gradient step on a batch of the replay and the demonstrations, with `dqfd_loss`
        (the plain DQN step before demonstrations are given); None while the replay holds less
        than a batch."""
        if len(self.replay) < self.cfg.batch_size:
            return None
        if self.demos is None:
            return super().update()
        return self._step(self.dqfd_loss(*self._dqfd_batch()))
