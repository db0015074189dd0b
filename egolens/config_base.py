"""What every params model shares: strict pydantic models (unknown keys, wrong types and NaN
refused), the error that names a bad key, and the held-out env seeds of a stage."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """params.yaml is malformed; the message names the key, the value and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def held_out_seeds(env_seed: int, episodes: int) -> list[int]:
    """The env seeds of `episodes` held-out episodes: env_seed, env_seed + 1, ..."""
    return list(range(env_seed, env_seed + episodes))


def describe_error(error: dict[str, Any]) -> str:
    """One line of a validation error: the dotted key, its value and what is wrong (pydantic's error dict)."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (value {error['input']!r}); check its spelling"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "float_type" and isinstance(error["input"], str):
        message += " (YAML reads a number like 1e-3 as a string: write 1.0e-3 or 0.001)"
    if kind == "value_error" and isinstance(error["input"], dict):
        return message  # a check across keys of a section: the message names them
    return f"{key} = {error['input']!r}: {message}"


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys `model` allows in the section holding `loc` (empty when that is not a section)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)
