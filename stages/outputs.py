"""Atomic writes of a stage's outputs, in the study's one number policy (`egolens.numbers`): a
killed stage leaves the previous file or none, never half of one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from egolens import checkpoint
from egolens.artifacts import json_text
from egolens.numbers import FLOAT_FORMAT, csv_text


def write_csv(path: Path, table: pd.DataFrame, float_format: str | None = FLOAT_FORMAT) -> None:
    """`table` as CSV (`numbers.csv_text`: 6 significant digits, or `numbers.EXACT` for an episode
    or step table)."""
    checkpoint.atomic_write_text(path, csv_text(table, float_format))


def write_json(path: Path, obj: object) -> None:
    """A summary or metrics file (`artifacts.json_text`: a missing number is null)."""
    checkpoint.atomic_write_text(path, json_text(obj))


def write_bytes(path: Path, data: bytes) -> None:
    """A PNG, GIF or npz already rendered to bytes."""
    with checkpoint.atomic_path(path) as tmp:
        tmp.write_bytes(data)
