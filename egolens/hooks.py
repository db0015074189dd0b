"""Read or edit any named activation: `run_with_cache`, `run_with_hooks` and `capture`.

Names are module names of the network: every Linear (`attention_layer.key_all`, ...) and every
hook point (`attention_layer.hook_pattern`, `output_layer.hook_post.0`, ...). No analysis
re-implements the forward pass or registers a hook of its own; they all go through this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from egolens.model import HookPoint

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def activation_names(net: nn.Module) -> list[str]:
    """Names of every readable activation: Linear outputs and hook points, in forward order."""
    return [name for name, module in net.named_modules() if isinstance(module, nn.Linear | HookPoint)]


def _module(net: nn.Module, name: str, any_module: bool = False) -> nn.Module:
    modules = dict(net.named_modules())
    if name not in modules or not (any_module or isinstance(modules[name], nn.Linear | HookPoint)):
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


def run_with_cache(net: nn.Module, obs: torch.Tensor, names: Sequence[str] | None = None,
                   mask: torch.Tensor | None = None, *, grad: bool = False,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Q-values [B, A] and a cache {name: activation} of the named activations.

    names: None for every activation (`activation_names(net)`).
    grad: False runs without autograd and caches detached copies; True keeps Q and every cached
    activation in the autograd graph (for gradients of an objective of activations).
    """
    names = activation_names(net) if names is None else list(names)
    with contextlib.ExitStack() as stack:
        if not grad:
            stack.enter_context(torch.no_grad())
        cache = stack.enter_context(capture(net, names, detach=not grad))
        q = net(obs, mask)
    return q, dict(cache)


@contextlib.contextmanager
def capture(net: nn.Module, names: Sequence[str] = (), *, inputs: Sequence[str] = (),
            detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of `net` (called however the caller likes: forward-
    mode AD, a wrapper, several passes) stores the named activations in the yielded dict; the
    latest pass wins.

    names: activations (module outputs) to keep. inputs: modules (any named module, e.g. an
    `nn.ReLU` of a hand-made net) whose first *input* to keep. detach: store detached copies
    (False keeps them in the autograd graph, dual tensors included).
    """
    stored: dict[str, torch.Tensor] = {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        stored[name] = tensor.detach().clone() if detach else tensor

    handles = [_module(net, name).register_forward_hook(lambda m, i, o, name=name: keep(name, o))
               for name in names]
    handles += [_module(net, name, any_module=True).register_forward_hook(lambda m, i, o, name=name: keep(name, i[0]))
                for name in inputs]
    try:
        yield stored
    finally:
        for handle in handles:
            handle.remove()
