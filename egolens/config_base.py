"""What every params model shares: strict pydantic models (unknown keys, wrong types and NaN
refused), the error that names a bad key, and the held-out env seeds of a stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """params.yaml is malformed; the message names the key, the value and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def held_out_seeds(env_seed: int, episodes: int) -> list[int]:
    """The env seeds of `episodes` held-out episodes: env_seed, env_seed + 1, ..."""
    return list(range(env_seed, env_seed + episodes))
