"""Which simulator vehicle each observation row shows.

highway-env shuffles the observation rows every step (`order: shuffled`), so a row is not a
vehicle. `VehicleTracker` makes the observation say which vehicle went to which row: it builds
the rows unshuffled and applies the very shuffle highway-env would (same generator, same
draws) to an index array, so the map is exact and the observations are unchanged.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ABSENT = -1
"""Vehicle id of an empty observation row."""


class VehicleTracker:
    """Installed on one env: after every reset/step, `ids[row]` is the vehicle shown in that row
    (0 = ego, 1, 2, ... in order of first appearance in the episode, −1 = empty row) and
    `positions[row]` its world position (m)."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        self._ids: dict[int, tuple[Any, int]] = {}
        self._ego: Any = None
        self._install()
        # Every reset builds a new observation type (define_spaces): wrap each new one too.
        define_spaces = self.env.define_spaces

        def define_and_install() -> None:
            define_spaces()
            self._install()
        self.env.define_spaces = define_and_install
        self.ids = np.full(self.obs_type.vehicles_count, ABSENT)
        self.positions = np.zeros((self.obs_type.vehicles_count, 2))

    def _install(self) -> None:
        self.obs_type = self.env.observation_type
        self._observe = self.obs_type.observe
        self.obs_type.observe = self._observe_tracked

    def _vehicle_id(self, vehicle: Any) -> int:
        # Keep the vehicle object alive beside its id so its address is never reused.
        return self._ids.setdefault(id(vehicle), (vehicle, len(self._ids)))[1]

    def _observe_tracked(self) -> np.ndarray:
        obs_type, env = self.obs_type, self.env
        shuffled = obs_type.order == "shuffled"
        if shuffled:
            obs_type.order = "unshuffled"      # neither sorted nor shuffled: rows as found
        try:
            obs = self._observe()
        finally:
            if shuffled:
                obs_type.order = "shuffled"
        if obs_type.observer_vehicle is not self._ego:   # a new episode: a new ego vehicle
            self._ego, self._ids = obs_type.observer_vehicle, {}
        count = obs_type.vehicles_count
        close = env.road.close_objects_to(obs_type.observer_vehicle, env.PERCEPTION_DISTANCE, count=count - 1,
                                          see_behind=obs_type.see_behind, sort=obs_type.order == "sorted",
                                          vehicles_only=not obs_type.include_obstacles)[-count + 1:]
        rows: list[Any] = [obs_type.observer_vehicle, *close] + [None] * (count - 1 - len(close))
        if shuffled:
            order = np.arange(count - 1)
            env.np_random.shuffle(order)       # the same draws as shuffling obs[1:] in place
            obs[1:] = obs[1:][order]
            rows = [rows[0]] + [rows[1 + i] for i in order]
        self.ids = np.array([ABSENT if v is None else self._vehicle_id(v) for v in rows])
        self.positions = np.array([[0.0, 0.0] if v is None else v.position[:2] for v in rows], dtype=np.float64)
        return obs
