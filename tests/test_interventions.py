"""Interventions on tiny hand-made networks: ablations remove exactly the ablated term, patching
the whole clean activation restores the clean output and patching nothing restores nothing,
path patching separates the key path from the value path, edits have their predicted effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egolens.analysis import interventions as iv
from egolens.evaluation import EpisodeResult, play_greedy
from egolens.hooks import hooks, run_with_cache, run_with_hooks
from egolens.vocabulary import present_others
from tests.conftest import random_obs, tiny_net, toy_runner

D, H = 8, 2
d = D // H


@pytest.fixture
def net():
    return tiny_net(heads=H)


def q_from_resid(net, obs, resid):
    """Q-values with the output-MLP input replaced by `resid` (the rest of the forward is the net's own)."""
    with torch.no_grad():
        return run_with_hooks(net, obs, {iv.RESID: lambda _: resid})


def w_o(net, h):
    return net.attention_layer.attention_combine.weight[:, h * d:(h + 1) * d].detach()


def pair(seed=1, batch=6):
    """Clean observations and a corrupted copy with the first present other vehicle moved closer."""
    clean = random_obs(batch, seed=seed)
    present = present_others(clean)
    target = torch.where(present.any(1), present.float().argmax(1), torch.full((batch,), -1)).long()
    assert (target > 0).all()
    return clean, iv.move_closer(clean, target, 0.3), target


# ------------------------------------------------------------------------------ ablations

@pytest.mark.parametrize("head", [0, 1])
def test_zero_ablating_a_head_removes_exactly_its_write(net, head):
    obs = random_obs(7, seed=2)
    _, cache = run_with_cache(net, obs)
    z = cache[iv.Z][:, head, 0]                                                     # [B, d]
    expected = q_from_resid(net, obs, cache[iv.RESID] - 0.5 * z @ w_o(net, head).T)
    with torch.no_grad():
        ablated = run_with_hooks(net, obs, iv.head_ablation(head))
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ablated, cache["output_layer.predict"])
    with hooks(net, iv.head_ablation(head)):
        _, after = run_with_cache(net, obs, [iv.Z, iv.PATTERN])
    assert torch.equal(after[iv.Z][:, head], torch.zeros_like(after[iv.Z][:, head]))
    assert torch.equal(after[iv.Z][:, 1 - head], cache[iv.Z][:, 1 - head])          # the other head untouched
    assert torch.equal(after[iv.PATTERN], cache[iv.PATTERN])                        # where it looks is unchanged


def test_mean_ablation_replaces_a_head_write_by_its_mean(net):
    obs = random_obs(9, seed=3)
    _, cache = run_with_cache(net, obs)
    mean_z = iv.mean_activation(cache[iv.Z])                                         # [H, 1, d]
    assert mean_z.shape == (H, 1, d)
    delta = (mean_z[1, 0] - cache[iv.Z][:, 1, 0]) @ w_o(net, 1).T
    expected = q_from_resid(net, obs, cache[iv.RESID] + 0.5 * delta)
    with torch.no_grad():
        ablated = run_with_hooks(net, obs, iv.head_ablation(1, "mean", mean_z))
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-6)
    # on a batch of one repeated state the mean is the state's own value: nothing changes
    same = obs[:1].repeat(4, 1, 1)
    _, c1 = run_with_cache(net, same, [iv.Z])
    with torch.no_grad():
        torch.testing.assert_close(run_with_hooks(net, same, iv.head_ablation(0, "mean", iv.mean_activation(c1[iv.Z]))),
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
    mean = iv.mean_activation(cache[iv.COMBINED])
    with torch.no_grad():
        meaned = run_with_hooks(net, obs, iv.branch_ablation("mean", mean))
    torch.testing.assert_close(meaned, q_from_resid(net, obs, 0.5 * (ego + mean)))


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


def test_intervened_module_drives_play_greedy_with_the_hooks_applied(net):
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
        one = play_greedy(policy, runner, seeds)
    with toy_runner(2) as runner:
        two = play_greedy(policy, runner, seeds)
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


def test_top_and_random_unit_sets(net):
    obs = random_obs(6, seed=9)
    importance = iv.neuron_importance(net, obs, "output_layer.hook_post.0", n_steps=16)
    assert importance.shape == (8,) and (importance >= 0).all()
    top = iv.top_units(importance, 3)
    assert importance[top].min() >= importance[[u for u in range(8) if u not in top]].max()
    assert iv.top_units(torch.tensor([1.0, 3.0, 3.0, 0.0]), 2) == [1, 2]
    sets = iv.random_unit_sets(8, top, 3, 4, seed=1)
    assert sets == iv.random_unit_sets(8, top, 3, 4, seed=1) and len(sets) == 4
    assert all(len(s) == 3 and not set(s) & set(top) for s in sets)
    per_entity = iv.neuron_importance(net, obs, "others_embedding.hook_post.0", n_steps=16)
    assert per_entity.shape == (8,)


# ------------------------------------------------------------------------------ patching

def test_patching_the_whole_clean_activation_restores_the_clean_output_exactly(net):
    clean, corr, target = pair()
    q_clean = net(clean).detach()
    for name in (iv.RESID, "output_layer.hook_post.0"):
        with torch.no_grad():
            patched = run_with_hooks(net, corr, {name: iv.patch_hook(run_with_cache(net, clean, [name])[1][name])})
        torch.testing.assert_close(patched, q_clean, rtol=0, atol=0)
    sites = [iv.Site(iv.RESID, (), "resid"), iv.Site("output_layer.hook_post.0", (), "hidden")]
    table = iv.activation_patching(net, clean, corr, sites, target)
    np.testing.assert_allclose(table["restored"], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["m_patched"], table["m_clean"], rtol=0, atol=0)


def test_patching_nothing_restores_nothing(net):
    clean, corr, target = pair(seed=2)
    nothing = [iv.Site(iv.RESID, (slice(0, 0),), "resid"),                           # an empty slice
               iv.Site(iv.K_SITE, (0, slice(0, 0)), "key", head=0)]
    table = iv.activation_patching(net, clean, corr, nothing, target)
    assert (table["restored"] == 0.0).all() and (table["m_patched"] == table["m_corr"]).all()
    # an entity absent in both runs is masked: patching its embedding restores nothing either
    absent = int(torch.nonzero(clean[0, :, 0] < 0.5)[0])
    table = iv.activation_patching(net, clean[:1], corr[:1],
                                   [iv.Site("others_embedding.hook_post.1", (absent - 1,), "embedding", entity=absent)])
    assert float(table["restored"].iloc[0]) == 0.0 and not table["entity_present"].iloc[0]


def test_restored_fraction_by_hand():
    frac = iv.restored_fraction(np.array([1.0, 3.0, 2.0, 5.0]), np.array([3.0, 3.0, 3.0, 5.0]),
                                np.array([1.0, 1.0, 1.0, 5.0]))
    np.testing.assert_allclose(frac[:3], [0.0, 1.0, 0.5])
    assert np.isnan(frac[3])


def test_patching_sites_and_roles(net):
    clean, corr, target = pair(seed=3, batch=4)
    sites = iv.patching_sites(net, entities=15)
    classes = {s.site_class for s in sites}
    assert classes == {"embedding", "query", "key", "value", "scores", "pattern", "z", "combined", "resid",
                       "hidden", "neuron"}
    assert sum(s.site_class == "key" for s in sites) == H * 16 and sum(s.site_class == "neuron" for s in sites) == 8
    table = iv.activation_patching(net, clean, corr, sites, target)
    assert len(table) == 4 * len(sites)
    rows = table[(table.site_class == "embedding") & (table.site == "others_embedding.hook_post.1")
                 & (table.role == "target")]
    assert len(rows) == 4                                   # the changed vehicle's own embedding, each pair
    np.testing.assert_allclose(rows["restored"], 1.0, atol=1e-5)  # it is the only thing that differs
    ego = table[(table.entity == 0) & (table.site_class == "embedding")]
    np.testing.assert_allclose(ego["restored"], 0.0, atol=1e-6)  # the ego's embedding is the same in both


def test_key_only_patch_changes_only_the_pattern_and_value_only_only_what_is_read(net):
    clean, corr, target = pair(seed=4)
    _, c_clean = run_with_cache(net, clean)
    _, c_corr = run_with_cache(net, corr)
    head = 1
    key = {iv.K_SITE: iv.patch_hook(c_clean[iv.K_SITE], (head, target))}
    with hooks(net, key):
        _, after = run_with_cache(net, corr)
    assert torch.equal(after[iv.V_SITE], c_corr[iv.V_SITE])                          # values untouched
    assert torch.equal(after[iv.PATTERN][:, 1 - head], c_corr[iv.PATTERN][:, 1 - head])
    assert not torch.allclose(after[iv.PATTERN][:, head], c_corr[iv.PATTERN][:, head])   # the pattern moved
    b = torch.arange(6)
    torch.testing.assert_close(after[iv.K_SITE][b, head, target], c_clean[iv.K_SITE][b, head, target])
    value = {iv.V_SITE: iv.patch_hook(c_clean[iv.V_SITE], (head, target))}
    with hooks(net, value):
        _, after = run_with_cache(net, corr)
    assert torch.equal(after[iv.PATTERN], c_corr[iv.PATTERN])                       # where it looks: unchanged
    assert torch.equal(after[iv.Z][:, 1 - head], c_corr[iv.Z][:, 1 - head])
    assert not torch.allclose(after[iv.Z][:, head], c_corr[iv.Z][:, head])           # what it reads: changed
    # z moves by exactly the pattern weight times the value difference
    a = c_corr[iv.PATTERN][b, head, 0, target]
    dv = c_clean[iv.V_SITE][b, head, target] - c_corr[iv.V_SITE][b, head, target]
    torch.testing.assert_close(after[iv.Z][:, head, 0] - c_corr[iv.Z][:, head, 0], a[:, None] * dv)


def test_path_patching_table(net):
    clean, corr, target = pair(seed=5, batch=4)
    table = iv.path_patching(net, clean, corr, target)
    assert set(table["path"]) == {"key", "value", "key_value", "sender"}              # no ego sender: no query
    sender = table[table.path == "sender"]
    np.testing.assert_allclose(sender["restored"], 1.0, atol=1e-5)                  # the only change, restored
    assert (table[table.path != "sender"]["head"] >= 0).all()
    # the ego as sender (the ego slower): query paths appear, the sender path restores everything
    slow = iv.slow_ego(clean, 0.3)
    table = iv.path_patching(net, clean, slow, torch.zeros(4, dtype=torch.long))
    assert set(table["path"]) == set(iv.PATHS)
    sender = table[table.path == "sender"]
    np.testing.assert_allclose(sender["m_patched"], sender["m_clean"], rtol=0, atol=1e-6)
    # a batch mixing ego and vehicle senders: query rows only for the ego pairs
    mixed = torch.cat([corr[:2], slow[2:]])
    sender_ids = torch.cat([target[:2], torch.zeros(2, dtype=torch.long)])
    table = iv.path_patching(net, clean, mixed, sender_ids)
    assert set(table[table.path == "query"]["pair"]) == {2, 3}
    np.testing.assert_allclose(table[table.path == "sender"]["restored"], 1.0, atol=1e-5)


def test_build_pairs_filters_by_the_metric_change(net):
    obs = random_obs(20, seed=10)
    _, cache = run_with_cache(net, obs, [iv.PATTERN])
    crossing = present_others(obs)
    crossing[:10] = False
    pairs = iv.build_pairs(net, obs, "vehicle_removed", cache[iv.PATTERN], crossing, max_pairs=100, min_change=0.0)
    assert (pairs.step >= 10).all() and len(pairs.step) == 10
    assert (pairs.corrupted[torch.arange(10), pairs.target, 0] == 0).all()
    gap = (iv.q_metric(net(obs)) - iv.q_metric(net(iv.slow_ego(obs)))).abs().detach()
    threshold = float(gap.median())
    pairs = iv.build_pairs(net, obs, "ego_slower", cache[iv.PATTERN], max_pairs=100, min_change=threshold)
    assert set(pairs.step.tolist()) == set(torch.nonzero(gap >= threshold).squeeze(1).tolist())
    few = iv.build_pairs(net, obs, "vehicle_closer", cache[iv.PATTERN], max_pairs=3, min_change=0.0)
    assert len(few.step) == 3 and few.step[0] == 0 and few.step[-1] == 19
    with pytest.raises(ValueError, match="kind"):
        iv.build_pairs(net, obs, "nope", cache[iv.PATTERN])


# -------------------------------------------------------------------------- perturbation

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


# --------------------------------------------------------------------------------- edits

def test_rank_one_update_maps_k_star_to_v_star_and_leaves_c_orthogonal_keys_unchanged():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(50, 6, generator=g, dtype=torch.float64)
    c = iv.key_second_moment(keys, ridge=0.0)
    torch.testing.assert_close(c, keys.T @ keys / 50)
    w, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    k_star, v_star = keys[3], torch.randn(4, generator=g, dtype=torch.float64)
    w_hat = iv.rank_one_update(w, k_star, v_star, c, b)
    torch.testing.assert_close(w_hat @ k_star + b, v_star)
    u = torch.linalg.solve(c, k_star)
    for k in keys[:10]:
        k_perp = k - (u @ k) / (u @ k_star) * k_star                   # (C⁻¹k*)ᵀk_perp = 0
        torch.testing.assert_close(w_hat @ k_perp, w @ k_perp)
    assert torch.linalg.matrix_rank(w_hat - w) == 1
    with pytest.raises(ValueError, match="0"):
        iv.rank_one_update(w, torch.zeros(6, dtype=torch.float64), v_star, c)


def test_an_edit_to_a_known_weight_has_its_predicted_effect(net):
    obs = random_obs(12, seed=12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _, cache = run_with_cache(net, obs, ["output_layer.hook_post.0"])
    keys = cache["output_layer.hook_post.0"]
    v_star = torch.tensor([2.0, -1.0, 0.5])
    edited = iv.rank_one_edit(net, "output_layer.predict", keys[4], v_star, iv.key_second_moment(keys))
    with torch.no_grad():
        torch.testing.assert_close(edited(obs[4:5])[0], v_star, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())       # the input is not mutated
    changed = [k for k in before if not torch.equal(before[k], edited.state_dict()[k])]
    assert changed == ["output_layer.predict.weight"]
    # scaling head 0's output weights scales its write: resid' = resid + ½(f − 1)·W_O^0 z_0
    _, cache = run_with_cache(net, obs)
    for factor in (0.0, 2.5):
        scaled = iv.scale_head_output(net, 0, factor)
        write = 0.5 * cache[iv.Z][:, 0, 0] @ w_o(net, 0).T
        with torch.no_grad():
            torch.testing.assert_close(scaled(obs), q_from_resid(net, obs, cache[iv.RESID] + (factor - 1) * write),
                                       rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(iv.scale_head_output(net, 0, 0.0)(obs),
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
    edit = iv.brake_edit(net, obs, danger, margin=0.2)
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
    edit = iv.brake_edit(net, obs, danger)
    assert edit.layer == "output_layer.layers.0" and edit.key_name == iv.RESID
    assert greedy[edit.source] == iv.SLOWER and greedy[edit.step] != iv.SLOWER
    assert edit.step == int(torch.nonzero(greedy != iv.SLOWER).max())
    with torch.no_grad():
        torch.testing.assert_close(edit.net(obs[edit.step:edit.step + 1]), net(obs[edit.source:edit.source + 1]),
                                   rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- statistics

def test_paired_comparison_of_closed_loop_episodes():
    control = [EpisodeResult(s, 5.0, 10, o) for s, o in zip(range(4), ["arrived", "collision", "arrived", "timeout"])]
    treated = [EpisodeResult(s, 1.0, 8, o) for s, o in zip(range(4), ["collision", "collision", "arrived", "timeout"])]
    table = iv.paired_comparison(treated, control, 500, 0).set_index("metric")
    assert table.loc["success", "value"] == 0.25 and table.loc["success", "control"] == 0.5
    assert table.loc["success", "diff"] == -0.25 and table.loc["collision", "diff"] == 0.25
    assert table.loc["return", "diff"] == -4.0 and table.loc["return", "diff_ci_low"] == -4.0
    assert (table["episodes"] == 4).all()
    with pytest.raises(ValueError, match="paired"):
        iv.paired_comparison(treated[::-1], control, 100, 0)


def test_step_danger_ranks_collision_courses_before_mere_proximity_and_empty_roads_last():
    inf, nan = np.inf, np.nan
    facts = {"ttc": np.array([[nan, 2.0, inf], [nan, inf, inf], [nan, 0.5, 3.0], [nan, nan, nan]]),
             "distance": np.array([[nan, 30.0, 5.0], [nan, 8.0, 4.0], [nan, 10.0, 20.0], [nan, nan, nan]])}
    np.testing.assert_allclose(iv.step_danger(facts), [-2.0, -1004.0, -0.5, -inf])

