"""Checkpoints in rl-agents' format, atomic writes, and safe loading.

A checkpoint is `{"state_dict": ..., "optimizer": ..., "egolens": {...plain types...}}`;
rl-agents' own `save()` writes the first two keys only, and such files load too.
Everything is loaded with `torch.load(..., weights_only=True)`: a pickle that would build
arbitrary objects or run code is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, unsafe, or does not fit the network."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save(path: str | Path, obj: dict[str, Any]) -> None:
    """torch.save `obj` atomically (write to a temporary file, then rename).

    Serialised through a buffer: torch.save names the zip's root folder after the file, and
    the temporary file's random name would make identical checkpoints differ in bytes.
    """
    buffer = io.BytesIO()
    torch.save(_canonical(obj), buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _canonical(obj: Any) -> Any:
    """`obj` with every string interned, so pickle's memo (which shares equal objects by
    identity) writes the same bytes whether a string came from code or from a loaded file."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def load_safe(path: str | Path) -> Any:
    """torch.load with weights_only=True; raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file there")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused by the safe loader: it holds objects other than tensors and "
                              f"plain types (which could run code when unpickled) or is not a checkpoint at all; "
                              f"nothing was executed: {err}") from None
    except Exception as err:  # noqa: BLE001  any other failure of the safe unpickler means damaged bytes
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint: {type(err).__name__}: {err}") from None


def load(path: str | Path) -> dict[str, Any]:
    """Load an rl-agents-format checkpoint (a dict with 'state_dict') safely."""
    obj = load_safe(path)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        kind = type(obj).__name__
        raise CheckpointError(f"{path}: not an rl-agents checkpoint (expected a dict with 'state_dict', got {kind}"
                              + (f" with keys {sorted(obj)})" if isinstance(obj, dict) else ")"))
    return obj


def check_state_dict(state_dict: dict[str, torch.Tensor], net: nn.Module, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming missing/unexpected keys, non-tensor or non-finite weights and
    shape mismatches."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: state_dict is a {type(state_dict).__name__}, not a dict of tensors")
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{source}: weights that are not tensors: {not_tensors}")
    non_finite = sorted(k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if non_finite:
        raise CheckpointError(f"{source}: non-finite (NaN or inf) weights in {non_finite}")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k}: {tuple(state_dict[k].shape)} in {source}, {tuple(v.shape)} in the network"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("wrong shapes: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{source} does not fit the network: " + "; ".join(problems))


def load_network(path: str | Path, net: nn.Module) -> dict[str, Any]:
    """Load a checkpoint's weights into `net` (checked first); return the whole checkpoint dict."""
    ckpt = load(path)
    check_state_dict(ckpt["state_dict"], net, source=str(path))
    net.load_state_dict(ckpt["state_dict"])
    return ckpt


def checkpoint_dict(net: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """rl-agents' checkpoint dict plus an `egolens` entry of plain types."""
    return {
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "egolens": meta,
    }


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint's numbers (plain strings)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("egolens", "torch", "gymnasium", "highway-env", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found
