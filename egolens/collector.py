"""The training loop: collect with N envs, learn one gradient step per transition, record episodes.

`Trainer` runs `egolens.dqn.DQNAgent` on an `EnvRunner`. With one env it is the plain loop (act,
step, store, learn). With N > 1 envs the algorithm runs in rounds, and `_Pipeline` runs them so
that no simulator waits for another: the learner works while the simulators step, and an env
whose step is done steps on before a slower env has finished the round. Every draw and weight
change happens in the order of the plain round loop, so the bytes are those of that loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from egolens.config import AgentConfig
from egolens.demonstrations import Demonstrations
from egolens.dqfd import DemoStore, DQfDAgent
from egolens.dqn import (
    DQNAgent,
    NStepWindow,
    _options_state,
    _rng_state,
    epsilon,
    seed_everything,
    training_env_seed,
)
from egolens.episodes import Episode, EpisodeSchedule, outcome
from egolens.runner import EnvRunner, Transition


@dataclass(kw_only=True)
class TrainingEpisode(Episode):
    """One finished training episode: its index in the run (`episode`) and the counters when it
    ended; `loss` is the mean TD loss of the gradient steps taken since the previous episode
    ended (NaN before learning starts)."""

    episode: int
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
        if cfg.dqfd.enabled and demonstrations is None:
            raise ValueError("agent.dqfd.enabled needs the demonstrations (the demonstrations stage's output)")
        self.agent = (DQfDAgent if cfg.dqfd.enabled else DQNAgent)(cfg, seed, in_features, n_entities, n_actions)
        if isinstance(self.agent, DQfDAgent):
            self.agent.use_demonstrations(DemoStore(demonstrations, cfg.n_steps, cfg.gamma, cfg.timeout_terminal))
        self.initial_state_dict = copy.deepcopy(self.agent.value_net.state_dict())
        self.records: list[TrainingEpisode] = []
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
        self.records = [TrainingEpisode(**r) for r in state["records"]]
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
            checkpoint_every: int = 50, progress: Callable[[TrainingEpisode], None] | None = None
            ) -> list[TrainingEpisode]:
        """Train until `episodes` episodes have finished; return their records in finish order.

        runner: an `EnvRunner` of `num_envs` envs. on_checkpoint(state) is called every
        `checkpoint_every` finished episodes (at the end of a round, the state a resume needs).
        """
        if runner.num_envs != self.num_envs:
            raise ValueError(f"runner has {runner.num_envs} envs, the trainer was built for {self.num_envs}")
        if isinstance(self.agent, DQfDAgent) and not self.schedule.playing and not self.records:
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
                 progress: Callable[[TrainingEpisode], None] | None) -> None:
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
                     progress: Callable[[TrainingEpisode], None] | None,
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

    def _finish(self, i: int, last: Transition, steps: int) -> TrainingEpisode:
        agent = self.agent
        episode = self.schedule.playing[i]
        assert episode is not None
        record = TrainingEpisode(
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
    action depends on is known: round r+1's draws and how many envs play round r+1 (the batch
    its greedy row is computed in). The episode it starts if that step ends one may still
    depend on a slower env's running step; then the step is sent without it (deferred reset)
    and, in the rare case it ends the episode, the env is reset by a call of its own once
    round r+1 opens and its offer is known. When every
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
        self.early: dict[int, tuple[int, int | None]] = {}    # env -> its round r+1 (action, offer or _UNKNOWN), sent
        self.ahead: dict[int, Transition] = {}                # round r+1 results of early envs
        self.deferred: set[int] = set()                       # envs stepping without their reset seed
        self.held: set[int] = set()                           # early envs ended without a reset: offer unknown
        self.resetting: set[int] = set()                      # round r envs whose reset is running
        self.learned = False
        self.snapshot: dict[str, Any] = {}                    # ε clock and RNGs when round r's learning ended

    def run(self, on_checkpoint: Callable[[dict[str, Any]], None] | None, checkpoint_every: int,
            progress: Callable[[TrainingEpisode], None] | None) -> None:
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
            if len(self.results) < len(self.active) or self.resetting:
                for i, result in self.runner.receive().items():
                    self._receive(i, result)
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
        elif list(self.draws) != self.active or any(self.offers.get(i) != o for i, (_, o) in self.early.items()
                                                    if o != _UNKNOWN):
            raise RuntimeError("the round's envs or episode offers differ from those foreseen")   # never expected
        rest = [i for i in self.active if i not in self.early]
        chosen = dict(zip(rest, self._actions(rest, self.obs)))
        for i in rest:
            self.runner.send(i, chosen[i], self._env_seed(self.offers.get(i)))
        self.actions = {i: chosen[i] if i in chosen else self.early[i][0] for i in self.active}   # env order
        self.results, self.early, self.ahead, self.draws = self.ahead, {}, {}, {}
        held, self.held = self.held, set()
        for i in held:
            self._reset_if_offered(i)
        self.learned = False

    def _receive(self, i: int, result: Transition | np.ndarray) -> None:
        """File env i's result: a reset's first observation, a round r+1 step of an early env,
        or a round r step (reset here if it ended without its seed)."""
        if isinstance(result, np.ndarray):
            self.results[i].reset_obs = result
            self.resetting.remove(i)
            return
        if i in self.early:
            self.ahead[i] = result
            if i in self.deferred and result.ended:
                self.held.add(i)
            else:
                self.deferred.discard(i)
            return
        self.results[i] = result
        self._reset_if_offered(i)

    def _reset_if_offered(self, i: int) -> None:
        """Env i's round r step was sent without a seed: reset it if the step ended its episode and
        the env has an episode to start (round r's offers are known)."""
        if i not in self.deferred:
            return
        self.deferred.remove(i)
        offer = self.offers.get(i)
        if self.results[i].ended and offer is not None:
            self.runner.send_reset(i, self.trainer.env_seed(offer))
            self.resetting.add(i)

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
            if i in self.early or i not in self.results or i in self.resetting:
                continue
            action = self._actions([i], {i: _next_obs(self.results[i])})[0]
            self.runner.send(i, action, self._env_seed(offers.get(i)))
            self.early[i] = (action, offers.get(i, _UNKNOWN))
            if i not in offers:
                self.deferred.add(i)

    def _next_round(self) -> tuple[list[int], dict[int, int | None]] | None:
        """Round r+1's envs and those of their episode offers that round r's missing results
        cannot change (the others are deferred); None while the envs of round r+1 are not known yet.

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
            schedule = self.schedule.copy()
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


_UNKNOWN = -1
"""The offer of an env whose step was sent before its next episode was known (no episode index is negative)."""


def _next_obs(step: Transition) -> np.ndarray:
    """The observation an env's next action is chosen on (the new episode's, after a reset)."""
    return step.reset_obs if step.reset_obs is not None else step.obs
