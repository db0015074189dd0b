"""Per-head QK/OV circuits: checked against the forward pass (hooks) and hand-made networks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from egolens.analysis.reading.circuits import (
    circuit_matrix_table,
    compare_circuits,
    composites,
    effective_rank,
    embedding_bias_path,
    embedding_composite,
    feature_circuits,
    head_matrices,
    head_weights,
    head_writes,
    output_bias_path,
    output_composite,
    ov_actions,
    ov_circuit,
    ov_features,
    qk_circuit,
    qk_features,
    scores_by_fact,
    scores_by_facts,
    summarize,
    weight_tables,
)
from egolens.hooks import run_with_cache, run_with_hooks
from egolens.model import EgoAttentionNetwork
from egolens.vocabulary import ACTIONS, REFERENCE_FEATURES
from tests.conftest import random_obs, tiny_net

EGO, OTHERS = "ego_embedding.hook_post.1", "others_embedding.hook_post.1"


def default_net(heads: int, seed: int = 0) -> EgoAttentionNetwork:
    torch.manual_seed(seed)
    return EgoAttentionNetwork(heads=heads)


def entity_embeddings(cache: dict[str, torch.Tensor]) -> np.ndarray:
    """[B, E, D]: E_0 = the ego embedding, E_j = the others embedding of row j."""
    return torch.cat([cache[EGO], cache[OTHERS]], dim=1).double().numpy()


def positive_net(heads: int = 2) -> EgoAttentionNetwork:
    """Every weight and bias > 0: on inputs ≥ 0 no ReLU is ever inactive, so the net is affine."""
    net = tiny_net(heads, seed=3)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_().add_(0.01)
    return net


@pytest.mark.parametrize("make, heads", [(tiny_net, 1), (tiny_net, 2), (tiny_net, 4), (default_net, 2)])
def test_qk_circuit_reproduces_forward_attention_scores(make, heads):
    net = make(heads)
    obs = random_obs(5, entities=6, seed=heads)
    _, cache = run_with_cache(net, obs)
    entities = entity_embeddings(cache)
    d = net.attention_layer.feature_size // heads
    for h in range(heads):
        expected = np.einsum("bm,mn,ben->be", entities[:, 0], qk_circuit(net, h), entities) / math.sqrt(d)
        np.testing.assert_allclose(expected, cache["attention_layer.hook_scores"][:, h, 0].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_combine_split_by_columns_reproduces_the_layer_output_and_split_by_rows_does_not():
    heads, d = 2, 4
    net = tiny_net(heads)
    obs = random_obs(6, entities=5, seed=1)
    _, cache = run_with_cache(net, obs)
    z = cache["attention_layer.hook_z"][:, :, 0].double().numpy()       # [B, H, d]
    half_ego = 0.5 * cache[EGO][:, 0].double().numpy()
    resid = cache["attention_layer.hook_resid"].double().numpy()
    wv = net.attention_layer.value_all.weight.detach().double().numpy()
    wo = net.attention_layer.attention_combine.weight.detach().double().numpy()

    def reconstruct(w_o: list[np.ndarray]) -> np.ndarray:   # w_o[h]: [D, d]
        return half_ego + 0.5 * sum(z[:, h] @ w_o[h].T for h in range(heads))

    columns = [head_weights(net, h)["W_O"] for h in range(heads)]
    for h in range(heads):
        np.testing.assert_array_equal(columns[h], wo[:, h * d:(h + 1) * d])
        # the (heads, d, D) reshape is right for the values: head h owns rows of W_V
        np.testing.assert_array_equal(head_weights(net, h)["W_V"], wv.reshape(heads, d, 8)[h])
    np.testing.assert_allclose(reconstruct(columns), resid, rtol=1e-5, atol=1e-6)
    # the same reshape of attention_combine gives blocks of a valid shape and the wrong meaning
    rows = [block.T for block in wo.reshape(heads, d, 8)]
    assert rows[0].shape == columns[0].shape
    assert np.abs(reconstruct(rows) - resid).max() > 1e-2


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_head_writes_plus_direct_path_sum_to_the_cached_layer_output(heads):
    net = tiny_net(heads, seed=heads)
    obs = random_obs(7, entities=6, seed=10 + heads)
    writes, direct = head_writes(net, obs)
    _, cache = run_with_cache(net, obs)
    assert writes.shape == (7, heads, 6, 8)
    np.testing.assert_allclose(writes.sum(axis=(1, 2)) + direct, cache["attention_layer.hook_resid"].numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(direct, 0.5 * cache[EGO][:, 0].numpy(), rtol=1e-6)
    absent = EgoAttentionNetwork.absent_mask(obs).numpy()
    assert absent.any()
    assert np.all(writes[np.broadcast_to(absent[:, None], writes.shape[:3])] == 0)


def test_head_writes_follow_an_explicit_mask():
    net = tiny_net(2)
    obs = random_obs(4, entities=5, seed=5, absent_fraction=0.0)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2] = True
    writes, direct = head_writes(net, obs, mask)
    _, cache = run_with_cache(net, obs, mask=mask)
    assert np.all(writes[:, :, 2] == 0)
    np.testing.assert_allclose(writes.sum(axis=(1, 2)) + direct, cache["attention_layer.hook_resid"].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_one_hot_pattern_makes_each_head_write_its_ov_image_of_that_entity():
    net, j, d = tiny_net(2, seed=4), 3, 4
    obs = random_obs(3, entities=5, seed=6, absent_fraction=0.0)

    def one_hot(pattern: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(pattern)
        out[..., j] = 1.0
        return out

    patched = {}
    run_with_hooks(net, obs, {"attention_layer.hook_pattern": one_hot,
                              "attention_layer.hook_resid": lambda a: patched.setdefault("resid", a.detach()),
                              OTHERS: lambda a: patched.setdefault("others", a.detach())})
    writes, direct = head_writes(net, obs, fns={"attention_layer.hook_pattern": one_hot})
    wv = net.attention_layer.value_all.weight.detach()
    wo = net.attention_layer.attention_combine.weight.detach()
    e_j = patched["others"][:, j - 1]                                       # [B, D]
    for h in range(2):
        units = slice(h * d, (h + 1) * d)
        expected = 0.5 * e_j @ wv[units].T @ wo[:, units].T
        np.testing.assert_allclose(writes[:, h, j], expected.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(writes[:, h, j], e_j.double().numpy() @ ov_circuit(net, h).T, rtol=1e-6)
    others = [i for i in range(5) if i != j]
    assert np.all(writes[:, :, others] == 0)
    np.testing.assert_allclose(writes.sum(axis=(1, 2)) + direct, patched["resid"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_identity_weights_give_block_identity_qk_and_half_identity_ov(heads):
    net = tiny_net(heads)
    lift = torch.cat([torch.eye(7), torch.zeros(1, 7)])                      # E(x) = [x; 0] for x ≥ 0
    with torch.no_grad():
        for mlp in (net.ego_embedding, net.others_embedding):
            mlp.layers[0].weight.copy_(lift)
            mlp.layers[1].weight.copy_(torch.eye(8))
            mlp.layers[0].bias.zero_()
            mlp.layers[1].bias.zero_()
        for name in ("query_ego", "key_all", "value_all", "attention_combine"):
            getattr(net.attention_layer, name).weight.copy_(torch.eye(8))
    d = 8 // heads
    for h in range(heads):
        block = np.zeros((8, 8))
        block[h * d:(h + 1) * d, h * d:(h + 1) * d] = np.eye(d)
        np.testing.assert_array_equal(qk_circuit(net, h), block)
        np.testing.assert_array_equal(ov_circuit(net, h), 0.5 * block)
        np.testing.assert_array_equal(qk_features(net, h), block[:7, :7])
        np.testing.assert_array_equal(ov_features(net, h), 0.5 * block[:, :7])
    if heads == 1:
        np.testing.assert_array_equal(qk_circuit(net, 0), np.eye(8))

    # the forward pass of this net, by hand
    x = torch.tensor([[1.0, 0.5, 0.2, 0.1, 0.3, 1.0, 0.0], [1.0, 0.9, 0.1, 0.4, 0.0, 0.0, 1.0],
                      [0.0] * 7, [1.0, 0.2, 0.8, 0.0, 0.6, 0.7, 0.7]])
    _, cache = run_with_cache(net, x[None])
    emb = np.concatenate([x.double().numpy(), np.zeros((4, 1))], axis=1)     # [E, 8]
    resid = 0.5 * emb[0]
    for h in range(heads):
        units = slice(h * d, (h + 1) * d)
        scores = emb[:, units] @ emb[0, units] / math.sqrt(d)
        np.testing.assert_allclose(cache["attention_layer.hook_scores"][0, h, 0].numpy(), scores, rtol=1e-6)
        weights = np.exp(np.where([False, False, True, False], -np.inf, scores))
        weights /= weights.sum()
        resid[units] += 0.5 * weights @ emb[:, units]
    np.testing.assert_allclose(cache["attention_layer.hook_resid"][0].numpy(), resid, rtol=1e-6)


def test_compare_circuits_is_zero_against_itself_and_isolates_a_rescaled_head():
    net = tiny_net(2)
    same = compare_circuits(net, net)
    assert (same["rel_diff"] == 0).all()
    assert (same["fro_trained"] == same["fro_untrained"]).all()
    assert {("QK", 0), ("OV", 1), ("embedding_ego", "-"), ("embedding_others", "-"), ("output_composite", "-"),
            ("attention_layer.attention_combine.weight", "-"),
            ("others_embedding.layers.0.weight", "-")} <= set(zip(same["matrix"], same["head"]))

    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled.attention_layer.value_all.weight[4:8] *= 2
    table = compare_circuits(scaled, net).set_index(["matrix", "head"])
    assert table.loc[("OV", 1), "rel_diff"] == pytest.approx(1.0)
    assert table.loc[("OV", 1), "fro_trained"] == pytest.approx(2 * table.loc[("OV", 1), "fro_untrained"])
    assert table.loc[("OV", 1), "sv1_trained"] == pytest.approx(2 * table.loc[("OV", 1), "sv1_untrained"])
    assert table.loc[("OV", 1), "eff_rank_trained"] == pytest.approx(table.loc[("OV", 1), "eff_rank_untrained"])
    assert table.loc[("OV_actions", 1), "rel_diff"] == pytest.approx(1.0)
    for key in [("OV", 0), ("QK", 0), ("QK", 1), ("OV_actions", 0), ("embedding_others", "-"),
                ("attention_layer.key_all.weight", "-")]:
        assert table.loc[key, "rel_diff"] == 0
    wv = net.attention_layer.value_all.weight.detach()
    assert table.loc[("attention_layer.value_all.weight", "-"), "rel_diff"] == pytest.approx(
        float(wv[4:8].norm() / wv.norm()))


def test_effective_rank_counts_equal_singular_values():
    assert effective_rank(np.array([3.0, 3.0, 3.0, 0.0])) == pytest.approx(3.0)
    assert effective_rank(np.array([5.0, 0.0])) == pytest.approx(1.0)
    assert 1.0 < effective_rank(np.array([2.0, 1.0])) < 2.0


def test_embedding_composites_are_exact_when_no_relu_is_inactive():
    net = positive_net()
    obs = random_obs(4, entities=5, seed=7).abs()
    q, cache = run_with_cache(net, obs)
    x = obs.double().numpy()
    for which, name, rows in (("ego", EGO, slice(0, 1)), ("others", OTHERS, slice(1, None))):
        mlp = getattr(net, f"{which}_embedding")
        w0, w1 = (mlp.layers[i].weight.detach().double().numpy() for i in (0, 1))
        b0, b1 = (mlp.layers[i].bias.detach().double().numpy() for i in (0, 1))
        np.testing.assert_allclose(embedding_composite(net, which), w1 @ w0, rtol=1e-12)
        np.testing.assert_allclose(embedding_bias_path(net, which), w1 @ b0 + b1, rtol=1e-12)
        linear = x[:, rows] @ embedding_composite(net, which).T + embedding_bias_path(net, which)
        np.testing.assert_allclose(linear, cache[name].numpy(), rtol=1e-5)
    resid = cache["attention_layer.hook_resid"].double().numpy()
    np.testing.assert_allclose(resid @ output_composite(net).T + output_bias_path(net), q.numpy(), rtol=1e-5)


def test_feature_projections_reproduce_scores_and_q_values_when_no_relu_is_inactive():
    net, heads, d = positive_net(), 2, 4
    obs = random_obs(4, entities=5, seed=8).abs()
    q, cache = run_with_cache(net, obs)
    ones = np.ones((4, 5, 1))
    x1 = np.concatenate([obs.double().numpy(), ones], axis=-1)              # [B, E, F+1]: [x; 1]
    pattern = cache["attention_layer.hook_pattern"][:, :, 0].double().numpy()
    ego = cache[EGO][:, 0].double().numpy()
    u = output_composite(net)
    expected_q = output_bias_path(net) + 0.5 * ego @ u.T
    for h in range(heads):
        scores = np.einsum("bf,fg,beg->be", x1[:, 0], qk_features(net, h, bias=True), x1[:, 1:]) / math.sqrt(d)
        np.testing.assert_allclose(scores, cache["attention_layer.hook_scores"][:, h, 0, 1:].numpy(), rtol=1e-5)
        expected_q = expected_q + pattern[:, h, :1] * (ego @ (u @ ov_circuit(net, h)).T)
        vehicles = np.einsum("be,af,bef->ba", pattern[:, h, 1:], ov_actions(net, h, bias=True), x1[:, 1:])
        expected_q = expected_q + vehicles
    np.testing.assert_allclose(expected_q, q.numpy(), rtol=1e-5)

    table = feature_circuits(net, run="positive")
    qk0 = table[(table["matrix"] == "QK_features") & (table["head"] == 0)]
    assert list(qk0["row"].unique()) == [*REFERENCE_FEATURES, "bias"]
    np.testing.assert_allclose(qk0["value"].to_numpy().reshape(8, 8), qk_features(net, 0, bias=True))
    ov1 = table[(table["matrix"] == "OV_actions") & (table["head"] == 1)]
    assert list(ov1["row"].unique()) == list(ACTIONS) and (ov1["run"] == "positive").all()
    np.testing.assert_allclose(ov1["value"].to_numpy().reshape(3, 8), ov_actions(net, 1, bias=True))


def test_circuit_matrix_table_is_row_major_long_format_with_labels():
    matrix = np.arange(6.0).reshape(2, 3)
    table = circuit_matrix_table(matrix, ["a", "b"], ["x", "y", "z"], matrix="QK", head=1)
    assert list(table.columns) == ["row", "col", "value", "matrix", "head"]
    assert table.loc[(table["row"] == "b") & (table["col"] == "y"), "value"].item() == 4.0
    np.testing.assert_array_equal(table.pivot(index="row", columns="col", values="value").to_numpy(), matrix)
    assert (table["matrix"] == "QK").all() and (table["head"] == 1).all()
    with pytest.raises(ValueError, match="do not match"):
        circuit_matrix_table(matrix, ["a"], ["x", "y", "z"])


def test_scores_by_fact_averages_present_entities_per_head_and_bin():
    scores = np.array([[[9.0, 1.0, 2.0], [9.0, 10.0, 20.0]],
                       [[9.0, 3.0, 4.0], [9.0, 30.0, 40.0]]])                 # [N=2, H=2, E=3]
    distance = np.array([[np.nan, 0.5, 1.5], [np.nan, 0.7, np.nan]])           # ego and an absent row: NaN
    attention = scores / 100
    table = scores_by_fact(scores, {"distance": distance}, "distance", [0, 1, 2, 3], attention=attention)
    assert list(table.columns) == ["fact", "head", "bin", "bin_left", "bin_right", "count", "mean_score",
                                   "mean_attention"]
    assert len(table) == 6 and (table["fact"] == "distance").all()
    by = table.set_index(["head", "bin_left"])
    assert by.loc[(0, 0), "count"] == 2 and by.loc[(0, 0), "mean_score"] == pytest.approx(2.0)     # (1 + 3) / 2
    assert by.loc[(1, 0), "mean_score"] == pytest.approx(20.0)                                      # (10 + 30) / 2
    assert by.loc[(1, 1), "count"] == 1 and by.loc[(1, 1), "mean_score"] == pytest.approx(20.0)
    assert by.loc[(1, 1), "mean_attention"] == pytest.approx(0.2)
    assert by.loc[(0, 2), "count"] == 0 and np.isnan(by.loc[(0, 2), "mean_score"])
    with pytest.raises(ValueError, match="expected"):
        scores_by_fact(scores, {"distance": distance[:, :2]}, "distance", 2)


def test_head_index_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        qk_circuit(tiny_net(2), 2)


def test_scores_by_facts_stacks_each_facts_bins_in_order_with_the_labels_first():
    scores = np.arange(12.0).reshape(2, 2, 3)                                      # [N=2, H=2, E=3]
    facts = {"distance": np.array([[np.nan, 5.0, 15.0], [np.nan, 25.0, np.nan]]),
             "ttc": np.array([[np.nan, 0.5, np.inf], [np.nan, 2.0, np.nan]])}
    bins = {"ttc": [0, 1, np.inf], "distance": [0, 10, 20, 30]}
    table = scores_by_facts(scores, facts, bins, model="trained", seed=3)
    assert list(table.columns[:3]) == ["model", "seed", "fact"]
    assert (table["model"] == "trained").all() and (table["seed"] == 3).all()
    parts = [scores_by_fact(scores, facts, fact, edges) for fact, edges in bins.items()]
    pd.testing.assert_frame_equal(table.drop(columns=["model", "seed"]), pd.concat(parts, ignore_index=True))
    assert table["fact"].tolist() == ["ttc"] * 4 + ["distance"] * 6
    assert table["bin"].tolist()[:2] == ["(0.0, 1.0]", "(1.0, inf]"]           # as pandas.cut labels them
    assert table["bin"].tolist()[4:6] == ["(0, 10]", "(10, 20]"]                 # integer edges stay integers


def test_head_matrices_hold_both_networks_circuits_and_their_difference():
    trained, untrained = tiny_net(2, seed=0), tiny_net(2, seed=1)
    table = head_matrices(trained, untrained)
    d = trained.attention_layer.feature_size
    assert len(table) == 2 * 2 * 3 * d * d
    for h in range(2):
        w_q = {n: net.attention_layer.query_ego.weight.detach().double().numpy()[h * 4:(h + 1) * 4]
               for n, net in (("trained", trained), ("untrained", untrained))}
        w_k = {n: net.attention_layer.key_all.weight.detach().double().numpy()[h * 4:(h + 1) * 4]
               for n, net in (("trained", trained), ("untrained", untrained))}
        expected = {n: w_q[n].T @ w_k[n] for n in w_q}
        expected["difference"] = expected["trained"] - expected["untrained"]
        for model, matrix in expected.items():
            rows = table[(table["model"] == model) & (table["matrix"] == "QK") & (table["head"] == h)]
            np.testing.assert_allclose(rows["value"].to_numpy().reshape(d, d), matrix, rtol=1e-12)
    ov = table[(table["matrix"] == "OV") & (table["head"] == 1)].set_index(["model", "row", "col"])["value"]
    np.testing.assert_allclose(ov["difference"], ov["trained"] - ov["untrained"], atol=1e-15)


def test_composites_name_features_and_actions_and_subtract_untrained():
    trained, untrained = tiny_net(2, seed=0), tiny_net(2, seed=1)
    table = composites(trained, untrained)
    assert set(table["matrix"]) == {"embedding_ego", "embedding_others", "output_composite"}
    assert list(pd.unique(table["model"])) == ["trained", "untrained", "difference"]
    ego = table[(table["matrix"] == "embedding_ego") & (table["model"] == "trained")]
    assert list(pd.unique(ego["col"])) == list(REFERENCE_FEATURES)
    w = [layer.weight.detach().double().numpy() for layer in trained.ego_embedding.layers]
    np.testing.assert_allclose(ego["value"].to_numpy().reshape(8, 7), w[1] @ w[0], rtol=1e-12)
    out = table[(table["matrix"] == "output_composite") & (table["model"] == "difference")]
    assert list(pd.unique(out["row"])) == list(ACTIONS)
    np.testing.assert_allclose(out["value"].to_numpy().reshape(3, 8),
                               output_composite(trained) - output_composite(untrained), rtol=1e-12)


def test_weight_tables_are_the_stages_four_weight_only_tables():
    trained, untrained = tiny_net(2, seed=0), tiny_net(2, seed=1)
    tables = weight_tables(trained, untrained)
    assert list(tables) == ["compare", "head_matrices", "composites", "feature_circuits"]
    pd.testing.assert_frame_equal(tables["compare"], compare_circuits(trained, untrained))
    features = tables["feature_circuits"]
    assert list(pd.unique(features["model"])) == ["trained", "untrained"]
    assert "bias" in set(features["col"])


def test_summarize_gives_the_relative_difference_of_each_circuit_from_the_weights():
    trained, untrained = tiny_net(2, seed=0), tiny_net(2, seed=1)
    summary = summarize(compare_circuits(trained, untrained))
    rel = summary["rel_diff_trained_vs_untrained"]
    assert list(rel) == ["QK", "OV", "QK_features", "OV_actions", "embedding_ego", "embedding_others",
                         "output_composite"]
    assert all(list(rel[m]) == ["head0", "head1"] for m in ("QK", "OV", "QK_features", "OV_actions"))

    def weights(net, name):
        return dict(net.named_parameters())[name].detach().double().numpy()

    def relative(t, u):
        return round(float(np.linalg.norm(t - u) / np.linalg.norm(u)), 6)

    for h in range(2):
        rows = slice(h * 4, (h + 1) * 4)
        qk = [weights(n, "attention_layer.query_ego.weight")[rows].T
              @ weights(n, "attention_layer.key_all.weight")[rows] for n in (trained, untrained)]
        ov = [0.5 * weights(n, "attention_layer.attention_combine.weight")[:, rows]
              @ weights(n, "attention_layer.value_all.weight")[rows] for n in (trained, untrained)]
        assert rel["QK"][f"head{h}"] == relative(*qk)
        assert rel["OV"][f"head{h}"] == relative(*ov)
    others = [weights(n, "others_embedding.layers.1.weight") @ weights(n, "others_embedding.layers.0.weight")
              for n in (trained, untrained)]
    assert rel["embedding_others"] == relative(*others)
    output = [weights(n, "output_layer.predict.weight") @ weights(n, "output_layer.layers.0.weight")
              for n in (trained, untrained)]
    assert rel["output_composite"] == relative(*output)
    assert summarize(compare_circuits(trained, trained))["rel_diff_trained_vs_untrained"]["OV"] == \
        {"head0": 0.0, "head1": 0.0}


def test_summarize_keeps_only_circuits_and_composites_rounded_to_six_decimals():
    compare = pd.DataFrame({
        "matrix": ["QK", "QK", "embedding_ego", "attention_layer.key_all.weight", "OV_actions"],
        "head": [0, 1, "-", "-", 1],
        "rel_diff": [0.1234567891, 2.0, 0.5000004, 9.0, 1e-9],
    })
    assert summarize(compare) == {"rel_diff_trained_vs_untrained": {
        "QK": {"head0": 0.123457, "head1": 2.0}, "embedding_ego": 0.5, "OV_actions": {"head1": 0.0}}}
