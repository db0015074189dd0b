"""Logit lens and tuned lens against independent computations from the weights and the cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.reading.lens import (
    decode,
    fit_affine_probe,
    held_out_agreement,
    lens_controls,
    lens_states,
    lens_summary,
    logit_lens,
    majority_action,
    split_rows,
    tuned_lens,
    tuned_lens_for,
)
from egolens.hooks import run_with_cache, run_with_hooks
from egolens.stats import cluster_bootstrap_ci
from tests.conftest import random_obs, tiny_net

Q = ["q_slower", "q_idle", "q_faster"]
HEADS, D = 2, 8
DH = D // HEADS


@pytest.fixture
def net():
    return tiny_net(heads=HEADS)


def site_q(table: pd.DataFrame, site: str, k: int | None = None) -> torch.Tensor:
    rows = table[(table["site"] == site) & (table["k"].isna() if k is None else table["k"] == k)]
    return torch.tensor(rows.sort_values("index")[Q].to_numpy())


def final_rows(table: pd.DataFrame, site: str) -> pd.DataFrame:
    """Each observation's row of `site` with the largest k (all entities added)."""
    rows = table[table["site"] == site]
    return rows.loc[rows.groupby("index")["k"].idxmax()].sort_values("index")


def test_all_entities_added_and_full_sites_equal_the_final_q_exactly(net):
    obs = random_obs(12, seed=1)
    q = net(obs).detach()
    table = logit_lens(net, obs)
    added = final_rows(table, "added")
    n_present = (obs[:, :, 0] >= 0.5).sum(dim=1)
    assert added["k"].tolist() == n_present.tolist()
    torch.testing.assert_close(torch.tensor(added[Q].to_numpy()), q, rtol=0, atol=0)
    torch.testing.assert_close(site_q(table, "full"), q, rtol=0, atol=0)
    assert table["final_action"].eq(table["index"].map(dict(enumerate(q.argmax(dim=1).tolist())))).all()
    assert table.loc[table["site"] == "full", "agrees"].all()


def test_ego_alone_site_is_the_output_mlp_of_half_the_cached_ego_embedding(net):
    obs = random_obs(10, seed=2)
    _, cache = run_with_cache(net, obs, ["ego_embedding.hook_post.1"])
    with torch.no_grad():
        expected = net.output_layer(0.5 * cache["ego_embedding.hook_post.1"][:, 0])
    table = logit_lens(net, obs)
    torch.testing.assert_close(site_q(table, "ego"), expected)
    torch.testing.assert_close(site_q(table, "added", 0), expected)      # no entity added yet
    for h in range(HEADS):
        torch.testing.assert_close(site_q(table, f"head{h}_added", 0), expected)


def test_head_site_is_ego_plus_that_heads_write_through_its_combine_columns(net):
    obs = random_obs(10, seed=3)
    _, cache = run_with_cache(net, obs, ["ego_embedding.hook_post.1", "attention_layer.hook_z"])
    e, z = cache["ego_embedding.hook_post.1"][:, 0], cache["attention_layer.hook_z"][:, :, 0]   # [N, D], [N, H, d]
    w_o = net.attention_layer.attention_combine.weight.detach()
    table = logit_lens(net, obs)
    for h in range(HEADS):
        with torch.no_grad():
            expected = net.output_layer(0.5 * e + 0.5 * z[:, h] @ w_o[:, h * DH:(h + 1) * DH].T)
        torch.testing.assert_close(site_q(table, f"head{h}"), expected)
        ends = final_rows(table, f"head{h}_added")
        torch.testing.assert_close(torch.tensor(ends[Q].to_numpy()), expected)


def test_head_site_equals_the_final_q_when_the_other_heads_values_are_zeroed(net):
    obs = random_obs(8, seed=4)

    def silence_head1(v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[:, 1] = 0.0
        return v

    fns = {"attention_layer.hook_v": silence_head1}
    q = run_with_hooks(net, obs, fns).detach()
    table = logit_lens(net, obs, fns=fns)
    torch.testing.assert_close(site_q(table, "head0"), q)
    torch.testing.assert_close(torch.tensor(final_rows(table, "added")[Q].to_numpy()), q, rtol=0, atol=0)


def test_with_attention_forced_one_hot_on_the_ego_one_added_entity_gives_the_final_q(net):
    obs = random_obs(8, seed=5)

    def on_ego(pattern: torch.Tensor) -> torch.Tensor:
        forced = torch.zeros_like(pattern)
        forced[..., 0] = 1.0
        return forced

    fns = {"attention_layer.hook_pattern": on_ego}
    q = run_with_hooks(net, obs, fns).detach()
    # independently: h_in = ½e + ½·W_O·W_V·e when every head reads only the ego's value
    _, cache = run_with_cache(net, obs, ["ego_embedding.hook_post.1"])
    e = cache["ego_embedding.hook_post.1"][:, 0]
    layer = net.attention_layer
    with torch.no_grad():
        expected = net.output_layer(0.5 * e + 0.5 * e @ layer.value_all.weight.T @ layer.attention_combine.weight.T)
    torch.testing.assert_close(q, expected)
    table = logit_lens(net, obs, fns=fns)
    torch.testing.assert_close(site_q(table, "added", 1), q)
    torch.testing.assert_close(site_q(table, "added", 3), q)             # the rest carry weight 0
    ego_alone = site_q(table, "ego")
    torch.testing.assert_close(site_q(table, "added", 0), ego_alone)
    assert not torch.allclose(ego_alone, q)


def test_added_sites_are_partial_sums_in_each_heads_attention_order(net):
    obs = random_obs(4, seed=6)
    names = ["ego_embedding.hook_post.1", "others_embedding.hook_post.1", "attention_layer.hook_pattern"]
    _, cache = run_with_cache(net, obs, names)
    entities = torch.cat([cache[names[0]], cache[names[1]]], dim=1)          # [N, E, D]
    pattern = cache[names[2]][:, :, 0]                                       # [N, H, E]
    w_v = net.attention_layer.value_all.weight.detach()
    w_o = net.attention_layer.attention_combine.weight.detach()
    table = logit_lens(net, obs)
    for b in range(len(obs)):
        present = [j for j in range(obs.shape[1]) if j == 0 or obs[b, j, 0] >= 0.5]
        orders = [sorted(present, key=lambda j, h=h: -float(pattern[b, h, j])) for h in range(HEADS)]
        for k in (0, 1, 2, len(present) // 2, len(present)):
            state = 0.5 * entities[b, 0]
            for h in range(HEADS):
                rows = slice(h * DH, (h + 1) * DH)
                for j in orders[h][:k]:
                    state = state + 0.5 * pattern[b, h, j] * (w_o[:, rows] @ (w_v[rows] @ entities[b, j]))
            with torch.no_grad():
                expected = net.output_layer(state)
            got = table[(table["index"] == b) & (table["site"] == "added") & (table["k"] == k)][Q].to_numpy()
            torch.testing.assert_close(torch.tensor(got[0]), expected, rtol=1e-5, atol=1e-6)


def test_labels_are_joined_by_observation_row(net):
    obs = random_obs(3, seed=7)
    labels = pd.DataFrame({"episode": [4, 4, 5], "step": [7, 8, 0]})
    table = logit_lens(net, obs, labels=labels)
    assert table.columns[:3].tolist() == ["episode", "step", "index"]
    assert (table["episode"] == table["index"].map({0: 4, 1: 4, 2: 5})).all()
    assert (table["step"] == table["index"].map({0: 7, 1: 8, 2: 0})).all()


def test_lens_summary_is_the_agreement_rate_per_site_and_k():
    df = pd.DataFrame({
        "site": ["ego", "ego", "ego", "added", "added", "added"],
        "k": pd.array([None, None, None, 0, 0, 1], dtype="Int64"),
        "agrees": [True, False, True, False, False, True],
    })
    summary = lens_summary(df)
    assert summary["site"].tolist() == ["ego", "added", "added"]
    assert summary["k"].isna().tolist() == [True, False, False]
    np.testing.assert_allclose(summary["agreement"], [2 / 3, 0.0, 1.0])
    assert summary["n"].tolist() == [3, 2, 1]


# ------------------------------------------------------------------------------- tuned lens


def test_tuned_lens_recovers_a_known_affine_map_and_rejects_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    weight, bias = torch.randn(3, 6, generator=g), torch.tensor([0.5, -1.0, 2.0])
    q = x @ weight.T + bias
    w_hat, b_hat = fit_affine_probe(x, q, ridge=1e-10)
    torch.testing.assert_close(w_hat.float(), weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(b_hat.float(), bias, atol=1e-5, rtol=0)
    table = tuned_lens({("exact", None): x, ("noise", 2): torch.randn(300, 6, generator=g)}, q, ridge=1e-10)
    exact = table[table["site"] == "exact"].set_index("split")
    assert exact.loc["train", "n"] == 210 and exact.loc["held_out", "n"] == 90
    np.testing.assert_allclose(exact["r2"], 1.0, atol=1e-9)
    np.testing.assert_allclose(exact["agreement"], 1.0)
    noise = table[table["site"] == "noise"].set_index("split")
    assert noise["k"].tolist() == [2, 2]
    assert noise.loc["held_out", "r2"] < 0.1 and noise.loc["held_out", "agreement"] < 0.8


def test_ridge_shrinks_the_weights_but_not_the_bias():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = 2 * x + 10
    w, b = fit_affine_probe(x, y, ridge=1e6)
    assert abs(float(w)) < 1e-4
    assert float(b) == pytest.approx(float(y.mean()), abs=1e-3)


def test_split_is_deterministic_and_holds_out_whole_groups():
    train, held = split_rows(20, 0.25, seed=3)
    again = split_rows(20, 0.25, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert len(held) == 5 and sorted([*train, *held]) == list(range(20))
    groups = np.repeat(np.arange(5), 4)
    train, held = split_rows(20, 0.4, seed=1, groups=groups)
    assert len(set(groups[held])) == 2 and not set(groups[held]) & set(groups[train])


def test_tuned_lens_on_the_full_state_is_exact_when_the_output_mlp_is_affine(net):
    with torch.no_grad():
        net.output_layer.layers[0].bias += 100.0          # every hidden ReLU on: U is affine
    obs = random_obs(60, seed=8)
    table = tuned_lens_for(net, obs, ridge=1e-12, ks=[0, 1], groups=np.arange(60) // 6)
    full = table[table["site"] == "full"]
    np.testing.assert_allclose(full["r2"], 1.0, atol=1e-6)
    np.testing.assert_allclose(full["agreement"], 1.0)
    assert set(table["site"]) == {"ego", "head0", "head1", "added", "full"}
    assert sorted(table.loc[table["site"] == "added", "k"].unique().tolist()) == [0, 1]
    # the ego alone carries less of Q than h_in
    ego = table[(table["site"] == "ego") & (table["split"] == "held_out")]
    assert float(ego["r2"].iloc[0]) < 1 - 1e-3


def test_lens_states_count_present_entities_with_the_ego(net):
    obs = random_obs(5, seed=9)
    states = lens_states(net, obs)
    assert states.n_present.tolist() == (obs[:, :, 0] >= 0.5).sum(dim=1).tolist()
    torch.testing.assert_close(states.added[-1], states.full, rtol=0, atol=0)


def test_decode_reads_the_nets_q_off_a_state_put_in_place_of_h_in(net):
    obs = random_obs(6, seed=10)
    q, cache = run_with_cache(net, obs, ["attention_layer.hook_resid"])
    h_in = cache["attention_layer.hook_resid"]
    torch.testing.assert_close(decode(net, obs, h_in), q, rtol=0, atol=0)
    state = torch.randn(h_in.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(decode(net, obs, state), net.output_layer(state), rtol=0, atol=0)


def test_edits_after_the_pattern_and_values_reach_only_the_full_site(net):
    obs = random_obs(6, seed=11)
    plain = lens_states(net, obs)
    edited = lens_states(net, obs, fns={"attention_layer.hook_combined": torch.zeros_like})
    torch.testing.assert_close(edited.full, edited.ego, rtol=0, atol=0)        # (0 + e) / 2
    torch.testing.assert_close(edited.added, plain.added, rtol=0, atol=0)      # rebuilt from pattern and values
    torch.testing.assert_close(edited.head_added, plain.head_added, rtol=0, atol=0)


def test_held_out_agreement_is_the_tuned_lens_agreement_row_by_row():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g)
    q = x @ torch.randn(3, 4, generator=g).T
    sites = {("ego", None): x[:, :2], ("full", None): x}
    groups = np.arange(40) // 4
    rows = held_out_agreement(sites, q, ridge=1e-8, seed=5, groups=groups)
    table = tuned_lens(sites, q, ridge=1e-8, seed=5, groups=groups)
    _, held = split_rows(40, 0.3, 5, groups)
    for site in ("ego", "full"):
        part = rows[rows["site"] == site]
        assert part["index"].tolist() == held.tolist()
        expected = table[(table["site"] == site) & (table["split"] == "held_out")]["agreement"].item()
        assert part["agrees"].mean() == pytest.approx(expected)
    assert rows[rows["site"] == "full"]["agrees"].all()          # q is affine in the full state


def test_majority_action_is_the_most_frequent_with_ties_to_the_lowest():
    assert majority_action(np.array([2, 0, 2, 1])) == 2
    assert majority_action(np.array([1, 0, 0, 1])) == 0


def test_lens_controls_against_a_hand_computation():
    # six steps of three episodes; final actions 1,1,1,0,2,1 -> majority action 1 on 4/6 steps
    final = np.array([1, 1, 1, 0, 2, 1])
    episode = np.array([0, 0, 1, 1, 2, 2])
    ego = [1, 0, 1, 1, 0, 1]
    full = [1, 1, 1, 1, 1, 0]
    agrees = pd.DataFrame({"index": list(range(6)) * 2, "site": ["ego"] * 6 + ["full"] * 6,
                           "agrees": [bool(a) for a in ego + full]})
    # a site other than ego and full is ignored
    agrees = pd.concat([agrees, pd.DataFrame({"index": [0], "site": ["head0"], "agrees": [False]})])
    table = lens_controls(agrees, final, episode, resamples=500, seed=0).set_index("quantity")
    assert list(table.index) == ["majority_rate", "ego_minus_majority", "full_minus_ego", "full_minus_majority"]
    majority = np.array([1, 1, 1, 0, 0, 1])
    assert table.loc["majority_rate", "value"] == pytest.approx(4 / 6)
    assert table.loc["ego_minus_majority", "value"] == pytest.approx((np.array(ego) - majority).mean())
    assert table.loc["full_minus_ego", "value"] == pytest.approx(1 / 6)
    assert table.loc["full_minus_majority", "value"] == pytest.approx(1 / 6)
    assert (table["n_steps"] == 6).all() and (table["n_episodes"] == 3).all()
    # the interval resamples episodes: the same draws as the cluster bootstrap of the differences
    assert tuple(table.loc["full_minus_ego", ["value", "ci_low", "ci_high"]]) == pytest.approx(
        cluster_bootstrap_ci(np.array(full) - np.array(ego), episode, 500, 0))
