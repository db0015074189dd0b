"""Edits on tiny hand-made networks: a rank-one update maps k* to v* and leaves C-orthogonal keys
alone, an edit to a known weight has its predicted effect, the brake edit makes its target step
brake, steps are ranked by danger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.intervening import editing
from egolens.analysis.intervening import interventions as iv
from egolens.hooks import run_with_cache, run_with_hooks
from egolens.sites import RESID, Z
from tests.conftest import random_obs, tiny_net
from tests.intervention_nets import H, q_from_resid, w_o


@pytest.fixture
def net():
    return tiny_net(heads=H)


def test_rank_one_update_maps_k_star_to_v_star_and_leaves_c_orthogonal_keys_unchanged():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(50, 6, generator=g, dtype=torch.float64)
    c = editing.key_second_moment(keys, ridge=0.0)
    torch.testing.assert_close(c, keys.T @ keys / 50)
    w, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    k_star, v_star = keys[3], torch.randn(4, generator=g, dtype=torch.float64)
    w_hat = editing.rank_one_update(w, k_star, v_star, c, b)
    torch.testing.assert_close(w_hat @ k_star + b, v_star)
    u = torch.linalg.solve(c, k_star)
    for k in keys[:10]:
        k_perp = k - (u @ k) / (u @ k_star) * k_star                   # (C⁻¹k*)ᵀk_perp = 0
        torch.testing.assert_close(w_hat @ k_perp, w @ k_perp)
    assert torch.linalg.matrix_rank(w_hat - w) == 1
    with pytest.raises(ValueError, match="0"):
        editing.rank_one_update(w, torch.zeros(6, dtype=torch.float64), v_star, c)


def test_an_edit_to_a_known_weight_has_its_predicted_effect(net):
    obs = random_obs(12, seed=12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _, cache = run_with_cache(net, obs, ["output_layer.hook_post.0"])
    keys = cache["output_layer.hook_post.0"]
    v_star = torch.tensor([2.0, -1.0, 0.5])
    edited = editing.rank_one_edit(net, "output_layer.predict", keys[4], v_star, editing.key_second_moment(keys))
    with torch.no_grad():
        torch.testing.assert_close(edited(obs[4:5])[0], v_star, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())       # the input is not mutated
    changed = [k for k in before if not torch.equal(before[k], edited.state_dict()[k])]
    assert changed == ["output_layer.predict.weight"]
    # scaling head 0's output weights scales its write: resid' = resid + ½(f − 1)·W_O^0 z_0
    _, cache = run_with_cache(net, obs)
    for factor in (0.0, 2.5):
        scaled = editing.scale_head_output(net, 0, factor)
        write = 0.5 * cache[Z][:, 0, 0] @ w_o(net, 0).T
        with torch.no_grad():
            torch.testing.assert_close(scaled(obs), q_from_resid(net, obs, cache[RESID] + (factor - 1) * write),
                                       rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(editing.scale_head_output(net, 0, 0.0)(obs),
                                   run_with_hooks(net, obs, iv.head_ablation(0)))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_brake_edit_makes_the_target_step_brake(net):
    obs = random_obs(30, seed=13)
    danger = np.linspace(0, 1, 30)
    with torch.no_grad():
        greedy = net(obs).argmax(1)
    # no recorded step brakes: predict is edited and the target gets Q(SLOWER) = max + margin
    with torch.no_grad():
        net.output_layer.predict.bias[iv.SLOWER] -= 10.0
        greedy = net(obs).argmax(1)
    assert (greedy != iv.SLOWER).all()
    edit = editing.brake_edit(net, obs, danger, margin=0.2)
    assert edit.step == 29 and edit.source == -1 and edit.layer == "output_layer.predict"
    with torch.no_grad():
        q = edit.net(obs[29:30])[0]
        q0 = net(obs[29:30])[0]
    assert int(q.argmax()) == iv.SLOWER
    torch.testing.assert_close(q[iv.SLOWER], q0.max() + 0.2, rtol=1e-4, atol=1e-4)
    # some steps brake: the last hidden Linear maps the target's key to the nearest braking step's value
    with torch.no_grad():
        net.output_layer.predict.bias[iv.SLOWER] += 10.0
        q = net(obs)
        lead = q[:, iv.SLOWER] - q[:, 1:].max(1).values              # > 0 where SLOWER wins
        net.output_layer.predict.bias[iv.SLOWER] -= float(lead.median())   # about half the steps brake
        greedy = net(obs).argmax(1)
    assert 0 < int((greedy == iv.SLOWER).sum()) < 30
    edit = editing.brake_edit(net, obs, danger)
    assert edit.layer == "output_layer.layers.0" and edit.key_name == RESID
    assert greedy[edit.source] == iv.SLOWER and greedy[edit.step] != iv.SLOWER
    assert edit.step == int(torch.nonzero(greedy != iv.SLOWER).max())
    with torch.no_grad():
        torch.testing.assert_close(edit.net(obs[edit.step:edit.step + 1]), net(obs[edit.source:edit.source + 1]),
                                   rtol=1e-4, atol=1e-4)


def test_step_danger_ranks_collision_courses_before_mere_proximity_and_empty_roads_last():
    inf, nan = np.inf, np.nan
    facts = {"ttc": np.array([[nan, 2.0, inf], [nan, inf, inf], [nan, 0.5, 3.0], [nan, nan, nan]]),
             "distance": np.array([[nan, 30.0, 5.0], [nan, 8.0, 4.0], [nan, 10.0, 20.0], [nan, nan, nan]])}
    np.testing.assert_allclose(editing.step_danger(facts), [-2.0, -1004.0, -0.5, -inf])
