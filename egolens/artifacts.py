"""Byte-stable serialisation of arrays, images and JSON (same content ⇒ same bytes)."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (readable by np.load) whose bytes depend only on `arrays`.

    numpy's own savez stamps the current time into each zip entry; here it is fixed.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entry.getvalue())
    return buffer.getvalue()


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def json_safe(obj: object) -> object:
    """Plain-JSON copy of nested dicts/lists of numbers: numpy and torch scalars to Python,
    bools to 0/1, NaN and ±inf to None (a DVC metrics file holds plain numbers only)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor | np.ndarray) and np.ndim(_numpy(obj)) == 0:
        obj = _numpy(obj).item()
    if isinstance(obj, bool | np.bool_):
        return int(bool(obj))
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"not a plain JSON value: {type(obj).__name__}")


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def json_text(obj: object) -> str:
    """The study's one JSON form of a summary or metrics file: `json_safe(obj)`, indented, with
    a final newline (NaN and ±inf become null; DVC metrics hold plain numbers only)."""
    return json.dumps(json_safe(obj), indent=2) + "\n"
