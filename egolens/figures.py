"""The study's one figure writer and the colours every drawing shares (matplotlib only).

`figure_png` renders a matplotlib Figure to PNG bytes that depend only on its content: no
software or time metadata. Each kind of figure keeps the resolution it was published at
(`STUDY_DPI` for results/figures, `FEATURE_VIS_DPI` for the neurons stage's feature
visualisations), so the same tables give the same bytes.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

STUDY_DPI = 110
"""results/figures/*.png (the plots stage, the recipe sweep)."""
FEATURE_VIS_DPI = 100
"""results/seeds/seed<N>/neurons/feature_vis/*.png."""
PNG_METADATA = {"Software": None}
"""matplotlib stamps its version otherwise; None leaves the key out."""

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
