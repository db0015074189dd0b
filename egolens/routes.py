"""Where each observed vehicle is going: its route through the junction, read from the simulator.

The observation does not say where another vehicle will leave the junction (intersection-v0
zeroes its destination features), so whether its route crosses the ego's is a fact the network
can only infer. `replay_routes` replays a recorded episode from its env seed with the recorded
actions (an episode depends only on its seed and its actions; every observation is checked
against the recorded one) and reads, at every step, each observation row's route: the side it
entered the junction from and the side it leaves by, as highway-env's node numbers (0 south,
1 west, 2 north, 3 east: lanes `o<k>` → `ir<k>` enter, `il<k>` → `o<k>` leave), −1 where unknown.

A vehicle's entry side is taken when it is first on the road (every vehicle of intersection-v0 is
spawned on an entry lane), its exit side from the last node of its planned route.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from egolens.tracking import ABSENT, VehicleTracker

UNKNOWN = -1
"""Side of a route that the simulator does not give (an empty row, a vehicle without a route)."""


def node_side(node: str, prefixes: tuple[str, ...]) -> int:
    """The side number of a road node named `<prefix><k>` for one of `prefixes`, else UNKNOWN."""
    for prefix in prefixes:
        rest = node[len(prefix):]
        if node.startswith(prefix) and rest.isdigit():
            return int(rest)
    return UNKNOWN


def entry_side(vehicle: Any) -> int:
    """The side a vehicle enters the junction from, by the lane it is on: `o<k>` → `ir<k>` (the
    approach) or `ir<k>` → `il<j>` (inside the junction); UNKNOWN once it is on an exit lane."""
    start = str(vehicle.lane_index[0])
    if start.startswith("o"):
        return node_side(start, ("o",))
    return node_side(start, ("ir",))


def exit_side(vehicle: Any) -> int:
    """The side a vehicle leaves by: the last node `o<k>` of its planned route, or of the lane it is
    on when its route is used up; UNKNOWN without either."""
    route = getattr(vehicle, "route", None) or []
    if route:
        return node_side(str(route[-1][1]), ("o",))
    start, end = str(vehicle.lane_index[0]), str(vehicle.lane_index[1])
    return node_side(end, ("o",)) if start.startswith("il") else UNKNOWN


class RouteTracker(VehicleTracker):
    """A `VehicleTracker` that also knows each row's route: after every reset/step, `routes[row]` is
    (entry side, exit side) of the vehicle shown in that row, (UNKNOWN, UNKNOWN) for an empty row."""

    def __init__(self, env: Any) -> None:
        self._entries: dict[int, tuple[Any, int]] = {}
        super().__init__(env)
        self.routes = np.full((self.obs_type.vehicles_count, 2), UNKNOWN, dtype=np.int64)

    def _observe_tracked(self) -> np.ndarray:
        episode = self._ego
        obs = super()._observe_tracked()
        if self._ego is not episode:           # a new episode: forget the last one's vehicles
            self._entries = {}
        # Every vehicle on the road, so that one first observed on its exit lane keeps its entry.
        for vehicle in self.env.road.vehicles:
            if id(vehicle) not in self._entries or self._entries[id(vehicle)][1] == UNKNOWN:
                self._entries[id(vehicle)] = (vehicle, entry_side(vehicle))
        by_id = {index: vehicle for vehicle, index in self._ids.values()}
        routes = []
        for vid in self.ids:
            vehicle = by_id.get(int(vid)) if vid != ABSENT else None
            if vehicle is None:
                routes.append((UNKNOWN, UNKNOWN))
                continue
            entry = self._entries.get(id(vehicle), (vehicle, entry_side(vehicle)))[1]
            routes.append((entry, exit_side(vehicle)))
        self.routes = np.array(routes, dtype=np.int64)
        return obs


_TRACKERS: weakref.WeakKeyDictionary[Any, RouteTracker] = weakref.WeakKeyDictionary()
"""The route tracker installed on each live env this process replayed an episode on."""


def replay_routes(env: Any, job: tuple[int, np.ndarray, np.ndarray]) -> np.ndarray:
    """Each recorded step's routes [T, E, 2] (entry side, exit side; row 0 the ego's) of the episode
    job = (env seed, actions [T], observations [T, E, F]), replayed on `env` (a job for
    `EnvRunner.map`). Raises if a replayed observation differs from the recorded one."""
    env_seed, actions, observations = job
    tracker = _TRACKERS.get(env)
    if tracker is None:
        tracker = _TRACKERS[env] = RouteTracker(env)
    obs, _ = env.reset(seed=int(env_seed))
    routes = []
    for t, action in enumerate(np.asarray(actions)):
        if not np.array_equal(np.asarray(obs, dtype=np.float32), observations[t]):
            raise RuntimeError(f"the replay of env seed {env_seed} departs from the recording at step {t}")
        routes.append(tracker.routes.copy())
        obs, *_ = env.step(int(action))
    return np.stack(routes) if routes else np.zeros((0, *tracker.routes.shape), dtype=np.int64)
