"""How library loops report progress: the caller passes a `Progress` (e.g. a tqdm bar); the
library never prints. `no_progress` leaves the items alone (tests, quiet runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
Progress = Callable[[Sequence[T], str], Iterable[T]]
"""Wraps a loop's items with a description (e.g. a tqdm bar)."""


def no_progress(items: Sequence[T], desc: str) -> Iterable[T]:
    return items
