"""Interventions on tiny hand-made networks: ablations remove exactly the ablated term, vehicle
edits change only the edited vehicle, open-loop effects and perturbation sweeps match a direct
computation, closed-loop comparisons are paired by env seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis.intervening import interventions as iv
from egolens.hooks import hooks, run_with_cache, run_with_hooks
from egolens.play import play
from egolens.sites import COMBINED, PATTERN, RESID, Z
from egolens.vocabulary import present_others
from tests.conftest import random_obs, tiny_net, toy_runner
from tests.intervention_nets import D, H, d, q_from_resid, w_o


@pytest.fixture
def net():
    return tiny_net(heads=H)


# ------------------------------------------------------------------------------ ablations

@pytest.mark.parametrize("head", [0, 1])
def test_zero_ablating_a_head_removes_exactly_its_write(net, head):
    obs = random_obs(7, seed=2)
    _, cache = run_with_cache(net, obs)
    z = cache[Z][:, head, 0]                                                     # [B, d]
    expected = q_from_resid(net, obs, cache[RESID] - 0.5 * z @ w_o(net, head).T)
    with torch.no_grad():
        ablated = run_with_hooks(net, obs, iv.head_ablation(head))
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ablated, cache["output_layer.predict"])
    with hooks(net, iv.head_ablation(head)):
        _, after = run_with_cache(net, obs, [Z, PATTERN])
    assert torch.equal(after[Z][:, head], torch.zeros_like(after[Z][:, head]))
    assert torch.equal(after[Z][:, 1 - head], cache[Z][:, 1 - head])          # the other head untouched
    assert torch.equal(after[PATTERN], cache[PATTERN])                        # where it looks is unchanged


def test_mean_ablation_replaces_a_head_write_by_its_mean(net):
    obs = random_obs(9, seed=3)
    _, cache = run_with_cache(net, obs)
    mean_z = iv.mean_activation(cache[Z])                                         # [H, 1, d]
    assert mean_z.shape == (H, 1, d)
    delta = (mean_z[1, 0] - cache[Z][:, 1, 0]) @ w_o(net, 1).T
    expected = q_from_resid(net, obs, cache[RESID] + 0.5 * delta)
    with torch.no_grad():
        ablated = run_with_hooks(net, obs, iv.head_ablation(1, "mean", mean_z))
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-6)
    # on a batch of one repeated state the mean is the state's own value: nothing changes
    same = obs[:1].repeat(4, 1, 1)
    _, c1 = run_with_cache(net, same, [Z])
    with torch.no_grad():
        torch.testing.assert_close(run_with_hooks(net, same, iv.head_ablation(0, "mean", iv.mean_activation(c1[Z]))),
                                   net(same))
    with pytest.raises(ValueError, match="mean ablation needs"):
        iv.head_ablation(0, "mean")


def test_branch_ablation_keeps_the_residual(net):
    obs = random_obs(5, seed=4)
    _, cache = run_with_cache(net, obs)
    ego = cache["ego_embedding.hook_post.1"][:, 0]
    with torch.no_grad():
        zero = run_with_hooks(net, obs, iv.branch_ablation("zero"))
    torch.testing.assert_close(zero, q_from_resid(net, obs, 0.5 * ego))
    mean = iv.mean_activation(cache[COMBINED])
    with torch.no_grad():
        meaned = run_with_hooks(net, obs, iv.branch_ablation("mean", mean))
    torch.testing.assert_close(meaned, q_from_resid(net, obs, 0.5 * (ego + mean)))


def test_resample_ablation_writes_the_heads_output_on_a_drawn_recorded_step(net):
    reference_obs, obs = random_obs(30, seed=5), random_obs(8, seed=6)
    _, ref = run_with_cache(net, reference_obs, [Z, COMBINED])
    _, cache = run_with_cache(net, obs)
    with hooks(net, iv.head_ablation(1, "resample", reference_z=ref[Z], seed=3)):
        q, after = run_with_cache(net, obs, [Z])
    # each row's head-1 output is one recorded step's head-1 output (found by matching, not by the draw)
    drawn = [int(torch.nonzero((ref[Z][:, 1, 0] == after[Z][b, 1, 0]).all(dim=1))[0]) for b in range(8)]
    delta = torch.stack([ref[Z][i, 1, 0] for i in drawn]) - cache[Z][:, 1, 0]
    torch.testing.assert_close(q, q_from_resid(net, obs, cache[RESID] + 0.5 * delta @ w_o(net, 1).T),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(after[Z][:, 0], cache[Z][:, 0])                        # the other head untouched
    assert len(set(drawn)) > 1                                                 # rows draw different steps
    # deterministic given the seed, and another seed draws other steps
    assert drawn == iv.resample_index(cache[Z], 30, 3, 1).tolist()
    assert drawn != iv.resample_index(cache[Z], 30, 4, 1).tolist()
    # the branch: its recorded output replaces the branch, the residual is kept
    ego = cache["ego_embedding.hook_post.1"][:, 0]
    pick = iv.resample_index(cache[COMBINED], 30, 3, iv.BRANCH_STREAM)
    with torch.no_grad():
        branch = run_with_hooks(net, obs, iv.branch_ablation("resample", reference_combined=ref[COMBINED], seed=3))
    torch.testing.assert_close(branch, q_from_resid(net, obs, 0.5 * (ego + ref[COMBINED][pick])))
    with pytest.raises(ValueError, match="resample ablation needs"):
        iv.head_ablation(0, "resample")
    with pytest.raises(ValueError, match="mode must be one of"):
        iv.branch_ablation("scramble")                                         # type: ignore[arg-type]


def twin_heads_net() -> torch.nn.Module:
    """The tiny net with head 1 a copy of head 0 (its query, key, value rows and its W_O columns):
    the two heads write the same thing on every step, so neither can matter more than the other."""
    twin = tiny_net(heads=H)
    layer = twin.attention_layer
    with torch.no_grad():
        for linear in (layer.query_ego, layer.key_all, layer.value_all):
            linear.weight[d:2 * d] = linear.weight[:d]
        layer.attention_combine.weight[:, d:2 * d] = layer.attention_combine.weight[:, :d]
    return twin


def test_choosing_the_head_on_held_out_steps_removes_the_winners_curse_of_two_identical_heads():
    twin = twin_heads_net()
    reference, measure = random_obs(200, seed=30), random_obs(3000, seed=32)
    _, ref = run_with_cache(twin, reference, [Z])
    assert torch.equal(ref[Z][:, 0], ref[Z][:, 1])                             # identical heads

    def effect(obs: torch.Tensor, head: int) -> float:
        fns = iv.head_ablation(head, "resample", reference_z=ref[Z], seed=0)
        return float(iv.open_loop_effects(twin, obs, fns)["abs_dq"].mean())

    # twenty small selection sets of 6 steps: each picks the head with the larger in-sample effect
    in_sample = np.array([[effect(random_obs(6, seed=100 + k), h) for h in range(H)] for k in range(20)])
    best = in_sample.argmax(axis=1)
    held_out = [effect(measure, h) for h in range(H)]
    gaps = np.abs(in_sample[:, 0] - in_sample[:, 1])
    # in sample, noise (each head's own draws) makes now one head, now the other the "best" ...
    assert set(best.tolist()) == {0, 1} and gaps.min() > 0
    # ... on held-out steps the two identical heads have the same effect (up to a far smaller noise),
    assert abs(held_out[0] - held_out[1]) < 0.2 * gaps.mean()
    # and the chosen head's in-sample effect overstates, on average, what either head does held out
    assert in_sample.max(axis=1).mean() > max(held_out)


def test_neuron_ablation_sets_only_the_chosen_units(net):
    obs = random_obs(6, seed=5)
    layer = "others_embedding.hook_post.1"
    _, cache = run_with_cache(net, obs)
    present = present_others(obs)[:, 1:]
    mean = iv.mean_activation(cache[layer], present)                                 # [1, D]
    torch.testing.assert_close(mean[0], cache[layer][present].mean(0))
    for mode, fill in (("zero", torch.zeros(D)), ("mean", mean[0])):
        with hooks(net, iv.neuron_ablation(layer, [1, 5], mode, mean)):
            _, after = run_with_cache(net, obs, [layer])
        keep = [u for u in range(D) if u not in (1, 5)]
        assert torch.equal(after[layer][..., keep], cache[layer][..., keep])
        torch.testing.assert_close(after[layer][..., [1, 5]], fill[[1, 5]].expand(6, 14, 2))


def test_vehicle_edits():
    obs = random_obs(8, seed=6)
    present = present_others(obs)
    entity = present.float().argmax(1)
    entity[0] = -1
    removed = iv.remove_vehicle(obs, entity)
    assert torch.equal(removed[0], obs[0])
    for b in range(1, 8):
        assert torch.equal(removed[b, entity[b]], torch.zeros(7))
        others = [j for j in range(15) if j != entity[b]]
        assert torch.equal(removed[b, others], obs[b, others])
    with pytest.raises(ValueError, match="ego"):
        iv.remove_vehicle(obs, torch.zeros(8, dtype=torch.long))
    closer = iv.move_closer(obs, entity, 0.5)
    b, j = 3, int(entity[3])
    torch.testing.assert_close(closer[b, j, 1:3] - obs[b, 0, 1:3], 0.5 * (obs[b, j, 1:3] - obs[b, 0, 1:3]))
    assert torch.equal(closer[b, j, 3:], obs[b, j, 3:])
    slow = iv.slow_ego(obs, 0.5)
    torch.testing.assert_close(slow[:, 0, 3:5], 0.5 * obs[:, 0, 3:5])
    assert torch.equal(slow[:, 1:], obs[:, 1:])
    # most attended: the present vehicle with the largest attention summed over heads
    attention = torch.zeros(2, 2, 15)
    obs2 = torch.zeros(2, 15, 7)
    obs2[:, [0, 2, 4, 6], 0] = 1.0
    attention[0, 0, 2], attention[0, 1, 4], attention[0, 1, 5] = 0.3, 0.4, 0.9           # row 5 is absent
    attention[1, 0, 0] = 1.0                                                              # the ego never counts
    assert iv.most_attended_vehicle(attention, obs2).tolist() == [4, 2]
    crossing = torch.zeros(2, 15, dtype=torch.bool)
    crossing[0, 2] = True
    assert iv.most_attended_vehicle(attention, obs2, crossing).tolist() == [2, -1]
    # a random vehicle is a function of the state, whatever the batch
    picks = iv.random_present_vehicle(obs, seed=3)
    assert present[torch.arange(8), picks].all()
    assert iv.random_present_vehicle(obs[[5, 2]], seed=3).tolist() == picks[[5, 2]].tolist()


def test_intervened_module_drives_play_with_the_hooks_applied(net):
    toy = tiny_net(heads=H, seed=1)
    fns = iv.head_ablation(0)
    policy = iv.Intervened(toy, fns)
    obs = random_obs(4, entities=4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(policy(obs), run_with_hooks(toy, obs, fns))
        edited = iv.Intervened(toy, obs_edit=iv.remove_random_vehicle(0))
        torch.testing.assert_close(edited(obs), toy(iv.remove_vehicle(obs, iv.random_present_vehicle(obs, 0))))
    seeds = list(range(10, 18))
    with toy_runner(1) as runner:
        one = play(policy, runner, seeds)
    with toy_runner(2) as runner:
        two = play(policy, runner, seeds)
    assert [r.env_seed for r in one] == seeds and one == two
    assert not toy.attention_layer.hook_z._forward_hooks                         # nothing left registered


def test_open_loop_effects_of_no_intervention_are_zero_and_of_an_ablation_consistent(net):
    obs = random_obs(10, seed=8)
    none = iv.open_loop_effects(net, obs)
    assert (none[["dq_slower", "dq_idle", "dq_faster", "abs_dq", "dm", "attention_tv"]] == 0).all().all()
    assert not none["flipped"].any()
    effects = iv.open_loop_effects(net, obs, iv.head_ablation(0))
    with torch.no_grad():
        dq = (run_with_hooks(net, obs, iv.head_ablation(0)) - net(obs)).double().numpy()
    np.testing.assert_allclose(effects[["dq_slower", "dq_idle", "dq_faster"]].to_numpy(), dq, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(effects["dm"], dq[:, 0] - dq[:, 2], rtol=1e-6, atol=1e-9)
    assert (effects["attention_tv"] == 0).all()                      # z ablation happens after the pattern
    removed = iv.open_loop_effects(net, obs, obs_edit=iv.remove_most_attended(net))
    assert (removed["attention_tv"] > 0).all()
    summary = iv.summarize_effects(effects, 200, 0)
    assert summary["n_steps"] == 10
    assert summary["flip_rate_ci_low"] <= summary["flip_rate"] <= summary["flip_rate_ci_high"]


# -------------------------------------------------------------------------------- neurons

def test_random_unit_sets_are_seeded_and_avoid_the_top_set():
    top = [5, 1, 2]
    sets = iv.random_unit_sets(8, top, 3, 4, seed=1)
    assert sets == iv.random_unit_sets(8, top, 3, 4, seed=1) and len(sets) == 4
    assert all(len(s) == 3 and not set(s) & set(top) for s in sets)


# --------------------------------------------------------------------------- perturbation

def test_perturbation_sweep_of_the_last_hidden_layer_is_linear(net):
    obs = random_obs(5, seed=11)
    layer = "output_layer.hook_post.0"
    _, cache = run_with_cache(net, obs, [layer])
    directions = iv.sweep_directions(cache[layer], n_random=2, seed=0)
    assert set(directions) == {"uniform", "pc1", "random0", "random1"}
    for v in directions.values():
        torch.testing.assert_close(v.norm(), torch.tensor(D ** 0.5))
    table = iv.perturbation_sweep(net, obs, {layer: directions}, [-0.5, 0.1])
    assert len(table) == 4 * 2
    # predict is linear: +s on every unit moves Q by s * (row sums of predict's weight)
    row = table[(table.direction == "uniform") & (table["size"] == 0.1)].iloc[0]
    expected = 0.1 * net.output_layer.predict.weight.sum(1).detach().double()
    np.testing.assert_allclose([row.dq_slower, row.dq_idle, row.dq_faster], expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(row.sensitivity, row.mean_abs_dq / 0.1)
    np.testing.assert_allclose(row.mean_abs_dq, expected.abs().mean().item(), rtol=1e-4)
