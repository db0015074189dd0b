"""Read or edit any named activation: `run_with_cache` and `run_with_hooks`.

Names are module names of the network: every Linear (`attention_layer.key_all`, ...) and every
hook point (`attention_layer.hook_pattern`, `output_layer.hook_post.0`, ...). No analysis
re-implements the forward pass; they all go through these two functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from egolens.model import HookPoint

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def activation_names(net: nn.Module) -> list[str]:
    """Names of every readable activation: Linear outputs and hook points, in forward order."""
    return [name for name, module in net.named_modules() if isinstance(module, nn.Linear | HookPoint)]


def _module(net: nn.Module, name: str) -> nn.Module:
    modules = dict(net.named_modules())
    if name not in modules or not isinstance(modules[name], nn.Linear | HookPoint):
        raise KeyError(f"no activation named {name!r}; known: {', '.join(activation_names(net))}")
    return modules[name]


@contextlib.contextmanager
def hooks(net: nn.Module, fns: dict[str, HookFn]) -> Iterator[None]:
    """Within the block, `fns[name](activation)` runs on each named activation; a returned
    tensor replaces the activation downstream."""
    handles = [_module(net, name).register_forward_hook(lambda m, i, o, fn=fn: fn(o)) for name, fn in fns.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_with_hooks(net: nn.Module, obs: torch.Tensor, fns: dict[str, HookFn],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q-values [B, A] of obs [B, E, F] with the named activations read or replaced by `fns`."""
    with hooks(net, fns):
        return net(obs, mask)


def run_with_cache(net: nn.Module, obs: torch.Tensor, names: list[str] | None = None,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Q-values [B, A] and a cache {name: activation} (detached) of the named activations.

    names: None for every activation (`activation_names(net)`).
    """
    cache: dict[str, torch.Tensor] = {}

    def keep(name: str) -> HookFn:
        def fn(activation: torch.Tensor) -> None:
            cache[name] = activation.detach().clone()
        return fn

    names = activation_names(net) if names is None else names
    with torch.no_grad():
        q = run_with_hooks(net, obs, {name: keep(name) for name in names}, mask)
    return q, cache
