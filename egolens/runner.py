"""Play many episodes on N simulators: one env per worker process, stepped asynchronously.

The runner is what every closed loop of the study uses (training, `evaluate`, the
interventions' closed-loop conditions, the reference policies). Its contract:

- `step_async(actions, next_seeds)` sends one action to each playing env and returns at
  once, so the caller can learn while the simulators work; `step_wait()` collects the
  results. An env whose episode ends resets itself *in the same call* with the seed it was
  handed in `next_seeds` (no second round trip, no waiting env blocked by another's reset).
- Episodes are assigned by an `EpisodeSchedule`: each playing env is offered the lowest
  episode indices not yet started, in env order; an env that ends takes its offer. The
  assignment depends only on which envs end on which step, so a run is deterministic for a
  given number of envs whatever the timing of the processes.

With one env the runner steps in-process (no worker), exactly as a plain env loop does.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection
from typing import Any

import numpy as np

EnvFactory = Callable[[], Any]
"""A zero-argument callable returning a gymnasium-like env (reset(seed=...), step(a))."""


@dataclass
class Transition:
    """What one env returned for one action.

    obs: [E, F] the observation after the action (the last one of an ended episode);
    reset_obs: [E, F] the first observation of the next episode if the env reset itself.
    """

    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    crashed: bool
    reset_obs: np.ndarray | None = None

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated


def _step(env: Any, action: int, next_seed: int | None) -> Transition:
    obs, reward, terminated, truncated, info = env.step(int(action))
    result = Transition(np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated),
                        bool(info.get("crashed", False)))
    if result.ended and next_seed is not None:
        result.reset_obs = _reset(env, next_seed)
    return result


def _reset(env: Any, seed: int) -> np.ndarray:
    return np.asarray(env.reset(seed=int(seed))[0], dtype=np.float32)


def _replay(env: Any, seed: int, actions: Sequence[int]) -> np.ndarray:
    """Reset with `seed` and replay `actions`; the observation reached: [E, F]."""
    obs = _reset(env, seed)
    for action in actions:
        obs = np.asarray(env.step(int(action))[0], dtype=np.float32)
    return obs


def _worker(conn: Any, factory: EnvFactory, inherited: Sequence[Any] = ()) -> None:
    # A forked worker inherits the main process's ends of every pipe made so far (its own
    # included); closing them lets recv() see EOF, and the worker exit, when the main process
    # dies without closing the runner (e.g. a killed training run).
    for other in inherited:
        other.close()
    env = factory()
    try:
        while True:
            command, *args = conn.recv()
            if command == "step":
                conn.send(_step(env, *args))
            elif command == "reset":
                conn.send(_reset(env, *args))
            elif command == "replay":
                conn.send(_replay(env, *args))
            elif command == "call":
                fn, item = args
                conn.send(fn(env, item))
            elif command == "close":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        env.close()
        conn.close()


class EnvRunner:
    """N envs; with N > 1 each lives in its own worker process (fork).

    All methods take and return per-env dicts keyed by env index, so envs that are not
    playing are simply left out.
    """

    def __init__(self, factories: Sequence[EnvFactory]) -> None:
        self.num_envs = len(factories)
        self._pending: dict[int, tuple[int, int | None]] = {}
        if self.num_envs == 1:
            self._envs: list[Any] | None = [factories[0]()]
            self._conns: list[Any] = []
            self._procs: list[Any] = []
            return
        self._envs = None
        ctx = mp.get_context("fork")
        self._conns, self._procs = [], []
        for factory in factories:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, factory, [*self._conns, parent]), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _call(self, commands: dict[int, tuple]) -> dict[int, Any]:
        if self._envs is not None:
            run = {"step": _step, "reset": _reset, "replay": _replay}
            return {i: run[c[0]](self._envs[i], *c[1:]) for i, c in commands.items()}
        for i, command in commands.items():
            self._conns[i].send(command)
        return {i: self._conns[i].recv() for i in commands}

    def reset(self, seeds: dict[int, int]) -> dict[int, np.ndarray]:
        """Reset env i with seeds[i]; its first observation [E, F]."""
        return self._call({i: ("reset", s) for i, s in seeds.items()})

    def replay(self, episodes: dict[int, tuple[int, Sequence[int]]]) -> dict[int, np.ndarray]:
        """Bring env i to the state reached by episodes[i] = (seed, actions); its observation."""
        return self._call({i: ("replay", s, list(a)) for i, (s, a) in episodes.items()})

    def send(self, i: int, action: int, next_seed: int | None = None) -> None:
        """Start one step of env i (which must not be stepping); if its episode ends it resets
        with `next_seed`. Collect the result with `receive` or `step_wait`."""
        if i in self._pending:
            raise RuntimeError(f"env {i} is already stepping")
        self._pending[i] = (int(action), next_seed)
        if self._envs is None:
            self._conns[i].send(("step", int(action), next_seed))

    def step_async(self, actions: dict[int, int], next_seeds: dict[int, int]) -> None:
        """Send actions[i] to env i; if its episode ends it resets with next_seeds.get(i)."""
        if self._pending:
            raise RuntimeError("step_async called twice without step_wait")
        for i, action in actions.items():
            self.send(i, action, next_seeds.get(i))

    def wait_any(self) -> None:
        """Block until at least one stepping env has finished its step (a core is then free:
        the moment to do other work). Returns at once for an in-process env."""
        if self._envs is None and self._pending:
            connection.wait([self._conns[i] for i in self._pending])

    def receive(self) -> dict[int, Transition]:
        """The results of the envs that have finished their step (at least one; blocks until then)."""
        if self._envs is not None:
            return self.step_wait()
        self.wait_any()
        ready = [i for i in self._pending if self._conns[i].poll()]
        for i in ready:
            del self._pending[i]
        return {i: self._conns[i].recv() for i in ready}

    def step_wait(self) -> dict[int, Transition]:
        """The transitions of every stepping env (in-process envs step here)."""
        pending, self._pending = self._pending, {}
        if self._envs is not None:
            return {i: _step(self._envs[i], a, s) for i, (a, s) in pending.items()}
        return {i: self._conns[i].recv() for i in pending}

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any],
            progress: Callable[[], None] | None = None) -> list[Any]:
        """[fn(env, item) for item in items], each call on whichever env is free; in item order.

        fn must be a module-level function (it is sent to the workers by reference). Used for
        whole-episode jobs such as the clairvoyant planner's.
        """
        if self._pending:
            raise RuntimeError("map called while a step is pending")
        results: list[Any] = [None] * len(items)
        if self._envs is not None:
            for k, item in enumerate(items):
                results[k] = fn(self._envs[0], item)
                if progress is not None:
                    progress()
            return results
        queue = list(enumerate(items))
        busy: dict[int, int] = {}
        while queue or busy:
            for i in range(self.num_envs):
                if i not in busy and queue:
                    k, item = queue.pop(0)
                    self._conns[i].send(("call", fn, item))
                    busy[i] = k
            ready = connection.wait([self._conns[i] for i in busy])
            for i in [i for i in busy if self._conns[i] in ready]:
                results[busy.pop(i)] = self._conns[i].recv()
                if progress is not None:
                    progress()
        return results

    def close(self) -> None:
        if self._envs is not None:
            for env in self._envs:
                env.close()
            return
        for conn, proc in zip(self._conns, self._procs):
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close",))
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            conn.close()

    def __enter__(self) -> EnvRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EpisodeSchedule:
    """Which episode (index into a list of `total` episodes) each of `num_envs` envs plays.

    `offers()` gives each playing env the lowest unstarted indices, in env order; `advance`
    records which envs ended (they take their offer, or stop when none is left). With one env
    episodes run in order 0, 1, 2, ...
    """

    total: int
    num_envs: int
    playing: list[int | None] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)   # unstarted indices below `frontier`, sorted
    frontier: int = 0                                  # every index >= frontier is unstarted

    def start(self) -> dict[int, int]:
        """Assign the first episodes; env -> episode index."""
        first = min(self.num_envs, self.total)
        self.playing = [i if i < first else None for i in range(self.num_envs)]
        self.frontier = first
        return {i: e for i, e in enumerate(self.playing) if e is not None}

    @property
    def active(self) -> list[int]:
        return [i for i, e in enumerate(self.playing) if e is not None]

    @property
    def done(self) -> bool:
        return not self.active

    def offers(self) -> dict[int, int]:
        """env -> the episode it starts if its current episode ends on this step."""
        unstarted = iter(self.skipped + list(range(self.frontier, self.total)))
        offers = {}
        for i in self.active:
            nxt = next(unstarted, None)
            if nxt is None:
                break
            offers[i] = nxt
        return offers

    def advance(self, ended: Sequence[int], offers: dict[int, int]) -> None:
        """Envs in `ended` finished their episode and took their offer (if any)."""
        for i in ended:
            taken = offers.get(i)
            self.playing[i] = taken
            if taken is None:
                continue
            if taken < self.frontier:
                self.skipped.remove(taken)
            else:
                self.skipped.extend(range(self.frontier, taken))
                self.frontier = taken + 1
        self.skipped.sort()

    def state_dict(self) -> dict[str, Any]:
        return {"playing": list(self.playing), "skipped": list(self.skipped), "frontier": self.frontier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.playing = list(state["playing"])
        self.skipped = sorted(state["skipped"])
        self.frontier = state["frontier"]

