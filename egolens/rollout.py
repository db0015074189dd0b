"""Recorded greedy episodes (`egolens.episodes.play` with record "steps"/"frames") and their
tables: observations, actions, rewards, which simulator vehicle each observation row shows
(`egolens.tracking`), activations, per-step and per-vehicle tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import nn

from egolens.analysis.reading.probe_targets import step_targets, vehicle_targets
from egolens.analysis_config import SceneConfig
from egolens.config import EnvConfig
from egolens.env import make_env, make_runner
from egolens.episodes import ARRIVED, COLLISION, Episode
from egolens.hooks import run_with_cache
from egolens.play import play
from egolens.probes_config import ProbeTargetsConfig
from egolens.runner import EnvRunner
from egolens.scene import denormalize, scene_facts
from egolens.vocabulary import ACTIONS


def record_activations(net: nn.Module, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Q [N, A] and every named activation {name: [N, ...]} of a batch of observations [N, E, F]."""
    q, cache = run_with_cache(net, torch.as_tensor(obs))
    return q.numpy(), {name: value.numpy() for name, value in cache.items()}


def rollout_arrays(episodes: list[Episode], net: nn.Module) -> dict[str, np.ndarray]:
    """Everything recorded, one row per step: obs [N, E, F], episode, step, action, reward [N],
    vehicle_id [N, E], q [N, A], attention [N, H, E], and every activation by name."""
    obs = np.concatenate([e.obs for e in episodes])
    q, cache = record_activations(net, obs)
    arrays = {
        "obs": obs,
        "episode": np.concatenate([np.full(len(e.action), i) for i, e in enumerate(episodes)]),
        "step": np.concatenate([np.arange(len(e.action)) for e in episodes]),
        "env_seed": np.concatenate([np.full(len(e.action), e.env_seed) for e in episodes]),
        "action": np.concatenate([e.action for e in episodes]),
        "reward": np.concatenate([e.reward for e in episodes]).astype(np.float32),
        "vehicle_id": np.concatenate([e.vehicle_id for e in episodes]),
        "q": q,
        "attention": cache["attention_layer.hook_pattern"][:, :, 0, :],
    }
    return arrays | cache


def steps_table(episodes: list[Episode], arrays: dict[str, np.ndarray], cfg: EnvConfig) -> pd.DataFrame:
    """One row per step: episode, step, env_seed, action (name), Q per action, reward, whether the
    step ended the episode by a crash or an arrival, and the ego speed (m/s)."""
    kin = denormalize(arrays["obs"], cfg)
    last = np.concatenate([np.arange(len(e.action)) == len(e.action) - 1 for e in episodes])
    ended_as = np.concatenate([np.full(len(e.action), e.outcome) for e in episodes])
    table = pd.DataFrame({
        "episode": arrays["episode"], "step": arrays["step"], "env_seed": arrays["env_seed"],
        "action": [ACTIONS[a] for a in arrays["action"]],
        **{f"q_{name.lower()}": arrays["q"][:, i] for i, name in enumerate(ACTIONS)},
        "reward": arrays["reward"],
        "crashed": last & (ended_as == COLLISION),
        "arrived": last & (ended_as == ARRIVED),
        "ego_speed": np.hypot(kin.vx[:, 0], kin.vy[:, 0]),
    })
    return table


def vehicles_table(arrays: dict[str, np.ndarray], cfg: EnvConfig, horizon: float, radius: float,
                   min_ego_speed: float) -> pd.DataFrame:
    """One row per (step, present other vehicle): its simulator id, row, position (m), the scene
    facts of `egolens.scene` and its attention weight per head."""
    facts = scene_facts(arrays["obs"], cfg, horizon, radius, min_ego_speed)
    kin = denormalize(arrays["obs"], cfg)
    n, entities = arrays["vehicle_id"].shape
    step_index, row = np.nonzero(kin.present & (np.arange(entities) > 0)[None, :])
    columns = {
        "episode": arrays["episode"][step_index], "step": arrays["step"][step_index],
        "vehicle_id": arrays["vehicle_id"][step_index, row], "row": row,
        "x": kin.x[step_index, row], "y": kin.y[step_index, row],
        "vx": kin.vx[step_index, row], "vy": kin.vy[step_index, row],
    }
    columns |= {name: value[step_index, row] for name, value in facts.items()}
    for h in range(arrays["attention"].shape[1]):
        columns[f"attention_h{h}"] = arrays["attention"][step_index, h, row]
    return pd.DataFrame(columns)


def attention_off_ego(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """How much attention the other vehicles get at all: one row per (episode, head) with the
    episode's steps and the mean over its steps of the attention share off the ego
    (1 − pattern[ego]), from the recorded attention [N, H, E] and episode [N]."""
    off_ego = 1.0 - arrays["attention"][:, :, 0].astype(np.float64)           # [N, H]
    episode = arrays["episode"]
    rows = []
    for e in np.unique(episode):
        steps = episode == e
        rows += [{"episode": int(e), "head": h, "steps": int(steps.sum()),
                  "off_ego": round(float(off_ego[steps, h].mean()), 6)} for h in range(off_ego.shape[1])]
    return pd.DataFrame(rows, columns=["episode", "head", "steps", "off_ego"])


def play_episodes(net: nn.Module, cfg: EnvConfig, env_seeds: Sequence[int], render_episodes: int, num_envs: int,
                  progress: Callable[[], None] = lambda: None) -> list[Episode]:
    """Greedy episodes of `net` from each of `env_seeds`, in order, every step recorded. The first
    `render_episodes` play on a rendered env of their own (once rendered, an env draws every
    intermediate frame of every later step), the others unrendered on `num_envs` envs in
    parallel; `progress` is called once per unrendered episode."""
    with EnvRunner([partial(make_env, cfg, render_mode="rgb_array")]) as rendered:
        episodes = play(net, rendered, env_seeds[:render_episodes], record="frames")
    plain = list(env_seeds[render_episodes:])
    with make_runner(cfg, min(num_envs, max(len(plain), 1))) as runner:
        episodes += play(net, runner, plain, record="steps", progress=progress)
    return episodes


def probe_arrays(episodes: list[Episode], arrays: dict[str, np.ndarray], routes: Sequence[np.ndarray],
                 cfg: EnvConfig, scene: SceneConfig, targets: ProbeTargetsConfig) -> dict[str, np.ndarray]:
    """What the probes read besides the activations (`egolens.analysis.reading.probe_targets`):
    positions [N, E, 2] (world m, the tracker's) and routes [N, E, 2] (entry side, exit side from
    the simulator, `egolens.routes.replay_routes`; −1 unknown), every per-vehicle target as
    `vehicle.<column>` [R] (one row per (step, present other vehicle), `vehicle_rows` order, with
    step_index, row, episode, vehicle_id) and every per-step target as `step.<column>` [N].

    episodes, arrays: a rollout (`play_episodes`, `rollout_arrays`); routes: one [T, E, 2] per episode.
    """
    route = np.concatenate(routes).astype(np.int64)
    positions = np.concatenate([e.positions for e in episodes]).astype(np.float64)
    facts = {"horizon": scene.horizon, "radius": scene.collision_radius, "min_ego_speed": scene.min_ego_speed}
    close_steps = int(round(targets.close_seconds * cfg.policy_frequency))
    vehicles = vehicle_targets(arrays["obs"], arrays["episode"], arrays["vehicle_id"], positions, cfg,
                               ttc_cap=targets.ttc_cap, close_steps=close_steps, routes=route, **facts)
    outcome = np.concatenate([np.full(len(e.action), e.outcome) for e in episodes])
    steps = step_targets(arrays["obs"], arrays["episode"], arrays["step"], arrays["action"], outcome, cfg,
                         threat_ttc=targets.threat_ttc, **facts)
    return ({"positions": positions, "routes": route}
            | {f"vehicle.{name}": vehicles[name].to_numpy() for name in vehicles.columns}
            | {f"step.{name}": steps[name].to_numpy() for name in steps.columns})
