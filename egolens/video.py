"""Draw each head's attention on rendered frames, beside the Q-values; write animated GIFs."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from egolens.artifacts import png_bytes
from egolens.figures import HEAD_COLOURS
from egolens.vocabulary import ACTIONS, present

PANEL_WIDTH = 280


def draw_attention(frame: np.ndarray, to_pixel: Callable[[np.ndarray], np.ndarray], positions: np.ndarray,
                   present: np.ndarray, attention: np.ndarray) -> Image.Image:
    """The frame with a line from the ego to each present vehicle per head.

    frame: [H, W, 3]; positions: [E, 2] world metres (row 0 the ego); present: [E] bool;
    attention: [heads, E]. Line width and opacity grow with the weight; heads are offset
    sideways by a few pixels so overlapping lines stay visible. A ring around the ego shows
    the weight each head puts on the ego itself (one ring per head, nested so none hides another).
    """
    base = Image.fromarray(frame).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pixels = to_pixel(positions).astype(float)
    ego = pixels[0]
    heads = attention.shape[0]
    for h in range(heads):
        colour = HEAD_COLOURS[h % len(HEAD_COLOURS)]
        shift = (h - (heads - 1) / 2) * 4.0
        for j in np.nonzero(present)[0]:
            weight = float(attention[h, j])
            if j == 0:                                   # nested rings: head h's ring is 6·h px wider
                radius = 8 + 6 * h + 22 * weight
                draw.ellipse([*(ego - radius), *(ego + radius)], outline=(*colour, int(60 + 195 * weight)),
                             width=max(1, int(1 + 5 * weight)))
                continue
            if weight < 0.01:
                continue
            direction = pixels[j] - ego
            normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
            start, end = ego + normal * shift, pixels[j] + normal * shift
            draw.line([tuple(start), tuple(end)], fill=(*colour, int(70 + 185 * weight)),
                      width=max(1, int(1 + 12 * weight)))
            radius = 4 + 14 * weight
            draw.ellipse([*(end - radius), *(end + radius)], outline=(*colour, int(70 + 185 * weight)), width=2)
    return Image.alpha_composite(base, overlay).convert("RGB")


def side_panel(height: int, title: str, q: np.ndarray | None, action: int | None, heads: int,
               ego_attention: np.ndarray | None) -> Image.Image:
    """A panel with the step title, Q-value bars (the chosen action filled) and the head legend."""
    panel = Image.new("RGB", (PANEL_WIDTH, height), (250, 250, 250))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    draw.text((12, 12), title, fill=(0, 0, 0), font=font)
    y = 44
    if q is not None:
        draw.text((12, y), "Q-values (greedy action filled)", fill=(0, 0, 0), font=font)
        y += 20
        low, high = float(min(q.min(), 0.0)), float(max(q.max(), 1e-6))
        scale = (PANEL_WIDTH - 110) / (high - low)
        zero = 70 + (0.0 - low) * scale
        for a, name in enumerate(ACTIONS):
            x0, x1 = sorted([zero, 70 + (q[a] - low) * scale])
            fill = (60, 60, 60) if a == action else None
            draw.rectangle([x0, y, max(x1, x0 + 1), y + 16], outline=(60, 60, 60), fill=fill)
            draw.text((12, y + 2), name, fill=(0, 0, 0), font=font)
            draw.text((PANEL_WIDTH - 36, y + 2), f"{q[a]:.2f}", fill=(0, 0, 0), font=font)
            y += 24
    else:
        draw.text((12, y), "episode over", fill=(0, 0, 0), font=font)
        y += 24
    y += 12
    draw.text((12, y), "attention lines (width ~ weight)", fill=(0, 0, 0), font=font)
    y += 20
    for h in range(heads):
        colour = HEAD_COLOURS[h % len(HEAD_COLOURS)]
        draw.line([(12, y + 7), (52, y + 7)], fill=colour, width=5)
        label = f"head {h}" + (f": on ego {ego_attention[h]:.2f}" if ego_attention is not None else "")
        draw.text((60, y + 1), label, fill=(0, 0, 0), font=font)
        y += 20
    return panel


def compose(frame: Image.Image, panel: Image.Image) -> Image.Image:
    out = Image.new("RGB", (frame.width + panel.width, frame.height), (255, 255, 255))
    out.paste(frame, (0, 0))
    out.paste(panel, (frame.width, 0))
    return out


def gif_bytes(images: Sequence[Image.Image], seconds_per_frame: float = 1.0) -> bytes:
    """An animated GIF (looping) of `images`, as bytes."""
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=list(images[1:]),
                   duration=int(seconds_per_frame * 1000), loop=0, optimize=False)
    return buffer.getvalue()


def episode_images(frames: Sequence[np.ndarray], pixels: Sequence[Callable[[np.ndarray], np.ndarray]],
                   positions: np.ndarray, present: np.ndarray, q: np.ndarray, action: np.ndarray,
                   attention: np.ndarray, title: str, outcome: str) -> list[Image.Image]:
    """One annotated image per frame of an episode of T steps.

    frames, pixels: T + 1; positions [T, E, 2]; present [T, E]; q [T, A]; action [T];
    attention [T, heads, E]. Frame t shows the state in which action t was chosen; the last
    frame shows the end of the episode.
    """
    heads = attention.shape[1]
    images = []
    for t, frame in enumerate(frames):
        if t < len(action):
            scene = draw_attention(frame, pixels[t], positions[t], present[t], attention[t])
            panel = side_panel(frame.shape[0], f"{title}, step {t}", q[t], int(action[t]), heads, attention[t, :, 0])
        else:
            scene = Image.fromarray(frame)
            panel = side_panel(frame.shape[0], f"{title}: {outcome}", None, None, heads, None)
        images.append(compose(scene, panel))
    return images


class RenderedEpisode(Protocol):
    """What a video reads of a recorded episode (`egolens.rollout.Episode` has it): its actions,
    observations [T, E, F], rendered frames and their pixel maps (T + 1 each, empty when not
    rendered), vehicle positions [T, E, 2] and outcome."""

    action: np.ndarray
    obs: np.ndarray
    frames: Sequence[np.ndarray]
    pixels: Sequence[Callable[[np.ndarray], np.ndarray]]
    positions: np.ndarray
    outcome: str


def episode_media(label: str, episodes: Sequence[RenderedEpisode], arrays: dict[str, np.ndarray],
                  seconds_per_frame: float) -> dict[str, bytes]:
    """Every rendered episode's frames (PNG) and attention video (GIF), by path relative to the
    rollout's directory: frames/<label>/episode<k>/step<t>.png and videos/<label>_episode<k>.gif.
    arrays: `rollout_arrays` of the episodes (q, action, attention rows in episode order)."""
    files: dict[str, bytes] = {}
    start = 0
    for k, episode in enumerate(episodes):
        steps = slice(start, start + len(episode.action))
        start = steps.stop
        if not episode.frames:
            continue
        for t, frame in enumerate(episode.frames):
            files[f"frames/{label}/episode{k:03d}/step{t:02d}.png"] = png_bytes(frame)
        images = episode_images(episode.frames, episode.pixels, episode.positions, present(episode.obs),
                                arrays["q"][steps], arrays["action"][steps], arrays["attention"][steps],
                                f"{label}, episode {k}", episode.outcome)
        files[f"videos/{label}_episode{k:03d}.gif"] = gif_bytes(images, seconds_per_frame)
    return files
