"""The designed-scenes study of one agent seed: does the agent's braking follow the gap, and through
which head?

For every route of the conflicting vehicle (`scenes.routes`) and route visibility (`scenes.visible`)
the gap (its arrival at the conflict point minus the ego's, were the ego to go on) is swept over
`ScenesConfig.gaps` with `egolens.analysis.intervening.designed_scenes` in the real simulator. Per
scene, once: the clairvoyant planner's first action and the true outcome of going now. Per scene and
network (trained, untrained): Q(SLOWER) − Q(FASTER), the brake margin Q(SLOWER) − max(Q(IDLE),
Q(FASTER)) and the greedy action (`scene_table`); per head, its attention on the conflicting vehicle
and the change of Q(SLOWER) − Q(FASTER) when the head is ablated, by its mean over the sweep's scenes
(mean ablation over the sweep: the head keeps its average write, loses what depends on the gap) and
by zero (`head_table`).

"Brakes" means the greedy action is SLOWER (IDLE and FASTER both keep the ego going). No file I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.intervening.designed_scenes import (
    SceneSpec,
    build_scene,
    clairvoyant_choice,
    go_now,
    network_readout,
    scene_config,
)
from egolens.analysis.intervening.interventions import head_ablation, mean_activation, q_metric
from egolens.config import EnvConfig, ScenesConfig
from egolens.env import make_env
from egolens.hooks import hooks, run_with_cache
from egolens.names import COLLISION, scene_sweep
from egolens.sites import PATTERN, Z
from egolens.vocabulary import ACTIONS

SLOWER_NAME = ACTIONS[0]
SWEEP = ("route", "visible")
"""Columns that name one sweep (one conflicting vehicle's route and whether it is observed)."""
ABLATIONS = ("mean_over_sweep", "zero")
EGO_LANE_LENGTH = 100.0
"""m: the ego's approach lane (`scenes.ego_longitudinal` is measured along it; the junction starts at its end)."""
Progress = Callable[[Iterable, str], Iterable]


def route_spec(cfg: ScenesConfig, route: str, visible: bool) -> SceneSpec:
    """The scene of `route` ("o1-o3") and visibility at arrival time 0 (the sweep sets the arrival)."""
    approach, destination = route.split("-")
    return SceneSpec(arrival_time=0.0, ego_longitudinal=cfg.ego_longitudinal, ego_speed=cfg.ego_speed,
                     approach=approach, destination=destination, other_speed=cfg.other_speed, visible=visible,
                     env_seed=cfg.env_seed)


def brake_margin(q: torch.Tensor) -> torch.Tensor:
    """Q(SLOWER) − max(Q(IDLE), Q(FASTER)): q [B, A] -> [B]; >= 0 exactly when the greedy action is SLOWER
    (argmax takes the first of tied actions)."""
    return q[:, 0] - q[:, 1:].max(dim=1).values


def head_table(net: nn.Module, obs: torch.Tensor, rows: Sequence[int],
               roles: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Per scene and head: attention on the conflicting vehicle and the effect of ablating the head.

    obs [S, E, F]: the S scenes of one sweep; rows [S]: the conflicting vehicle's row in each (−1: not
    observed, attention NaN). For each head h and ablation (`ABLATIONS`: z_h set to its mean over the S
    scenes, or to 0; `interventions.head_ablation`), m_ablated and effect = m_ablated − m with
    m = Q(SLOWER) − Q(FASTER), and whether the brake/go decision flips. roles: head -> role name
    (`egolens.names.head_role`), "" when None. Returns scene (index in obs), head, head_role, attention,
    ablation, m, m_ablated, effect, flips.
    """
    with torch.no_grad():
        q, cache = run_with_cache(net, obs, [PATTERN, Z])
        pattern, z = cache[PATTERN][:, :, 0], cache[Z]                    # [S, H, E], [S, H, 1, d]
        m, brakes = q_metric(q), brake_margin(q) >= 0
        mean_z = mean_activation(z)
        out = []
        for h in range(pattern.shape[1]):
            for ablation in ABLATIONS:
                fns = head_ablation(h, "mean" if ablation == "mean_over_sweep" else "zero", mean_z)
                with hooks(net, fns):
                    q_ablated = net(obs)
                m_ablated = q_metric(q_ablated)
                flips = (brake_margin(q_ablated) >= 0) != brakes
                for s, row in enumerate(rows):
                    out.append({"scene": s, "head": h, "head_role": (roles or {}).get(h, ""),
                                "attention": float(pattern[s, h, row]) if row >= 0 else math.nan,
                                "ablation": ablation, "m": float(m[s]), "m_ablated": float(m_ablated[s]),
                                "effect": float(m_ablated[s] - m[s]), "flips": bool(flips[s])})
    return pd.DataFrame(out)


def scene_outcomes(env_cfg: EnvConfig, spec: SceneSpec, gaps: Sequence[float], *, clairvoyant: bool = True,
                   progress: Progress | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Build the sweep's scenes (one env reset per scene with `spec.env_seed`) and what they hold,
    network aside.

    gaps [S] (s). Returns one row per scene (gap, arrival_time, ego_time_to_conflict, observed, other_row,
    and, for `clairvoyant`, the planner's choice and the outcome of going now: `designed_scenes.
    clairvoyant_choice`, `go_now`) and the observations [S, E, F] float32.
    """
    env = make_env(scene_config(env_cfg))
    try:
        ego_time = build_scene(env_cfg, spec, env).ego_time_to_conflict
        rows, observations = [], []
        for gap in (progress or (lambda items, desc: items))(list(gaps), f"scenes {spec.approach}-{spec.destination}"):
            scene = build_scene(env_cfg, replace(spec, arrival_time=float(ego_time + gap)), env)
            row = {"gap": float(gap), "arrival_time": float(ego_time + gap),
                   "ego_time_to_conflict": scene.ego_time_to_conflict, "observed": scene.other_row is not None,
                   "other_row": scene.other_row if scene.other_row is not None else -1}
            if clairvoyant:
                row.update(clairvoyant_choice(scene.env))
                row.update(go_now(scene.env))
            rows.append(row)
            observations.append(scene.obs.astype(np.float32))
    finally:
        env.close()
    return pd.DataFrame(rows), np.stack(observations)


def network_table(net: nn.Module, obs: np.ndarray, other_rows: Sequence[int]) -> pd.DataFrame:
    """Per scene: q_slower, q_idle, q_faster, q_slower_minus_faster, brake_margin, greedy_action and
    brakes of `net` on obs [S, E, F] (`designed_scenes.network_readout`, per-head attention left to
    `head_table`)."""
    rows = []
    for x, row in zip(obs, other_rows):
        readout = network_readout(net, x, int(row) if row >= 0 else None)
        q = torch.tensor([[readout["q_slower"], readout["q_idle"], readout["q_faster"]]], dtype=torch.float64)
        rows.append({key: value for key, value in readout.items() if not key.startswith("attention_")}
                    | {"brake_margin": float(brake_margin(q)[0]), "brakes": readout["greedy_action"] == SLOWER_NAME})
    return pd.DataFrame(rows)


def check_placeable(env_cfg: EnvConfig, cfg: ScenesConfig) -> None:
    """Raise ValueError naming the scenes keys if a sweep's first or last gap cannot be placed (the
    conflicting vehicle would start off its route); cheap (two env resets per sweep), so a stage calls it
    before any work."""
    env = make_env(scene_config(env_cfg))
    try:
        for route in cfg.routes:
            spec = route_spec(cfg, route, False)
            ego_time = build_scene(env_cfg, spec, env).ego_time_to_conflict
            for key, gap in (("gap_start", cfg.gaps[0]), ("gap_stop", cfg.gaps[-1])):
                try:
                    build_scene(env_cfg, replace(spec, arrival_time=float(ego_time + gap)), env)
                except ValueError as err:
                    raise ValueError(f"scenes.{key} = {gap} cannot be placed on route {route} with scenes.other_speed "
                                     f"= {cfg.other_speed} and the ego {ego_time:.2f} s from the conflict point "
                                     f"(scenes.ego_longitudinal, scenes.ego_speed): {err} (arrival time = gap + "
                                     f"{ego_time:.2f} s)") from err
    finally:
        env.close()


def run_scenes(env_cfg: EnvConfig, cfg: ScenesConfig, nets: Mapping[str, nn.Module], *,
               roles: Mapping[int, str] | None = None, clairvoyant: bool = True,
               progress: Progress | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every sweep of `cfg` (routes × visible) for every network of `nets` (label -> network).

    Returns (scenes, heads): scenes has one row per (route, visible, gap, model): the sweep's keys, the
    setting (ego_to_junction m, ego_speed, other_speed m/s), the scene (`scene_outcomes`) and the
    network (`network_table`); heads one row per (route, visible, gap, model, head, ablation)
    (`head_table`, only for networks with an `attention_layer`). Deterministic.
    """
    check_placeable(env_cfg, cfg)
    scenes, heads = [], []
    for route in cfg.routes:
        for visible in cfg.visible:
            keys = {"route": route, "visible": visible}
            setting = {"ego_to_junction": EGO_LANE_LENGTH - cfg.ego_longitudinal, "ego_speed": cfg.ego_speed,
                       "other_speed": cfg.other_speed}
            outcomes, obs = scene_outcomes(env_cfg, route_spec(cfg, route, visible), cfg.gaps,
                                           clairvoyant=clairvoyant, progress=progress)
            for label, net in nets.items():
                readout = network_table(net, obs, outcomes["other_row"].tolist())
                labels = pd.DataFrame({**keys, "model": label, **setting}, index=outcomes.index)
                scenes.append(pd.concat([labels, outcomes, readout], axis=1))
                if hasattr(net, "attention_layer"):
                    table = head_table(net, torch.from_numpy(obs), outcomes["other_row"].tolist(), roles)
                    table.insert(0, "gap", outcomes["gap"].to_numpy()[table.pop("scene").to_numpy()])
                    heads.append(table.assign(**keys, model=label))
    heads_table = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame()
    if not heads_table.empty:
        heads_table = heads_table[[*SWEEP, "model", *(c for c in heads_table.columns if c not in (*SWEEP, "model"))]]
    return pd.concat(scenes, ignore_index=True), heads_table


# ------------------------------------------------------------------------------------------ summary


def brake_switches(gaps: np.ndarray, margin: np.ndarray) -> pd.DataFrame:
    """Where the brake/go decision changes along the gap.

    gaps [S] increasing, margin [S] the brake margin (brakes where >= 0). One row per change between two
    neighbouring gaps: before, after, direction ("brake_to_go" or "go_to_brake") and gap, the margin's
    zero crossing by linear interpolation between the two (a network whose margin is linear in the gap
    switches exactly there).
    """
    brakes = margin >= 0
    out = []
    for i in np.flatnonzero(brakes[1:] != brakes[:-1]):
        g0, g1, m0, m1 = gaps[i], gaps[i + 1], margin[i], margin[i + 1]
        out.append({"before": float(g0), "after": float(g1),
                    "direction": "brake_to_go" if brakes[i] else "go_to_brake",
                    "gap": float(g0 + (g1 - g0) * m0 / (m0 - m1))})
    return pd.DataFrame(out, columns=["before", "after", "direction", "gap"])


def goes_from(gaps: np.ndarray, goes: np.ndarray) -> float:
    """The smallest gap of the grid from which `goes` [S] holds at every larger gap (NaN if not at the last)."""
    if not goes[-1]:
        return math.nan
    stops = np.flatnonzero(~goes)
    return float(gaps[stops[-1] + 1]) if stops.size else float(gaps[0])


def sweep_summary(sweep: pd.DataFrame) -> dict[str, float]:
    """The numbers of one network on one sweep (rows of `run_scenes`'s scenes table, any order).

    brake_rate; planner_agreement: share of scenes where the network brakes exactly when the clairvoyant
    planner's first action is SLOWER; go_safety_agreement: share where it brakes exactly when going now
    collides; switch_gap: the last brake-to-go switch along the gap (`brake_switches`, interpolated; NaN
    if none), n_switches; goes_from_gap, planner_goes_from_gap, safe_from_gap: the smallest gap from
    which the network goes, the planner goes, going now does not collide, at every larger gap (`goes_from`).
    """
    sweep = sweep.sort_values("gap", kind="stable")
    gaps, brakes = sweep["gap"].to_numpy(np.float64), sweep["brakes"].to_numpy(bool)
    planner = sweep["clairvoyant_action"].to_numpy() == SLOWER_NAME
    collides = sweep["go_outcome"].to_numpy() == COLLISION
    switches = brake_switches(gaps, sweep["brake_margin"].to_numpy(np.float64))
    to_go = switches[switches["direction"] == "brake_to_go"]
    return {"brake_rate": float(brakes.mean()), "planner_agreement": float((brakes == planner).mean()),
            "go_safety_agreement": float((brakes == collides).mean()),
            "switch_gap": float(to_go["gap"].iloc[-1]) if len(to_go) else math.nan,
            "n_switches": len(switches), "goes_from_gap": goes_from(gaps, ~brakes),
            "planner_goes_from_gap": goes_from(gaps, ~planner), "safe_from_gap": goes_from(gaps, ~collides)}


def head_summary(heads: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per head (by role, else `head<i>`) of one network on one sweep: mean attention on the vehicle and,
    per ablation, the mean effect on Q(SLOWER) − Q(FASTER), its mean size and the share of flipped decisions."""
    out: dict[str, dict[str, float]] = {}
    for (head, role), group in heads.groupby(["head", "head_role"], sort=True):
        entry = {"attention_mean": float(group.drop_duplicates("gap")["attention"].mean())}
        for ablation, rows in group.groupby("ablation", sort=True):
            entry |= {f"{ablation}_effect_mean": float(rows["effect"].mean()),
                      f"{ablation}_effect_mean_abs": float(rows["effect"].abs().mean()),
                      f"{ablation}_flip_rate": float(rows["flips"].mean())}
        out[role or f"head{head}"] = entry
    return out


def summarize(scenes: pd.DataFrame, heads: pd.DataFrame) -> dict:
    """summary.json: {model: {sweep (`names.scene_sweep`): {**sweep_summary, "heads": head_summary}}}."""
    out: dict = {}
    for (model, route, visible), sweep in scenes.groupby(["model", *SWEEP], sort=False):
        entry = sweep_summary(sweep)
        if not heads.empty:
            rows = heads[(heads["model"] == model) & (heads["route"] == route) & (heads["visible"] == visible)]
            entry["heads"] = head_summary(rows)
        out.setdefault(model, {})[scene_sweep(route, bool(visible))] = entry
    return out


METRICS = ("planner_agreement", "switch_gap", "safe_from_gap")
"""The trained network's numbers per sweep kept in the DVC metric (`dvc exp show` stays readable)."""


def metrics(summary: Mapping[str, Mapping[str, Mapping[str, object]]], model: str = "trained") -> dict:
    """The DVC metric: {sweep: {metric: value}} of `model` for `METRICS`."""
    return {sweep: {key: entry[key] for key in METRICS} for sweep, entry in summary[model].items()}
