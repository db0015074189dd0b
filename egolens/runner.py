"""Play many episodes on N simulators: one env per worker process, stepped asynchronously.

The runner is what every closed loop of the study uses (training, `evaluate`, the
interventions' closed-loop conditions, the reference policies). Its contract:

- `send(i, action, next_seed)` (or `step_async` for several envs) starts a step and returns at
  once, so the caller can learn while the simulators work; `receive()` / `step_wait()`
  collect the results. An env whose episode ends resets itself *in the same call* with the
  seed it was handed (no second round trip). A step sent without a seed leaves an ended env
  as it is; `send_reset(i, seed)` then resets it, as a call of its own.
- Which episode an env plays next is the caller's (`egolens.episodes.EpisodeSchedule`).

With one env the runner steps in-process (no worker), exactly as a plain env loop does.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
        self._pending: dict[int, tuple] = {}      # env -> the command it is running
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
        self._start(i, ("step", int(action), next_seed))

    def send_reset(self, i: int, seed: int) -> None:
        """Start resetting env i (which must not be stepping) with `seed`; `receive` or `step_wait`
        then gives its first observation [E, F] instead of a `Transition`."""
        if i in self._pending:
            raise RuntimeError(f"env {i} is already stepping")
        self._start(i, ("reset", int(seed)))

    def _start(self, i: int, command: tuple) -> None:
        self._pending[i] = command
        if self._envs is None:
            self._conns[i].send(command)

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

    def receive(self) -> dict[int, Any]:
        """The results of the envs that have finished their step or reset (at least one; blocks
        until then): a `Transition` per step, an observation [E, F] per reset."""
        if self._envs is not None:
            return self.step_wait()
        self.wait_any()
        ready = [i for i in self._pending if self._conns[i].poll()]
        for i in ready:
            del self._pending[i]
        return {i: self._conns[i].recv() for i in ready}

    def step_wait(self) -> dict[int, Any]:
        """The results of every stepping env (in-process envs step here): as `receive`."""
        pending, self._pending = self._pending, {}
        if self._envs is not None:
            run = {"step": _step, "reset": _reset}
            return {i: run[c[0]](self._envs[i], *c[1:]) for i, c in pending.items()}
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
