"""The study's one figure writer, the colours every drawing shares and the pieces of a scene.

`figure_png` renders a matplotlib Figure to PNG bytes that depend only on its content: no
software or time metadata. Each kind of figure keeps the resolution it was published at
(`STUDY_DPI` for results/figures, `FEATURE_VIS_DPI` for the neurons stage's feature
visualisations), so the same tables give the same bytes.

A scene (an observation seen from above, in metres with y down the screen as highway-env draws
it) is drawn by `draw_vehicle` for each present vehicle on axes set up by `scene_axes`; the
attention figure (`egolens.plots.attention_scene`) and the feature visualisations
(`egolens.analysis.reading.feature_visualisation.scene_picture`) both draw it so.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

STUDY_DPI = 110
"""results/figures/*.png (the plots stage, the recipe sweep)."""
FEATURE_VIS_DPI = 100
"""results/seeds/seed<N>/neurons/feature_vis/*.png."""
PNG_METADATA = {"Software": None}
"""matplotlib stamps its version otherwise; None leaves the key out."""

VEHICLE_SIZE = (5.0, 2.0)
"""Length and width (m) a vehicle is drawn with (highway-env's default vehicle)."""

HEAD_COLOURS = [(230, 60, 60), (40, 110, 240), (30, 170, 80), (200, 120, 20), (150, 60, 200), (20, 170, 180)]
"""RGB 0-255 of attention head h (h modulo the list), in the videos and the figures alike."""


def figure_png(fig: Figure, dpi: int = STUDY_DPI) -> bytes:
    """`fig` as PNG bytes at `dpi` that depend only on its content (no software/time metadata)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=PNG_METADATA)
    return buffer.getvalue()


def head_colour(h: int) -> tuple[float, float, float]:
    """Head h's colour as matplotlib RGB in [0, 1]."""
    r, g, b = HEAD_COLOURS[h % len(HEAD_COLOURS)]
    return r / 255, g / 255, b / 255


def draw_vehicle(ax: Axes, x: float, y: float, cos_h: float, sin_h: float, facecolor: str,
                 size: tuple[float, float] = VEHICLE_SIZE, **style: object) -> None:
    """A vehicle seen from above: a length × width (`size`, m) rectangle centred at (x, y), turned by
    its heading (cos_h, sin_h), edged in black; `style` goes to the patch (alpha, lw, zorder, label)."""
    length, width = size
    angle = float(np.degrees(np.arctan2(sin_h, cos_h)))
    ax.add_patch(Rectangle((x - length / 2, y - width / 2), length, width, angle=angle, rotation_point="center",
                           facecolor=facecolor, edgecolor="black", **style))


def scene_axes(ax: Axes, cx: float, cy: float, half: float, title: str) -> None:
    """Square scene axes of half-width `half` m around (cx, cy), y pointing down the screen, in metres."""
    ax.set_xlim(cx - half, cx + half)
    ax.set_ylim(cy + half, cy - half)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m, down the screen)")
    ax.set_title(title)
