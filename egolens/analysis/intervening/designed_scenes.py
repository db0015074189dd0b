"""Designed counterfactual scenes: the ego before the junction and one conflicting vehicle whose
arrival time at the conflict point is swept, in the real simulator.

A scene is built from a reset `intersection-v0` env (`egolens.env.make_env`): every vehicle is
removed, the ego is placed at a fixed state on its approach (south, `o0 → ir0`, the lane the env
starts it on) with the config's destination, and one other vehicle (the config's
`other_vehicles_type`, IDM) is placed on a chosen approach with a chosen destination so that, at
constant speed, its centre reaches the conflict point `arrival_time` seconds later. The conflict
point is where the other vehicle's route first meets the ego's route (lane centre lines, as the
road network draws them). Later spawns are switched off (`spawn_probability` 0,
`initial_vehicle_count` 0), so only these two vehicles ever share the road, and the observation
is recomputed by the env's own observation type after placing.

For each scene (`evaluate_scene`): the network's Q(SLOWER) − Q(FASTER) and greedy action, each
head's attention on the conflicting vehicle, the clairvoyant planner's first action
(`egolens.policies.search_plans` on copies of the scene) and the true outcome of going now (a copy
of the scene played with FASTER to the end). `sweep_arrival_times` gives one row per scene.

Coordinates are highway-env's (metres, x right, y down the screen). Routes are lists of lane
indices `(from, to, 0)`; distances along a route are summed lane lengths (curved lanes by arc).
Entry nodes: o0 south, o1 west, o2 north, o3 east; the horizontal road (o1, o3) has priority, so
a vehicle there never yields to the ego.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from highway_env import utils
from torch import nn

from egolens.config import INTENTION_FEATURES, EnvConfig
from egolens.env import env_config, make_env
from egolens.episodes import outcome
from egolens.policies import FASTER, SLOWER, reward_bound, search_plans, steps_until_truncation
from egolens.vocabulary import ACTIONS, present_others

EGO_APPROACH = "o0"
"""The ego's entry node (highway-env starts its ego on `o0 → ir0`)."""
APPROACHES = ("o0", "o1", "o2", "o3")
"""Entry (and exit) nodes: south, west, north, east."""
PATH_STEP = 0.5
"""m: spacing of the points that draw a route's centre line when looking for the conflict point."""


@dataclass(frozen=True)
class SceneSpec:
    """One designed scene. Distances in metres, speeds in m/s, times in seconds.

    arrival_time: when the conflicting vehicle's centre reaches the conflict point at constant
    `other_speed` (negative: it passed it that long ago).
    visible: whether the conflicting vehicle's destination is observed (`cos_d`, `sin_d`); True needs
    those features in the config, False zeroes them as highway-env does without `observe_intentions`
    (the ego's own row keeps them, as in the env).
    """

    arrival_time: float
    ego_longitudinal: float = 80.0
    """Position along the ego's approach lane (100 m long; the junction starts at its end). At 80 m and
    9 m/s the ego's centre reaches the default conflict point in 3.3 s."""
    ego_speed: float = 9.0
    """The ego's speed; its target speed is the closest of the action's target speeds."""
    approach: str = "o1"
    """Entry node of the conflicting vehicle (not the ego's, `o0`)."""
    destination: str = "o3"
    """Exit node of the conflicting vehicle (not its entry)."""
    other_speed: float = 8.0
    """Constant speed of the conflicting vehicle (its IDM target speed), in (0, 10] (the lanes' limit)."""
    visible: bool = False
    env_seed: int = 0
    """Seed of the reset the scene is built from (it fixes the env's random state: row order, ...)."""


@dataclass(frozen=True)
class Conflict:
    """Where two routes first meet: the point, and its distance along each route from the route's start."""

    point: np.ndarray
    """[2] (x, y) in metres."""
    ego_distance: float
    other_distance: float


@dataclass
class Scene:
    """A built scene: the env in that state (owned by the caller) and what was placed."""

    env: gym.Env
    obs: np.ndarray
    """[E, F] float32, the env's observation of the placed state (row order from the env's RNG)."""
    spec: SceneSpec
    conflict: Conflict
    ego_time_to_conflict: float
    """s for the ego's centre to reach the conflict point at `ego_speed` (route distance / speed)."""
    other: Any
    """The conflicting highway-env vehicle."""

    @property
    def gap(self) -> float:
        """s: the conflicting vehicle's arrival minus the ego's if the ego goes on at its speed."""
        return self.spec.arrival_time - self.ego_time_to_conflict

    @property
    def other_row(self) -> int | None:
        """Row of the conflicting vehicle in `obs` (the only other present row), None if unobserved."""
        rows = np.flatnonzero(present_others(self.obs.copy()))
        return int(rows[0]) if len(rows) else None


def scene_config(cfg: EnvConfig) -> EnvConfig:
    """`cfg` with no vehicle spawned at reset beyond the env's own and none later."""
    return cfg.model_copy(update={"spawn_probability": 0.0, "initial_vehicle_count": 0})


def route_lanes(network: Any, entry: str, exit_: str) -> list[tuple[str, str, int]]:
    """Lane indices of the route from entry node `entry` (e.g. "o1") to exit node `exit_` ("o3")."""
    if entry not in APPROACHES or exit_ not in APPROACHES or entry == exit_:
        raise ValueError(f"a route needs two different nodes of {APPROACHES}, got {entry!r} -> {exit_!r}")
    nodes = [entry, *network.shortest_path("ir" + entry[1:], exit_)]
    return [(a, b, 0) for a, b in zip(nodes[:-1], nodes[1:])]


def route_points(network: Any, lanes: Sequence[tuple[str, str, int]], distances: np.ndarray) -> np.ndarray:
    """Centre-line points [P, 2] of a route at `distances` [P] m from its start (clipped to the route)."""
    points = []
    for d in distances:
        index, longitudinal = place_on_route(network, lanes, float(np.clip(d, 0.0, route_length(network, lanes))))
        points.append(network.get_lane(index).position(longitudinal, 0.0))
    return np.array(points)


def route_length(network: Any, lanes: Sequence[tuple[str, str, int]]) -> float:
    """m: the summed lengths of a route's lanes."""
    return float(sum(network.get_lane(index).length for index in lanes))


def first_crossing(ego: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> Conflict:
    """The first point of the `other` polyline (in its order) that meets the `ego` polyline.

    ego, other: (points [P, 2], distances along the route [P]). Segments meet where
    p + t·r = q + u·s with t, u in [0, 1] (touching ends count, so a merge meets at its merge
    point); parallel segments are skipped. Raises ValueError if the polylines never meet.
    """
    (p_pts, p_dist), (q_pts, q_dist) = ego, other
    p, r = p_pts[:-1, None, :], (p_pts[1:] - p_pts[:-1])[:, None, :]       # [P-1, 1, 2]
    q, s = q_pts[None, :-1, :], (q_pts[1:] - q_pts[:-1])[None, :, :]       # [1, Q-1, 2]

    def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    denom = cross(r, s)                                                    # [P-1, Q-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = cross(q - p, s) / denom
        u = cross(q - p, r) / denom
    eps = 1e-9
    meets = (denom != 0) & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    if not meets.any():
        raise ValueError("the two routes never meet")
    i, j = np.nonzero(meets)
    other_along = q_dist[j] + u[i, j] * (q_dist[j + 1] - q_dist[j])
    k = int(np.argmin(other_along))
    i, j = int(i[k]), int(j[k])
    point = p_pts[i] + t[i, j] * (p_pts[i + 1] - p_pts[i])
    ego_along = p_dist[i] + t[i, j] * (p_dist[i + 1] - p_dist[i])
    return Conflict(point=point, ego_distance=float(ego_along), other_distance=float(other_along[k]))


def route_conflict(network: Any, ego_destination: str, approach: str, destination: str,
                   step: float = PATH_STEP, fine_step: float = 0.005) -> Conflict:
    """Where the route approach → destination first meets the ego's route `o0` → ego_destination.

    The routes' centre lines are drawn every `step` m to find the meeting segments, then every
    `fine_step` m within `step` of that point (a chord of a 13 m-radius turn `fine_step` long is
    off the arc by fine_step² / 104 m: 2.4e-7 m).
    """
    if approach == EGO_APPROACH:
        raise ValueError(f"the conflicting vehicle must come from another approach than the ego's ({EGO_APPROACH})")
    routes = (route_lanes(network, EGO_APPROACH, ego_destination), route_lanes(network, approach, destination))

    def polyline(lanes: list[tuple[str, str, int]], low: float, high: float, spacing: float,
                 ) -> tuple[np.ndarray, np.ndarray]:
        distances = np.append(np.arange(low, high, spacing), high)
        return route_points(network, lanes, distances), distances

    coarse = first_crossing(*(polyline(lanes, 0.0, route_length(network, lanes), step) for lanes in routes))
    windows = ((coarse.ego_distance, routes[0]), (coarse.other_distance, routes[1]))
    return first_crossing(*(polyline(lanes, max(d - step, 0.0), min(d + step, route_length(network, lanes)),
                                     fine_step) for d, lanes in windows))


def place_on_route(network: Any, lanes: Sequence[tuple[str, str, int]], distance: float,
                   ) -> tuple[tuple[str, str, int], float]:
    """The lane of `lanes` holding the point `distance` m along the route, and the point's position on it."""
    start = 0.0
    for index in lanes:
        length = network.get_lane(index).length
        if distance < start + length or index == lanes[-1]:
            if not 0.0 <= distance <= start + length:
                raise ValueError(f"{distance:.2f} m is off the route ({start + length:.2f} m long)")
            return index, distance - start
        start += length
    raise ValueError("empty route")


def _check(spec: SceneSpec, cfg: EnvConfig, ego_lane_length: float, speed_limit: float) -> None:
    if not 0.0 <= spec.ego_longitudinal <= ego_lane_length:
        raise ValueError(f"ego_longitudinal = {spec.ego_longitudinal}: the ego must be on its approach lane, "
                         f"in [0, {ego_lane_length}] m")
    if not 0.0 <= spec.ego_speed <= speed_limit:
        raise ValueError(f"ego_speed = {spec.ego_speed} must be in [0, {speed_limit}] m/s")
    if not 0.0 < spec.other_speed <= speed_limit:
        raise ValueError(f"other_speed = {spec.other_speed} must be in (0, {speed_limit}] m/s (IDM clips its "
                         "target speed to the lane's limit, so a faster vehicle would not keep its speed)")
    if spec.visible and not set(INTENTION_FEATURES) <= set(cfg.features):
        raise ValueError(f"visible = True needs the features {list(INTENTION_FEATURES)} in env.features "
                         f"= {cfg.features}")


def build_scene(cfg: EnvConfig, spec: SceneSpec, env: gym.Env | None = None) -> Scene:
    """Reset an env of `scene_config(cfg)` with `spec.env_seed` and place the scene's two vehicles.

    env: an env made from `scene_config(cfg)` to reuse (it is reset here); None makes one.
    Returns the scene with the env's observation of the placed state. Raises ValueError if the
    spec cannot be placed (arrival too far in the future or the past for the route, speeds out of
    range, routes that never meet).
    """
    if env is None:
        env = make_env(scene_config(cfg))
    env.reset(seed=int(spec.env_seed))
    sim = env.unwrapped
    wanted = env_config(scene_config(cfg))
    if any(sim.config.get(key) != value for key, value in wanted.items()):
        raise ValueError("build_scene needs an env made from scene_config(cfg) (the same config, no spawns)")
    road, network = sim.road, sim.road.network
    ego_lanes = route_lanes(network, EGO_APPROACH, cfg.destination)
    ego_lane = network.get_lane(ego_lanes[0])
    _check(spec, cfg, ego_lane.length, ego_lane.speed_limit)
    conflict = route_conflict(network, cfg.destination, spec.approach, spec.destination)

    ego = sim.action_type.vehicle_class(road, ego_lane.position(spec.ego_longitudinal, 0.0),
                                        heading=ego_lane.heading_at(spec.ego_longitudinal), speed=spec.ego_speed)
    ego.plan_route_to(cfg.destination)
    ego.speed_index = ego.speed_to_index(spec.ego_speed)
    ego.target_speed = ego.index_to_speed(ego.speed_index)

    other_lanes = route_lanes(network, spec.approach, spec.destination)
    along = conflict.other_distance - spec.other_speed * spec.arrival_time
    length = route_length(network, other_lanes)
    if not 0.0 <= along <= length:
        raise ValueError(f"arrival_time = {spec.arrival_time} s at {spec.other_speed} m/s puts the vehicle off its "
                         f"route; allowed: [{(conflict.other_distance - length) / spec.other_speed:.2f}, "
                         f"{conflict.other_distance / spec.other_speed:.2f}] s")
    lane_index, longitudinal = place_on_route(network, other_lanes, along)
    other_type = utils.class_from_path(sim.config["other_vehicles_type"])
    other = other_type.make_on_lane(road, lane_index, longitudinal, speed=spec.other_speed)
    # Lanes of the junction overlap at their ends: pin the lane the vehicle was placed on.
    other.lane_index = other.target_lane_index = lane_index
    other.lane = network.get_lane(lane_index)
    other.target_speed = spec.other_speed
    other.plan_route_to(spec.destination)

    road.vehicles = [ego, other]
    sim.controlled_vehicles = [ego]
    if set(INTENTION_FEATURES) <= set(cfg.features):
        sim.observation_type.observe_intentions = spec.visible
    obs = sim.observation_type.observe()
    ego_time = (conflict.ego_distance - spec.ego_longitudinal) / spec.ego_speed if spec.ego_speed > 0 else np.inf
    return Scene(env=env, obs=obs, spec=spec, conflict=conflict, ego_time_to_conflict=float(ego_time), other=other)


# ------------------------------------------------------------------------------ what each scene shows


def network_readout(net: nn.Module, obs: np.ndarray, row: int | None) -> dict[str, float | str]:
    """The network on one scene: Q per action, Q(SLOWER) − Q(FASTER), the greedy action and, for a
    network with `get_attention_matrix` ([B, H, 1, E]), each head's attention on entity `row`
    (NaN when the vehicle is not observed, `row` None).

    obs: [E, F]. Keys: q_slower, q_idle, q_faster, q_slower_minus_faster, greedy_action (a name of
    ACTIONS), attention_h0, attention_h1, ...
    """
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32))[None]
    with torch.no_grad():
        q = net(x)[0]
        attention = net.get_attention_matrix(x)[0, :, 0, :] if hasattr(net, "get_attention_matrix") else None
    out: dict[str, float | str] = {f"q_{name.lower()}": float(q[a]) for a, name in enumerate(ACTIONS)}
    out["q_slower_minus_faster"] = float(q[SLOWER] - q[FASTER])
    out["greedy_action"] = ACTIONS[int(q.argmax())]
    if attention is not None:
        for h in range(attention.shape[0]):
            out[f"attention_h{h}"] = float(attention[h, row]) if row is not None else float("nan")
    return out


def go_now(env: gym.Env) -> dict[str, float | str]:
    """The true outcome of going now: a deep copy of the env played with FASTER until the episode ends.

    Keys: go_outcome ('arrived', 'collision' or 'timeout'), go_return, go_steps. `env` is untouched.
    """
    sim = copy.deepcopy(env.unwrapped)
    ret, steps = 0.0, 0
    while True:
        _, reward, terminated, truncated, info = sim.step(FASTER)
        ret, steps = ret + float(reward), steps + 1
        if terminated or truncated:
            return {"go_outcome": outcome(bool(terminated), bool(truncated), bool(info["crashed"])),
                    "go_return": ret, "go_steps": steps}


def clairvoyant_choice(env: gym.Env) -> dict[str, float | str]:
    """The clairvoyant planner's choice from the env's state (`egolens.policies.search_plans` over the
    wait-then-go plans, on copies; `env` is untouched).

    Keys: clairvoyant_action (its plan's first action, a name of ACTIONS), clairvoyant_outcome and
    clairvoyant_return (of the best plan), clairvoyant_wait (SLOWER actions in that plan),
    clairvoyant_plan (the plan's actions as initials, e.g. "FSSFFFF": FASTER, SLOWER).
    """
    sim = env.unwrapped
    found = search_plans(sim, steps_until_truncation(sim.config, sim.time), reward_bound(sim.config))
    return {"clairvoyant_action": ACTIONS[found.plan[0]], "clairvoyant_outcome": found.value.outcome,
            "clairvoyant_return": found.value.ret, "clairvoyant_wait": sum(a == SLOWER for a in found.plan),
            "clairvoyant_plan": "".join(ACTIONS[a][0] for a in found.plan)}


def evaluate_scene(scene: Scene, net: nn.Module, *, clairvoyant: bool = True, going: bool = True,
                   ) -> dict[str, Any]:
    """One row: the scene's spec and geometry, the network's readout (`network_readout`), and, if
    asked, the clairvoyant planner's choice (`clairvoyant_choice`) and the outcome of going now (`go_now`)."""
    spec, row = scene.spec, scene.other_row
    out: dict[str, Any] = {
        "arrival_time": spec.arrival_time, "gap": scene.gap, "ego_time_to_conflict": scene.ego_time_to_conflict,
        "approach": spec.approach, "destination": spec.destination, "visible": spec.visible,
        "other_speed": spec.other_speed, "ego_longitudinal": spec.ego_longitudinal, "ego_speed": spec.ego_speed,
        "env_seed": spec.env_seed, "conflict_x": float(scene.conflict.point[0]),
        "conflict_y": float(scene.conflict.point[1]), "observed": row is not None,
        "other_row": row if row is not None else -1,
    }
    out.update(network_readout(net, scene.obs, row))
    if clairvoyant:
        out.update(clairvoyant_choice(scene.env))
    if going:
        out.update(go_now(scene.env))
    return out


def arrival_times_for_gaps(cfg: EnvConfig, spec: SceneSpec, gaps: Sequence[float]) -> np.ndarray:
    """Arrival times [G] at which the conflicting vehicle reaches the conflict point `gaps` [G] seconds
    after the ego would if it went on at its speed (gap 0: both centres there at once)."""
    env = make_env(scene_config(cfg))
    try:
        ego_time = build_scene(cfg, replace(spec, arrival_time=0.0), env).ego_time_to_conflict
    finally:
        env.close()
    return ego_time + np.asarray(gaps, dtype=np.float64)


def sweep_arrival_times(cfg: EnvConfig, net: nn.Module, spec: SceneSpec, arrival_times: Sequence[float], *,
                        clairvoyant: bool = True, going: bool = True) -> pd.DataFrame:
    """One row per arrival time (`evaluate_scene` of `spec` with that arrival time), in the given order.

    One env of `scene_config(cfg)` is reset for every scene with `spec.env_seed`, so scenes differ
    only by the conflicting vehicle's placement. Deterministic. `other_row` is -1 where the vehicle
    is not observed.
    """
    env = make_env(scene_config(cfg))
    try:
        rows = [evaluate_scene(build_scene(cfg, replace(spec, arrival_time=float(t)), env), net,
                               clairvoyant=clairvoyant, going=going) for t in arrival_times]
    finally:
        env.close()
    return pd.DataFrame(rows)


def switch_points(table: pd.DataFrame, column: str = "greedy_action", by: str = "arrival_time") -> pd.DataFrame:
    """Where `column` changes along `by` in a sweep table (rows sorted by `by` first).

    Returns one row per change: before, after (the two neighbouring values of `by` it changed
    between), from_value, to_value. A threshold recovered by the sweep lies in [before, after].
    """
    ordered = table.sort_values(by, kind="stable")
    values, keys = ordered[column].to_numpy(), ordered[by].to_numpy()
    changed = np.flatnonzero(values[1:] != values[:-1])
    return pd.DataFrame({"before": keys[changed], "after": keys[changed + 1],
                         "from_value": values[changed], "to_value": values[changed + 1]})
