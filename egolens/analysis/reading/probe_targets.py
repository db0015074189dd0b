"""What a linear probe is asked to read: targets per (step, other vehicle) and per step, computed
from what a rollout records (observations, episode and step, actions, vehicle ids, positions).

Rows are in the order the rollout records them: episodes one after another, each one's steps in
order (`check_ordered`). A per-vehicle row is a (step, present other vehicle) pair, listed in
the order of `vehicle_rows`, which is also `egolens.rollout.vehicles_table`'s order.

Kinds: "binary" (0/1), "categorical" (integer codes) and "continuous" (floats). A target that is
undefined on a row (the action two steps after the episode's last step) is NaN there; the probe
drops those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from egolens.config import EnvConfig
from egolens.scene import denormalize, scene_facts
from egolens.vocabulary import present_others

Kind = Literal["binary", "categorical", "continuous"]
Level = Literal["vehicle", "step"]

OUTCOMES = ("collision", "timeout", "arrived")
"""Episode outcomes (`egolens.episodes.outcome`), in the order of their codes."""
SECTORS = ("ahead", "right", "behind", "left")
"""Bearing sectors of 90° around the ego's heading, in the order of their codes."""
JUNCTION = (0.0, 0.0)
"""Centre of intersection-v0's junction in world coordinates (m): highway-env builds the road
around the origin."""


@dataclass(frozen=True)
class Target:
    """A probe target: its kind, whether it has one value per (step, vehicle) or per step, and
    what it means in words (for tables and figures)."""

    kind: Kind
    level: Level
    label: str


TARGETS: dict[str, Target] = {
    "distance": Target("continuous", "vehicle", "distance to the ego (m)"),
    "ttc": Target("continuous", "vehicle", "time to collision with the ego (s, capped)"),
    "crossing": Target("binary", "vehicle", "its straight path crosses the ego's"),
    "bearing_sector": Target("categorical", "vehicle", "where it is around the ego (ahead, right, behind, left)"),
    "comes_close": Target("binary", "vehicle", "comes within the collision radius of the ego in the next seconds"),
    "route_crosses": Target("binary", "vehicle", "its planned route crosses or merges into the ego's"),
    "ego_speed": Target("continuous", "step", "the ego's speed (m/s)"),
    "junction_distance": Target("continuous", "step", "the ego's distance to the junction centre (m)"),
    "crossing_threat": Target("binary", "step", "a crossing vehicle with a short time to collision"),
    "action": Target("categorical", "step", "the agent's action now"),
    "action_next": Target("categorical", "step", "the agent's action one step ahead"),
    "action_next2": Target("categorical", "step", "the agent's action two steps ahead"),
    "outcome": Target("categorical", "step", "how the episode ends (collision, timeout, arrived)"),
}
"""Every probe target by name."""


def target(name: str) -> Target:
    """The `Target` named `name`; a name that is not a target raises, naming the known ones."""
    if name not in TARGETS:
        raise KeyError(f"no probe target named {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def check_ordered(episode: np.ndarray, step: np.ndarray) -> None:
    """Raise unless rows are whole episodes one after another, each one's steps 0, 1, 2, ...
    episode, step: [N]."""
    episode, step = np.asarray(episode), np.asarray(step)
    starts = np.r_[True, episode[1:] != episode[:-1]]
    seen = episode[starts]
    if len(np.unique(seen)) != len(seen):
        raise ValueError("rows must hold each episode's steps contiguously")
    run = np.arange(len(step)) - np.maximum.accumulate(np.where(starts, np.arange(len(step)), 0))
    if not np.array_equal(step, run):
        raise ValueError("each episode's steps must be 0, 1, 2, ... in order")


def vehicle_rows(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (step, present other vehicle) pairs of obs [N, E, F]: (step index [R], entity row [R]),
    step-major (`np.nonzero` order)."""
    return np.nonzero(present_others(np.asarray(obs)))


def capped_ttc(ttc: np.ndarray, cap: float) -> np.ndarray:
    """Time to collision with inf ("never under constant velocities") and anything above `cap`
    set to `cap` (s): a finite continuous target. NaN stays NaN."""
    return np.minimum(np.asarray(ttc, dtype=np.float64), cap)


def bearing_sector(bearing_deg: np.ndarray) -> np.ndarray:
    """Codes of `SECTORS` from bearings (deg from the ego's heading, + = its right): ahead within
    ±45°, right 45–135°, behind beyond ±135°, left −135 to −45°. NaN stays NaN (float codes)."""
    bearing = np.asarray(bearing_deg, dtype=np.float64)
    sector = np.floor(np.mod(bearing + 45.0, 360.0) / 90.0)
    return np.where(np.isnan(bearing), np.nan, sector)


def closest_approach(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Least distance to the origin on the segment start → end ([..., 2] each, m): a relative
    position moving linearly between two recorded states. A NaN start gives |end|; a NaN end NaN."""
    step = end - start
    length2 = np.sum(step * step, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.clip(np.where(length2 > 0, -np.sum(start * step, axis=-1) / length2, 0.0), 0.0, 1.0)
    along = np.linalg.norm(start + u[..., None] * step, axis=-1)
    return np.where(np.isnan(start).any(axis=-1), np.linalg.norm(end, axis=-1), along)


def comes_close(episode: np.ndarray, vehicle_id: np.ndarray, positions: np.ndarray, steps: int,
                radius: float) -> np.ndarray:
    """Whether each (step, other vehicle) comes within `radius` (m, centre to centre) of the ego
    from that step to `steps` steps later in the same episode: [N, E] bool (the ego's row and empty rows
    False).

    episode [N]; vehicle_id [N, E] (row 0 the ego, −1 an empty row, ids fixed per vehicle within
    an episode); positions [N, E, 2] (m): the tracker's world positions, or x, y of the
    de-normalised observation. A vehicle is followed by its id, whatever row it is shown in.
    Between two recorded states its position relative to the ego moves linearly
    (`closest_approach`): at one decision per second a vehicle passing the ego is seldom within
    the radius at a recorded state. A step where it is not observed breaks the path there. The
    window ends with the episode: the state after its last action is not recorded, so a crash
    counts only from the approach before it.
    """
    episode = np.asarray(episode)
    vehicle_id = np.asarray(vehicle_id)
    positions = np.asarray(positions, dtype=np.float64)
    n, entities = vehicle_id.shape
    others = (vehicle_id >= 0) & (np.arange(entities) > 0)[None, :]
    relative = positions - positions[:, :1]
    step_index, row = np.nonzero(others)
    ids = vehicle_id[step_index, row]

    def seen_at(offset: int) -> np.ndarray:
        """Each vehicle's position relative to the ego `offset` steps later [R, 2]; NaN where it
        is not observed, the episode has ended or the rows have."""
        later = np.minimum(step_index + offset, n - 1)
        match = (vehicle_id[later] == ids[:, None]) & others[later]
        valid = (step_index + offset < n) & (episode[later] == episode[step_index]) & match.any(axis=1)
        seen = relative[later, match.argmax(axis=1)]
        return np.where(valid[:, None], seen, np.nan)

    close = np.zeros(len(ids), dtype=bool)
    previous = seen_at(0)
    for offset in range(1, steps + 1):
        current = seen_at(offset)
        with np.errstate(invalid="ignore"):
            close |= closest_approach(previous, current) <= radius
        previous = current
    hit = np.zeros((n, entities), dtype=bool)
    hit[step_index, row] = close
    return hit


def _side_angles(side: np.ndarray, offset: float) -> np.ndarray:
    """Angle (rad) around the junction centre of the lane end on `side` (0 south, 1 west, 2 north,
    3 east, as highway-env's nodes o0 … o3) at `offset` lane-half-widths across: +1 the incoming
    lane, −1 the outgoing one (right-hand traffic; intersection-v0's lanes are 4 m wide and end
    11 m from the centre, which fixes only the order of the angles, all this needs)."""
    x, y = 2.0 * offset, 11.0
    turn = np.radians(90.0) * np.asarray(side, dtype=np.float64)
    return np.mod(np.arctan2(np.sin(turn) * x + np.cos(turn) * y, np.cos(turn) * x - np.sin(turn) * y), 2 * np.pi)


def routes_cross(entry: np.ndarray, exit_: np.ndarray, ego_entry: np.ndarray, ego_exit: np.ndarray) -> np.ndarray:
    """Whether a vehicle's route through the junction (entry side → exit side, ints 0–3, −1
    unknown) crosses the ego's or merges into the same exit: bool [...] (False where unknown).

    Each route joins two lane ends on the junction's boundary; two such paths cross exactly when
    their ends interleave around the boundary (a left turn crosses oncoming straight traffic, two
    right turns do not). A route from the ego's own entry only follows or leaves it: no conflict.
    """
    entry, exit_, ego_entry, ego_exit = np.broadcast_arrays(*map(np.asarray, (entry, exit_, ego_entry, ego_exit)))
    a, b = _side_angles(ego_entry, 1.0), _side_angles(ego_exit, -1.0)
    arc = np.mod(b - a, 2 * np.pi)

    def inside(angle: np.ndarray) -> np.ndarray:
        return (np.mod(angle - a, 2 * np.pi) > 0) & (np.mod(angle - a, 2 * np.pi) < arc)

    interleave = inside(_side_angles(entry, 1.0)) != inside(_side_angles(exit_, -1.0))
    known = (entry >= 0) & (exit_ >= 0) & (ego_entry >= 0) & (ego_exit >= 0)
    return known & (entry != ego_entry) & ((exit_ == ego_exit) | interleave)


def action_ahead(action: np.ndarray, episode: np.ndarray, steps: int) -> np.ndarray:
    """The action taken `steps` steps later in the same episode: [N] floats, NaN where the episode
    ends first. action, episode: [N] in recorded order."""
    action = np.asarray(action, dtype=np.float64)
    episode = np.asarray(episode)
    ahead = np.full(len(action), np.nan)
    if steps < len(action):
        same = episode[steps:] == episode[:len(episode) - steps]
        ahead[:len(action) - steps] = np.where(same, action[steps:], np.nan)
    return ahead


def outcome_per_step(episode: np.ndarray, crashed: np.ndarray, arrived: np.ndarray) -> np.ndarray:
    """Each step's episode outcome name [N] from the rollout's steps table (`steps_table`: crashed
    and arrived [N] are True only on an episode's last step): collision, arrived, else timeout."""
    episode = np.asarray(episode)
    ids, inverse = np.unique(episode, return_inverse=True)
    crash = np.zeros(len(ids), dtype=bool)
    arrival = np.zeros(len(ids), dtype=bool)
    np.logical_or.at(crash, inverse, np.asarray(crashed, dtype=bool))
    np.logical_or.at(arrival, inverse, np.asarray(arrived, dtype=bool))
    names = np.where(crash, "collision", np.where(arrival, "arrived", "timeout"))
    return names[inverse]


def outcome_codes(outcome: np.ndarray) -> np.ndarray:
    """Codes of `OUTCOMES` for outcome names [N]; an unknown name raises, naming it."""
    outcome = np.asarray(outcome)
    unknown = sorted(set(outcome.tolist()) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown episode outcomes {unknown}; known: {', '.join(OUTCOMES)}")
    return np.array([OUTCOMES.index(o) for o in outcome.tolist()], dtype=np.int64)


def crossing_threat(crossing: np.ndarray, ttc: np.ndarray, threshold: float) -> np.ndarray:
    """Per step, whether some vehicle crosses the ego's path with a time to collision below
    `threshold` (s): crossing [N, E] bool, ttc [N, E] (NaN for absent rows) -> [N] bool."""
    with np.errstate(invalid="ignore"):
        return np.any(np.asarray(crossing, dtype=bool) & (np.asarray(ttc) < threshold), axis=1)


def vehicle_targets(obs: np.ndarray, episode: np.ndarray, vehicle_id: np.ndarray, positions: np.ndarray,
                    cfg: EnvConfig, *, horizon: float, radius: float, min_ego_speed: float, ttc_cap: float,
                    close_steps: int, routes: np.ndarray | None = None) -> pd.DataFrame:
    """Per-vehicle targets, one row per (step, present other vehicle) in `vehicle_rows` order:
    step_index (row of the step arrays), row (entity), episode, vehicle_id and every per-vehicle
    target of `TARGETS` (route_crosses only with `routes`).

    obs [N, E, F]; episode [N]; vehicle_id [N, E]; positions [N, E, 2] (m); horizon, radius,
    min_ego_speed: `egolens.scene.scene_facts`'s; ttc_cap (s); close_steps: the window of
    `comes_close` in steps (seconds × the env's policy frequency); routes [N, E, 2]: each row's
    (entry side, exit side) from the simulator (row 0 the ego's; −1 unknown, target NaN there).
    """
    facts = scene_facts(obs, cfg, horizon, radius, min_ego_speed)
    close = comes_close(episode, vehicle_id, positions, close_steps, radius)
    step_index, row = vehicle_rows(obs)
    values = {
        "distance": facts["distance"],
        "ttc": capped_ttc(facts["ttc"], ttc_cap),
        "crossing": facts["crossing"].astype(np.int64),
        "bearing_sector": bearing_sector(facts["bearing_deg"]),
        "comes_close": close.astype(np.int64),
    }
    if routes is not None:
        routes = np.asarray(routes)
        crosses = routes_cross(routes[..., 0], routes[..., 1], routes[:, :1, 0], routes[:, :1, 1])
        known = (routes >= 0).all(axis=-1) & (routes[:, :1] >= 0).all(axis=-1)
        values["route_crosses"] = np.where(known, crosses.astype(np.float64), np.nan)
    return pd.DataFrame({"step_index": step_index, "row": row, "episode": np.asarray(episode)[step_index],
                         "vehicle_id": np.asarray(vehicle_id)[step_index, row],
                         **{name: value[step_index, row] for name, value in values.items()}})


def step_targets(obs: np.ndarray, episode: np.ndarray, step: np.ndarray, action: np.ndarray, outcome: np.ndarray,
                 cfg: EnvConfig, *, horizon: float, radius: float, min_ego_speed: float,
                 threat_ttc: float) -> pd.DataFrame:
    """Per-step targets, one row per recorded step: episode, step and every per-step target of
    `TARGETS` (action_next / action_next2 NaN at the episode's last steps).

    obs [N, E, F]; episode, step, action [N]; outcome [N]: the name of the step's episode's
    outcome; threat_ttc (s): the time to collision below which a crossing vehicle is a threat.
    """
    check_ordered(episode, step)
    facts = scene_facts(obs, cfg, horizon, radius, min_ego_speed)
    kin = denormalize(np.asarray(obs), cfg)
    return pd.DataFrame({
        "episode": episode, "step": step,
        "ego_speed": np.hypot(kin.vx[:, 0], kin.vy[:, 0]),
        "junction_distance": np.hypot(kin.x[:, 0] - JUNCTION[0], kin.y[:, 0] - JUNCTION[1]),
        "crossing_threat": crossing_threat(facts["crossing"], facts["ttc"], threat_ttc).astype(np.int64),
        "action": np.asarray(action, dtype=np.int64),
        "action_next": action_ahead(action, episode, 1),
        "action_next2": action_ahead(action, episode, 2),
        "outcome": outcome_codes(outcome),
    })
