"""EgoAttentionNetwork: rl-agents' names and maths, masking, and hook points."""

from __future__ import annotations

import pytest
import torch

from egolens import checkpoint
from egolens.model import EgoAttentionNetwork, HookPoint
from tests.conftest import random_obs, reference_q

RL_AGENTS_KEYS = sorted(
    [f"{m}.layers.{i}.{p}" for m in ("ego_embedding", "others_embedding", "output_layer")
     for i in (0, 1) for p in ("weight", "bias")]
    + [f"attention_layer.{n}.weight" for n in ("value_all", "key_all", "query_ego", "attention_combine")]
    + ["output_layer.predict.weight", "output_layer.predict.bias"])


def rl_agents_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A state_dict with rl-agents' exact keys and shapes, filled independently of egolens."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    for m in ("ego_embedding", "others_embedding"):
        shapes |= {f"{m}.layers.0.weight": (64, 7), f"{m}.layers.0.bias": (64,),
                   f"{m}.layers.1.weight": (64, 64), f"{m}.layers.1.bias": (64,)}
    shapes |= {f"attention_layer.{n}.weight": (64, 64)
               for n in ("value_all", "key_all", "query_ego", "attention_combine")}
    shapes |= {"output_layer.layers.0.weight": (64, 64), "output_layer.layers.0.bias": (64,),
               "output_layer.layers.1.weight": (64, 64), "output_layer.layers.1.bias": (64,),
               "output_layer.predict.weight": (3, 64), "output_layer.predict.bias": (3,)}
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


@pytest.mark.parametrize("heads", [1, 2])
def test_state_dict_has_rl_agents_keys_shapes_and_parameter_count(heads):
    net = EgoAttentionNetwork(heads=heads)
    sd = net.state_dict()
    assert sorted(sd) == RL_AGENTS_KEYS
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in rl_agents_state_dict(0).items()}
    assert sum(p.numel() for p in net.parameters()) == 34_243


@pytest.mark.parametrize("heads", [1, 2])
def test_loads_an_rl_agents_checkpoint_and_matches_an_independent_forward_pass(tmp_path, heads):
    sd = rl_agents_state_dict(1)
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "latest.tar")
    net = EgoAttentionNetwork(heads=heads)
    ckpt = checkpoint.load_network(tmp_path / "latest.tar", net)
    assert "egolens" not in ckpt
    obs = random_obs(6, seed=heads)
    torch.testing.assert_close(net(obs), reference_q(sd, obs, heads), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_absent_vehicles_get_exactly_zero_attention_and_present_ones_sum_to_one(heads):
    torch.manual_seed(0)
    net = EgoAttentionNetwork(heads=heads)
    obs = random_obs(32, seed=3)
    pattern = net.get_attention_matrix(obs)                       # [B, H, 1, E]
    assert pattern.shape == (32, heads, 1, 15)
    absent = (obs[..., 0] < 0.5)[:, None, None, :].expand_as(pattern)
    assert absent.any()
    assert torch.all(pattern[absent] == 0.0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(32, heads, 1))


def test_the_ego_row_is_never_masked():
    torch.manual_seed(0)
    net = EgoAttentionNetwork()
    obs = random_obs(4, seed=5)
    obs[:, 0, 0] = 0.0                                           # even a zero ego presence
    obs[:, 1:] = 0.0                                             # and nobody else on the road
    pattern = net.get_attention_matrix(obs)
    torch.testing.assert_close(pattern[..., 0], torch.ones(4, 2, 1))
    explicit = torch.ones(4, 15, dtype=torch.bool)               # a mask that asks to hide the ego too
    torch.testing.assert_close(net.get_attention_matrix(obs, explicit)[..., 0], torch.ones(4, 2, 1))


def test_explicit_mask_holds_while_presence_is_interpolated():
    torch.manual_seed(0)
    net = EgoAttentionNetwork()
    obs = random_obs(8, seed=7)
    mask = EgoAttentionNetwork.absent_mask(obs)
    torch.testing.assert_close(net(obs, mask), net(obs))
    scaled = obs * 0.3                                           # presence 0.3: recomputed mask hides everyone
    pattern = net.get_attention_matrix(scaled, mask)
    assert torch.all(pattern[~mask[:, None, None, :].expand_as(pattern)] > 0)
    assert torch.all(net.get_attention_matrix(scaled)[..., 1:] == 0)


def hook_point_names(net: torch.nn.Module) -> list[str]:
    return [name for name, module in net.named_modules() if isinstance(module, HookPoint)]


def test_hook_points_cover_attention_internals_and_every_relu():
    names = hook_point_names(EgoAttentionNetwork())
    inside = ("q", "k", "v", "scores", "pattern", "z", "combined", "resid")
    assert {f"attention_layer.hook_{n}" for n in inside} <= set(names)
    assert {"ego_embedding.hook_post.0", "ego_embedding.hook_post.1", "others_embedding.hook_post.0",
            "others_embedding.hook_post.1", "output_layer.hook_post.0", "output_layer.hook_post.1"} <= set(names)


def test_hook_points_do_not_change_outputs_but_can_replace_activations():
    torch.manual_seed(0)
    net = EgoAttentionNetwork()
    obs = random_obs(8, seed=9)
    before = net(obs)
    seen = {}
    handles = [module.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, o.clone()))
               for name, module in net.named_modules() if isinstance(module, HookPoint)]
    torch.testing.assert_close(net(obs), before, rtol=0, atol=0)
    assert len(seen) == len(hook_point_names(net))
    torch.testing.assert_close(seen["attention_layer.hook_pattern"], net.get_attention_matrix(obs))
    for h in handles:
        h.remove()
    # Replacing the residual output with the ego path alone must give Q = U(½·e).
    ego = net.ego_embedding(obs[:, :1]).squeeze(1)
    handle = net.attention_layer.hook_resid.register_forward_hook(lambda m, i, o: ego / 2)
    torch.testing.assert_close(net(obs), net.output_layer(ego / 2))
    handle.remove()
    torch.testing.assert_close(net(obs), before, rtol=0, atol=0)


def test_layer_output_is_the_mean_of_combined_heads_and_ego_embedding():
    torch.manual_seed(0)
    net = EgoAttentionNetwork()
    obs = random_obs(5, seed=11)
    cache = {}
    for name in ("hook_combined", "hook_resid"):
        getattr(net.attention_layer, name).register_forward_hook(lambda m, i, o, n=name: cache.setdefault(n, o))
    net(obs)
    ego = net.ego_embedding(obs[:, :1]).squeeze(1)
    torch.testing.assert_close(cache["hook_resid"], (cache["hook_combined"] + ego) / 2)
