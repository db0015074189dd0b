"""Per-vehicle scene facts computed from observations.

Coordinates are highway-env's: x to the right of the screen, y *down* the screen, metres;
a heading angle turns from +x towards +y, i.e. clockwise on screen. All facts are taken
relative to the ego vehicle (row 0) under constant velocities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from egolens.config import EnvConfig
from egolens.vocabulary import PRESENT_AT

FACTS = ("distance", "bearing_deg", "longitudinal", "lateral", "closing_speed", "ttc", "ahead", "crossing")
"""Columns of `scene_facts`, each [N, E] (the ego's own entries are NaN / False)."""


@dataclass(frozen=True)
class Kinematics:
    """De-normalised kinematics, each [N, E]: position (m), velocity (m/s), heading unit vector."""

    present: np.ndarray
    x: np.ndarray
    y: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    cos_h: np.ndarray
    sin_h: np.ndarray


def denormalize(obs: np.ndarray, cfg: EnvConfig) -> Kinematics:
    """obs: [N, E, F] normalised as highway-env does (x, y, vx, vy mapped from features_range
    to [−1, 1]) -> metres and m/s. Values clipped at ±1 come back as the range's bounds."""
    index = {name: i for i, name in enumerate(cfg.features)}
    missing = {"presence", "x", "y", "vx", "vy", "cos_h", "sin_h"} - set(index)
    if missing:
        raise ValueError(f"scene facts need the features {sorted(missing)}")
    ranges = cfg.features_range.model_dump()

    def scale(name: str) -> np.ndarray:
        low, high = ranges[name]
        return low + (obs[..., index[name]] + 1.0) * (high - low) / 2.0

    return Kinematics(present=obs[..., index["presence"]] >= PRESENT_AT, x=scale("x"), y=scale("y"),
                      vx=scale("vx"), vy=scale("vy"), cos_h=obs[..., index["cos_h"]], sin_h=obs[..., index["sin_h"]])


def time_to_collision(rel: np.ndarray, rel_v: np.ndarray, radius: float) -> np.ndarray:
    """First t ≥ 0 with |rel + rel_v·t| ≤ radius under constant velocities; inf if never.

    rel, rel_v: [..., 2] position and velocity of the other vehicle relative to the ego.
    0 when already within `radius`.
    """
    a = np.sum(rel_v * rel_v, axis=-1)
    b = 2.0 * np.sum(rel * rel_v, axis=-1)
    c = np.sum(rel * rel, axis=-1) - radius**2
    disc = b * b - 4.0 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        first = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    ttc = np.where((disc >= 0) & (a > 0) & (first >= 0), first, np.inf)
    return np.where(c <= 0, 0.0, ttc)


def segments_cross(p: np.ndarray, p_end: np.ndarray, q: np.ndarray, q_end: np.ndarray) -> np.ndarray:
    """Whether segments p→p_end and q→q_end intersect (proper or touching); inputs [..., 2]."""
    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        ab, ac = b - a, c - a
        return np.sign(ab[..., 0] * ac[..., 1] - ab[..., 1] * ac[..., 0])

    d1, d2 = orient(q, q_end, p), orient(q, q_end, p_end)
    d3, d4 = orient(p, p_end, q), orient(p, p_end, q_end)
    return (d1 * d2 <= 0) & (d3 * d4 <= 0) & ~((d1 == 0) & (d2 == 0) & (d3 == 0) & (d4 == 0))


def scene_facts(obs: np.ndarray, cfg: EnvConfig, horizon: float = 5.0, radius: float = 5.0,
                min_ego_speed: float = 4.5) -> dict[str, np.ndarray]:
    """Facts about every vehicle relative to the ego; obs [N, E, F] -> {fact: [N, E]}.

    - distance (m), bearing_deg (from the ego's heading, positive = the ego's right, i.e.
      clockwise on screen), longitudinal / lateral (m, in the ego's frame, lateral positive right);
    - closing_speed (m/s, positive = the gap shrinks); ttc (s): first time the gap falls
      below `radius` under constant velocities, inf if it never does;
    - ahead: longitudinal > 0;
    - crossing: the vehicle's constant-velocity path over `horizon` s crosses the ego's path
      over the same horizon, the ego moving along its heading at max(speed, min_ego_speed)
      (it can always speed up to IDLE's target).
    Entries of absent vehicles and of the ego itself are NaN (floats) or False.
    """
    k = denormalize(obs, cfg)

    def ego(values: np.ndarray) -> np.ndarray:
        """The ego's entry of [N, E] values as [N, 1], to broadcast over entities."""
        return values[:, :1]

    rel = np.stack([k.x - ego(k.x), k.y - ego(k.y)], axis=-1)                   # [N, E, 2]
    rel_v = np.stack([k.vx - ego(k.vx), k.vy - ego(k.vy)], axis=-1)
    heading = np.stack([ego(k.cos_h), ego(k.sin_h)], axis=-1)                   # [N, 1, 2]
    distance = np.linalg.norm(rel, axis=-1)
    longitudinal = np.sum(rel * heading, axis=-1)
    lateral = heading[..., 0] * rel[..., 1] - heading[..., 1] * rel[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        closing = -np.sum(rel * rel_v, axis=-1) / distance
    ego_speed = np.maximum(np.hypot(ego(k.vx), ego(k.vy)), min_ego_speed)        # [N, 1]
    ego_pos = np.stack([ego(k.x), ego(k.y)], axis=-1)
    ego_end = ego_pos + heading * (ego_speed * horizon)[..., None]
    pos = np.stack([k.x, k.y], axis=-1)
    end = pos + np.stack([k.vx, k.vy], axis=-1) * horizon
    facts = {
        "distance": distance,
        "bearing_deg": np.degrees(np.arctan2(lateral, longitudinal)),
        "longitudinal": longitudinal,
        "lateral": lateral,
        "closing_speed": closing,
        "ttc": time_to_collision(rel, rel_v, radius),
        "ahead": longitudinal > 0,
        "crossing": segments_cross(ego_pos, ego_end, pos, end),
    }
    valid = k.present.copy()
    valid[:, 0] = False
    for name, value in facts.items():
        facts[name] = np.where(valid, value, False if value.dtype == bool else np.nan)
    return facts


def naive_rankings(distance: np.ndarray, ttc: np.ndarray) -> dict[str, np.ndarray]:
    """Scores [B, E] (higher = ranked first) of the two naive rankings of the vehicles.

    distance, ttc [B, E] (m, s; `scene_facts`: NaN for absent vehicles and the ego, ttc
    inf off a collision course). nearest: −distance. lowest_ttc: lowest time-to-collision first, the
    vehicles tied in it (those never on a collision course, inf) after them by distance, as a strict
    order (score −position). NaN where distance is NaN.
    """
    distance, ttc = np.asarray(distance, dtype=np.float64), np.asarray(ttc, dtype=np.float64)
    urgency = np.full(distance.shape, math.nan)
    for b in range(distance.shape[0]):
        idx = np.flatnonzero(np.isfinite(distance[b]))
        order = idx[np.lexsort((distance[b, idx], ttc[b, idx]))]
        urgency[b, order] = -np.arange(order.size, dtype=np.float64)
    return {"nearest": -distance, "lowest_ttc": urgency}
