"""The attention scene: a recorded step drawn top-down with each head's attention on the vehicles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from egolens.config import EnvConfig
from egolens.figures import VEHICLE_SIZE, draw_vehicle, head_colour, scene_axes
from egolens.names import MODELS
from egolens.plots.style import EGO_COLOUR, LANE_WIDTH, MODEL_COLOURS, OTHER_COLOUR, ROAD_COLOUR, styled
from egolens.scene import denormalize
from egolens.vocabulary import ACTIONS

SCENE_POINTS = 330.0

"""Width in points a scene panel of `attention_scene` has at least (label placement errs on the side of space)."""
LABEL_SIZE = 8


def label_offsets(centres: np.ndarray, names: Sequence[str], metres_per_point: float,
                  tips: np.ndarray | None = None) -> list[tuple[float, float]]:
    """Offsets (points, x right / y up) for labels of vehicles at centres [N, 2] (metres, y down the
    screen as drawn), chosen greedily, nearest vehicles first, so no two label boxes overlap each other,
    a vehicle or a velocity arrow (centre -> tips [N, 2]): each label tries rings of 8 directions at
    growing distances and takes the first free spot."""
    def to_screen(points: np.ndarray) -> np.ndarray:
        return np.column_stack([points[:, 0], -points[:, 1]]) / metres_per_point          # points, y up

    screen = to_screen(centres)
    car = np.array(VEHICLE_SIZE) / metres_per_point / 2 + 2.0
    taken = [(x - car[0], y - car[0], x + car[0], y + car[0]) for x, y in screen]        # vehicles, any heading
    if tips is not None:
        taken += [(min(a[0], b[0]) - 2, min(a[1], b[1]) - 2, max(a[0], b[0]) + 2, max(a[1], b[1]) + 2)
                  for a, b in zip(screen, to_screen(tips))]
    order = np.argsort(np.hypot(*(screen - screen[:1]).T), kind="stable")
    height = LABEL_SIZE * 1.3
    offsets: list[tuple[float, float]] = [(0.0, 0.0)] * len(names)
    rings = [(radius * np.cos(angle), radius * np.sin(angle)) for radius in (6, 14, 24, 36, 50, 66, 84)
             for angle in np.radians([45, 135, -45, -135, 0, 180, 90, -90])]
    for i in order:
        width = 0.62 * LABEL_SIZE * len(names[i]) + 2

        def box(dx: float, dy: float, x: float = screen[i, 0], y: float = screen[i, 1],
                w: float = width) -> tuple[float, float, float, float]:
            x0 = x + dx - (w if dx < 0 else 0)
            return x0, y + dy - height / 2, x0 + w, y + dy + height / 2

        def free(b: tuple[float, float, float, float]) -> bool:
            return not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)

        # nowhere free: the farthest ring's first spot, up-right
        dx, dy = next((spot for spot in rings if free(box(*spot))), rings[-8])
        offsets[i] = (float(dx), float(dy))
        taken.append(box(dx, dy))
    return offsets


@styled
def attention_scene(obs: np.ndarray, attention: np.ndarray, action: np.ndarray, q: np.ndarray,
                    vehicle_id: np.ndarray, steps: Sequence[int], env: EnvConfig, title: str,
                    ranks: Mapping[int, int] | None = None) -> Figure:
    """For each of `steps` (rows): the scene (left) and each head's attention over the present vehicles (right).

    obs: [T, E, F] normalised observations of one episode (row 0 the ego); attention: [T, heads, E];
    action: [T] action indices; q: [T, actions]; vehicle_id: [T, E] simulator id of each row (−1 empty);
    steps: indices into T; env: the env config whose features_range denormalises the observation;
    ranks: head index -> closed-loop rank in this seed, so heads are named (head_rank<r>) and coloured by
    role as in the report and the designed-scenes figure (by index without it).
    Positions are in metres with y down the screen, as highway-env draws them.
    """
    kin = denormalize(obs, env)
    heads = attention.shape[1]
    role = {h: (ranks[h] - 1 if ranks and h in ranks else h) for h in range(heads)}
    head_name = {h: f"head_rank{ranks[h]}" if ranks and h in ranks else f"head {h}" for h in range(heads)}
    by_role = sorted(range(heads), key=role.__getitem__)
    shown = np.asarray(steps)
    present = kin.present[shown]
    half = min(float(np.max(np.abs(np.concatenate([kin.x[shown][present], kin.y[shown][present]])))) + 12.0, 110.0)
    fig = Figure(figsize=(13, 5.6 * len(shown) + 0.8), layout="constrained")
    axes = fig.subplots(len(shown), 2, width_ratios=[1.15, 1], squeeze=False)
    for r, t in enumerate(shown):
        scene, bars = axes[r]
        rows = np.nonzero(kin.present[t])[0]
        names = {j: "ego" if j == 0 else f"car {vehicle_id[t, j]}" for j in rows}
        scene.axhspan(-LANE_WIDTH, LANE_WIDTH, color=ROAD_COLOUR, zorder=0)
        scene.axvspan(-LANE_WIDTH, LANE_WIDTH, color=ROAD_COLOUR, zorder=0)
        ego = np.array([kin.x[t, 0], kin.y[t, 0]])
        for h in range(heads):
            for j in rows[1:]:
                weight = float(attention[t, h, j])
                if weight >= 0.01:
                    scene.plot([ego[0], kin.x[t, j]], [ego[1], kin.y[t, j]], color=head_colour(role[h]),
                               lw=0.5 + 5 * weight, alpha=0.25 + 0.6 * weight, zorder=1)
        for j in rows:
            centre = np.array([kin.x[t, j], kin.y[t, j]])
            draw_vehicle(scene, centre[0], centre[1], kin.cos_h[t, j], kin.sin_h[t, j],
                         EGO_COLOUR if j == 0 else OTHER_COLOUR, lw=0.6, zorder=3, label=names[j])
            scene.annotate("", xy=(centre[0] + kin.vx[t, j], centre[1] + kin.vy[t, j]), xytext=tuple(centre),
                           arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.0}, zorder=4)
        centres = np.stack([kin.x[t, rows], kin.y[t, rows]], axis=1)
        tips = centres + np.stack([kin.vx[t, rows], kin.vy[t, rows]], axis=1)
        offsets = label_offsets(centres, [names[j] for j in rows], 2 * half / SCENE_POINTS, tips)
        for j, offset in zip(rows, offsets):
            scene.annotate(names[j], (float(kin.x[t, j]), float(kin.y[t, j])), xytext=offset,
                           textcoords="offset points", fontsize=LABEL_SIZE, zorder=5, va="center",
                           ha="left" if offset[0] >= 0 else "right",
                           arrowprops={"arrowstyle": "-", "color": "0.35", "lw": 0.6}
                           if np.hypot(*offset) > 9 else None)
        scene_axes(scene, 0.0, 0.0, half, f"step {t}: chose {ACTIONS[int(action[t])]}")
        order = sorted(rows, key=lambda j: (j != 0, vehicle_id[t, j]))
        width = 0.8 / heads
        for i, h in enumerate(by_role):
            drawn = bars.bar(np.arange(len(order)) + (i - (heads - 1) / 2) * width, attention[t, h, order],
                             width=width, color=head_colour(role[h]), label=head_name[h])
            bars.bar_label(drawn, labels=[f"{w:.2f}" if w >= 0.01 else "" for w in attention[t, h, order]],
                           fontsize=7, padding=1)
        bars.set_xticks(range(len(order)), [names[j] for j in order], rotation=45, ha="right")
        bars.set_ylim(0, 1.05)
        bars.set_ylabel("attention weight")
        bars.set_xlabel("vehicle (simulator id)")
        q_text = ", ".join(f"{name} {q[t, a]:.2f}" for a, name in enumerate(ACTIONS))
        bars.set_title(f"Q: {q_text}  →  {ACTIONS[int(action[t])]}")
        bars.legend(loc="upper right", title="attention")
    fig.legend(handles=[Patch(facecolor=EGO_COLOUR, edgecolor="black", label="ego"),
                        Patch(facecolor=OTHER_COLOUR, edgecolor="black", label="other vehicle"),
                        Line2D([], [], color="black", marker=">", label="1 s of travel"),
                        *[Line2D([], [], color=head_colour(role[h]), lw=3, label=f"{head_name[h]} attention")
                          for h in by_role]],
               loc="outside lower center", ncols=3 + heads)
    fig.suptitle(title)
    return fig


SCENE_STEPS = 4

"""Steps of the first recorded episode drawn by `first_episode_scene` (evenly spaced)."""


def first_episode_scene(arrays: Mapping[str, np.ndarray], env: EnvConfig, seed: int) -> dict[str, object]:
    """The `attention_scene` arguments for SCENE_STEPS evenly spaced steps of the first recorded episode.

    arrays: a rollout's episode [N], obs, attention [N, H, E], action, q and vehicle_id rows."""
    episode = int(arrays["episode"].min())
    rows = np.nonzero(arrays["episode"] == episode)[0]
    steps = np.unique(np.linspace(0, len(rows) - 1, SCENE_STEPS).round().astype(int))
    return {**{key: arrays[key][rows] for key in ("obs", "attention", "action", "q", "vehicle_id")},
            "steps": list(steps), "env": env,
            "title": f"Trained network, seed {seed}, recorded episode {episode}: the scene and each head's attention"}


def _unsafe_spans(ax: Axes, sweep: pd.DataFrame) -> None:
    """Shade the gaps at which going now collides (half a grid step either side of each such gap)."""
    gaps = np.sort(pd.unique(sweep["gap"]))
    half = float(np.min(np.diff(gaps))) / 2 if len(gaps) > 1 else 0.25
    for gap in sorted(pd.unique(sweep.loc[sweep["go_outcome"] == "collision", "gap"])):
        ax.axvspan(gap - half, gap + half, color="#F4B6B6", alpha=0.5, lw=0, zorder=0)


@styled
def designed_scenes(scenes: pd.DataFrame, heads: pd.DataFrame) -> Figure:
    """Designed scenes, one row per sweep (the conflicting vehicle's route, observed or not): the networks'
    Q(SLOWER) − Q(FASTER) against the gap (its arrival at the conflict point minus the ego's), each head's
    attention on that vehicle, and the change of Q(SLOWER) − Q(FASTER) when the head is mean-ablated over
    the sweep, one line per seed; red bands: going now collides; triangles: the clairvoyant planner brakes.

    scenes: scenes/scenes.csv of every seed plus `seed` (route, visible, model, ego_to_junction, ego_speed,
    other_speed, gap, q_slower_minus_faster, go_outcome, clairvoyant_action); heads: scenes/heads.csv plus
    `seed` (route, visible, model, gap, head_role, attention, ablation, effect). Heads are named by role
    (head_rank1 in every seed).
    """
    sweeps = list(scenes[["route", "visible"]].drop_duplicates().itertuples(index=False, name=None))
    fig = Figure(figsize=(16, 3.8 * len(sweeps) + 1), layout="constrained")
    axes = fig.subplots(len(sweeps), 3, squeeze=False, sharex=True)
    trained = heads[heads["model"] == "trained"]
    roles = sorted(pd.unique(trained["head_role"].astype(str)))
    palette = {role: head_colour(i) for i, role in enumerate(roles)}
    for (route, visible), row in zip(sweeps, axes):
        sweep = scenes[(scenes["route"] == route) & (scenes["visible"] == visible)]
        name = f"route {route}, destination {'observed' if visible else 'hidden'}"
        q_ax, att_ax, abl_ax = row
        for ax in row:
            _unsafe_spans(ax, sweep[sweep["model"] == "trained"])
            ax.set_xlabel("gap (s): the vehicle's arrival at the conflict point − the ego's")
        sns.lineplot(sweep, x="gap", y="q_slower_minus_faster", hue="model", hue_order=list(MODELS), units="seed",
                     estimator=None, palette=MODEL_COLOURS, marker="o", markersize=3, ax=q_ax, legend=False)
        brakes = sweep[(sweep["model"] == "trained") & (sweep["clairvoyant_action"] == "SLOWER")].drop_duplicates("gap")
        top = float(np.nanmax(sweep["q_slower_minus_faster"])) if len(sweep) else 1.0
        q_ax.scatter(brakes["gap"], np.full(len(brakes), top), marker="v", color="#55A868", zorder=3)
        q_ax.axhline(0, color="black", lw=0.8)
        q_ax.set_ylabel("Q(SLOWER) − Q(FASTER)\n(> 0: prefers braking)")
        q_ax.set_title(f"{name}\nthe networks' preference")
        sweep_heads = trained[(trained["route"] == route) & (trained["visible"] == visible)]
        attention = sweep_heads[sweep_heads["ablation"] == "mean_over_sweep"]
        sns.lineplot(attention, x="gap", y="attention", hue="head_role", hue_order=roles, units="seed",
                     estimator=None, palette=palette, ax=att_ax, legend=False)
        att_ax.set_ylim(0, 1)
        att_ax.set_ylabel("attention on the vehicle")
        att_ax.set_title(f"{name}\nthe trained heads' attention")
        sns.lineplot(attention, x="gap", y="effect", hue="head_role", hue_order=roles, units="seed",
                     estimator=None, palette=palette, ax=abl_ax, legend=False)
        abl_ax.axhline(0, color="black", lw=0.8)
        abl_ax.set_ylabel("Δ Q(SLOWER) − Q(FASTER)\nhead mean-ablated over the sweep")
        abl_ax.set_title(f"{name}\nwhat each trained head contributes")
    handles = [Line2D([], [], color=MODEL_COLOURS[m], marker="o", label=f"{m} network") for m in MODELS]
    handles += [Line2D([], [], color=palette[r], label=r) for r in roles]
    handles += [Patch(facecolor="#F4B6B6", label="going now collides"),
                Line2D([], [], color="#55A868", marker="v", lw=0, label="clairvoyant planner brakes")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    first = scenes.iloc[0]
    fig.suptitle(f"Designed scenes: the ego {first['ego_to_junction']:g} m before the junction at "
                 f"{first['ego_speed']:g} m/s, one conflicting vehicle at {first['other_speed']:g} m/s swept over "
                 "its arrival gap (one line per seed)")
    return fig
