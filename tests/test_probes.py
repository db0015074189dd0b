"""Linear probes with controls: a unit that equals a fact is read ≈ perfectly while the control
task stays at chance, a split by step leaks what a split by episode does not, metrics match
scikit-learn's, intervals resample whole episodes, and bad names fail naming themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics

from egolens.analysis.reading import probe_scores as ps
from egolens.analysis.reading import probes as pr
from egolens.hooks import run_with_cache
from tests.conftest import tiny_net

VX = 3
"""Column of vx in the observation."""


def vehicle_episodes(episodes: int, steps: int, entities: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random observations [N, E, 7] of `episodes` × `steps` steps, every row present, |vx| ≥ 0.2
    (normalised), episode [N] and vehicle ids [N, E] (row j shows vehicle j in every step)."""
    rng = np.random.default_rng(seed)
    n = episodes * steps
    obs = rng.uniform(-1, 1, (n, entities, 7)).astype(np.float32)
    obs[..., 0] = 1.0
    obs[..., VX] = np.sign(obs[..., VX]) * rng.uniform(0.2, 1.0, (n, entities))
    episode = np.repeat(np.arange(episodes), steps)
    vehicle_id = np.tile(np.arange(entities), (n, 1))
    return obs, episode, vehicle_id


def unit_is_vx_net() -> torch.nn.Module:
    """The tiny net with unit 0 of the others' embedding's first layer = relu(vx)."""
    net = tiny_net(seed=1)
    with torch.no_grad():
        layer = net.others_embedding.layers[0]
        layer.weight[0] = 0.0
        layer.weight[0, VX] = 1.0
        layer.bias[0] = 0.0
    return net


def test_a_unit_equal_to_the_fact_is_read_perfectly_and_its_control_task_is_at_chance():
    obs, episode, vehicle_id = vehicle_episodes(episodes=40, steps=8, entities=15, seed=0)
    net = unit_is_vx_net()
    site = "others_embedding.hook_post.0"
    _, cache = run_with_cache(net, torch.as_tensor(obs), [site])
    arrays = {"obs": obs, site: cache[site].numpy()}
    features = pr.site_features(arrays, site, "vehicle")
    step_index, row = pr.vehicle_rows(obs)
    np.testing.assert_allclose(features[:, 0], np.maximum(obs[step_index, row, VX], 0), rtol=1e-6)
    fact = (obs[step_index, row, VX] > 0).astype(float)                # "moves right": unit 0 > 0
    data = pr.ProbeData(features, fact, episode[step_index], vehicle_id[step_index, row])
    test = pr.held_out_episodes(episode, 0.3, seed=0)
    table = pr.probe_table({"site": data}, "binary", test, seed=0, resamples=200).set_index(["task", "metric"])
    assert table.loc[("probe", "accuracy"), "value"] > 0.99
    assert table.loc[("probe", "auc"), "value"] > 0.999
    assert abs(table.loc[("control", "balanced_accuracy"), "value"] - 0.5) < 0.05
    assert abs(table.loc[("control", "auc"), "value"] - 0.5) < 0.1
    assert table.loc[("selectivity", "balanced_accuracy"), "ci_low"] > 0.4


def autocorrelated_episodes(episodes: int, steps: int, units: int, seed: int) -> tuple[np.ndarray, ...]:
    """Features that barely change within an episode (an episode's random vector + small noise)
    and a label drawn per episode, unrelated to the features: only memorising episodes helps."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((episodes, units))
    label = rng.permutation(np.arange(episodes) % 2).astype(float)
    episode = np.repeat(np.arange(episodes), steps)
    features = centre[episode] + 0.05 * rng.standard_normal((len(episode), units))
    return features, label[episode], episode


def test_a_split_by_step_scores_higher_than_the_split_by_episode():
    features, label, episode = autocorrelated_episodes(episodes=60, steps=10, units=80, seed=3)
    rows = np.arange(len(episode))

    def held_out_accuracy(groups: np.ndarray) -> float:
        data = pr.ProbeData(features, label, groups, rows)
        _, held = pr.fit_held_out(data, "binary", pr.held_out_episodes(groups, 0.3, seed=0))
        return ps.accuracy(held.y, held.predicted)

    by_step = held_out_accuracy(rows)          # each step its own group: a split by step
    by_episode = held_out_accuracy(episode)
    assert by_step > 0.95
    assert by_episode < 0.7
    assert by_step - by_episode > 0.3


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    predicted = np.where(rng.uniform(size=200) < 0.6, y, rng.integers(0, 3, 200))
    assert ps.accuracy(y, predicted) == pytest.approx(metrics.accuracy_score(y, predicted))
    assert ps.balanced_accuracy(y, predicted) == pytest.approx(metrics.balanced_accuracy_score(y, predicted))
    binary = (y == 1).astype(int)
    score = np.round(rng.uniform(size=200) + 0.3 * binary, 1)           # rounded: ties
    assert ps.auc(binary, score) == pytest.approx(metrics.roc_auc_score(binary, score))
    value = rng.standard_normal(200)
    guess = value + 0.5 * rng.standard_normal(200)
    assert ps.r2(value, guess) == pytest.approx(metrics.r2_score(value, guess))
    probability = rng.dirichlet(np.ones(3), 200)
    assert pr.mean_log_loss(y, probability, np.arange(3)) == pytest.approx(metrics.log_loss(y, probability))
    assert np.isnan(ps.auc(np.ones(5), np.arange(5.0)))
    assert np.isnan(ps.r2(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_weighted_scores_count_a_row_as_often_as_its_weight(kind):
    rng = np.random.default_rng(9)
    classes = 3 if kind == "categorical" else 2
    y = rng.integers(0, classes, 60).astype(float) if kind != "continuous" else rng.standard_normal(60)
    predicted = np.where(rng.uniform(size=60) < 0.6, y, rng.integers(0, classes, 60)) if kind != "continuous" \
        else y + rng.standard_normal(60)
    probability = np.round(rng.uniform(size=60) * 0.7 + 0.3 * (y == 1), 1) if kind == "binary" else None
    weights = rng.integers(0, 3, (4, 60))
    weighted = ps.weighted_scores(kind, y, predicted, probability, weights)
    for d in range(4):
        index = np.repeat(np.arange(60), weights[d])
        repeated = ps.scores(kind, y[index], predicted[index], None if probability is None else probability[index])
        for metric, value in repeated.items():
            assert weighted[metric][d] == pytest.approx(value, rel=1e-9)


def test_intervals_resample_whole_episodes():
    # episode 0: 3 rows all right; episode 1: 1 row wrong. Step resampling would give 1/4, 2/4, ...
    held = pr.HeldOut(y=np.array([1, 1, 0, 1]), predicted=np.array([1, 1, 0, 0]), probability=None,
                      episode=np.array([0, 0, 0, 1]))
    draws = pr.episode_draws(np.array([0, 1]), resamples=300, seed=0)
    values = pr.resampled_scores("categorical", held, draws)["accuracy"]
    assert set(np.round(values, 6)) == {0.0, 0.75, 1.0}


def test_episode_split_is_shared_by_runs_of_the_same_episodes_and_never_straddles():
    trained = np.repeat(np.arange(20), 7)
    untrained = np.repeat(np.arange(20), 3)                            # other lengths, same episodes
    test = pr.held_out_episodes(trained, 0.25, seed=4)
    np.testing.assert_array_equal(test, pr.held_out_episodes(untrained, 0.25, seed=4))
    assert len(test) == 5
    assert not np.array_equal(test, pr.held_out_episodes(trained, 0.25, seed=5))
    with pytest.raises(ValueError, match="empty side"):
        pr.held_out_episodes(trained, 0.01, seed=0)


def test_control_labels_are_fixed_per_identity_and_drawn_from_the_marginal():
    rng = np.random.default_rng(1)
    identity = rng.integers(0, 400, 5000)
    target = (rng.uniform(size=5000) < 0.3).astype(float)
    labels = pr.control_labels(target, identity, seed=0)
    for i in np.unique(identity)[:50]:
        assert len(np.unique(labels[identity == i])) == 1
    per_identity = np.array([labels[identity == i][0] for i in np.unique(identity)])
    assert abs(per_identity.mean() - 0.3) < 0.06
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert not np.array_equal(labels, pr.control_labels(target, identity, seed=1))


def test_probe_direction_is_the_weight_of_the_raw_units():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((300, 5)) * np.array([1.0, 10.0, 0.1, 3.0, 1.0]) + 2.0
    episode = np.repeat(np.arange(30), 10)
    logit = features @ np.array([1.0, 0.1, 5.0, 0.0, 0.0]) + rng.standard_normal(300)
    label = (logit > np.median(logit)).astype(int)
    fit = pr.fit_probe(features, label, episode, "binary")
    np.testing.assert_allclose(fit.estimator.decision_function(features), features @ fit.direction + fit.intercept[0],
                               rtol=1e-8, atol=1e-8)
    value = features @ np.array([0.5, -0.2, 1.0, 0.0, 0.3]) + 0.01 * rng.standard_normal(300)
    ridge = pr.fit_probe(features, value, episode, "continuous")
    np.testing.assert_allclose(ridge.estimator.predict(features), features @ ridge.direction + ridge.intercept[0],
                               rtol=1e-8, atol=1e-8)
    assert ps.r2(value, ridge.estimator.predict(features)) > 0.99


def test_a_continuous_fact_beats_the_unrelated_input_with_a_paired_interval():
    rng = np.random.default_rng(5)
    episode = np.repeat(np.arange(30), 12)
    features = rng.standard_normal((360, 6))
    value = features[:, 2] * 2.0 + 0.1 * rng.standard_normal(360)
    noise = rng.standard_normal((360, 6))
    identity = np.tile(np.arange(12), 30)
    inputs = {"site": pr.ProbeData(features, value, episode, identity),
              "obs": pr.ProbeData(noise, value, episode, identity)}
    table = pr.probe_table(inputs, "continuous", pr.held_out_episodes(episode, 0.3, 0), seed=0, resamples=200)
    table = table.set_index(["input", "task"])
    assert table.loc[("site", "probe"), "value"] > 0.98
    assert table.loc[("obs", "probe"), "value"] < 0.1
    assert table.loc[("obs", "site_minus_input"), "ci_low"] > 0.8
    assert table.loc[("site", "probe"), "n_train"] + table.loc[("site", "probe"), "n_test"] == 360


def test_categorical_probe_and_nan_targets_are_dropped():
    rng = np.random.default_rng(6)
    episode = np.repeat(np.arange(24), 10)
    features = rng.standard_normal((240, 4))
    label = np.argmax(features[:, :3], axis=1).astype(float)
    label[::10] = np.nan                                               # e.g. the action past the episode's end
    data = pr.ProbeData(features, label, episode, np.tile(np.arange(10), 24))
    table = pr.probe_table({"site": data}, "categorical", pr.held_out_episodes(episode, 0.25, 0), seed=0,
                           resamples=50).set_index(["task", "metric"])
    assert set(table.index.get_level_values("metric")) == {"accuracy", "balanced_accuracy"}
    assert table.loc[("probe", "accuracy"), "value"] > 0.85
    assert table.loc[("probe", "accuracy"), "n_train"] + table.loc[("probe", "accuracy"), "n_test"] == 216


def test_a_target_with_one_class_is_reported_not_fitted():
    rng = np.random.default_rng(7)
    episode = np.repeat(np.arange(10), 5)
    fit_me = pr.ProbeData(rng.standard_normal((50, 3)), (rng.uniform(size=50) < 0.5).astype(float), episode,
                          np.arange(50))
    one_class = pr.ProbeData(rng.standard_normal((50, 3)), np.zeros(50), episode, np.arange(50))
    table = pr.probe_table({"site": fit_me, "untrained": one_class}, "binary", np.array([1, 4, 7]), seed=0,
                           resamples=20, **FAST).set_index(["input", "task", "metric"])
    assert table.loc[("untrained", "probe", "accuracy"), "note"] == \
        "a classification probe needs at least 2 classes in its training rows"
    assert np.isnan(table.loc[("untrained", "site_minus_input", "auc"), "value"])
    assert table.loc[("site", "probe", "accuracy"), "note"] == ""
    assert np.isfinite(table.loc[("site", "probe", "accuracy"), "value"])
    assert table.loc[("untrained", "probe", "accuracy"), "n_test"] == 15


FAST = {"folds": 3, "penalties": (0.1, 1.0)}
"""A small grid for tests about the table, not about the fit."""


def test_the_table_is_the_same_on_every_run_and_moves_with_the_seed():
    rng = np.random.default_rng(8)
    episode = np.repeat(np.arange(12), 6)
    features = rng.standard_normal((72, 4))
    data = pr.ProbeData(features, (features[:, 0] + rng.standard_normal(72) > 0).astype(float), episode,
                        np.tile(np.arange(6), 12))
    test = pr.held_out_episodes(episode, 0.25, seed=0)
    first = pr.probe_table({"site": data}, "binary", test, seed=0, resamples=50, **FAST)
    pd.testing.assert_frame_equal(first, pr.probe_table({"site": data}, "binary", test, seed=0, resamples=50, **FAST))
    other = pr.probe_table({"site": data}, "binary", test, seed=1, resamples=50, **FAST)
    assert not first[["ci_low", "ci_high"]].equals(other[["ci_low", "ci_high"]])
    # an input shared by several sites (the raw observation) can be scored once and reused
    raw = pr.ProbeData(rng.standard_normal((72, 3)), data.target, episode, data.identity)
    draws = pr.episode_draws(test, 50, seed=0)
    shared = pr.input_scores(raw, "binary", test, draws, seed=0, **FAST)
    site = pr.input_scores(data, "binary", test, draws, seed=0, **FAST)
    reused = pr.score_table({"site": site, "obs": shared}, "binary")
    pd.testing.assert_frame_equal(reused, pr.probe_table({"site": data, "obs": raw}, "binary", test, seed=0,
                                                         resamples=50, **FAST))


def test_site_features_follow_the_vehicle_rows():
    obs, _, _ = vehicle_episodes(episodes=2, steps=3, entities=5, seed=1)
    obs[1, 2] = 0.0                                                    # an absent vehicle
    net = tiny_net()
    _, cache = run_with_cache(net, torch.as_tensor(obs))
    arrays = {"obs": obs, **{name: value.numpy() for name, value in cache.items()}}
    step_index, row = pr.vehicle_rows(obs)
    assert len(step_index) == 6 * 4 - 1
    i = int(np.flatnonzero((step_index == 1) & (row == 3))[0])
    np.testing.assert_array_equal(pr.site_features(arrays, "others_embedding.hook_post.1", "vehicle")[i],
                                  arrays["others_embedding.hook_post.1"][1, 2])
    np.testing.assert_array_equal(pr.site_features(arrays, "attention_layer.hook_k", "vehicle")[i],
                                  arrays["attention_layer.hook_k"][1, :, 3].reshape(-1))
    np.testing.assert_array_equal(pr.site_features(arrays, "obs", "vehicle")[i], obs[1, 3])
    assert pr.site_features(arrays, "obs", "step").shape == (6, 5 * 7)
    assert pr.site_features(arrays, "attention_layer.hook_z", "step").shape == (6, 8)
    assert pr.site_features(arrays, "ego_embedding.hook_post.0", "step").shape == (6, 8)


def test_bad_site_and_kind_names_fail_naming_them():
    arrays = {"obs": np.zeros((2, 3, 7))}
    with pytest.raises(KeyError, match="no probe site named 'attention_layer.hook_nope'"):
        pr.site_features(arrays, "attention_layer.hook_nope", "step")
    with pytest.raises(KeyError, match="'output_layer.hook_post.0' has no recorded activation"):
        pr.site_features(arrays, "output_layer.hook_post.0", "step")
    with pytest.raises(ValueError, match="one row per vehicle, the target one per step"):
        pr.site_features(arrays, "others_embedding.hook_post.0", "step")
    with pytest.raises(ValueError, match="unknown target kind 'ordinal'"):
        pr.fit_probe(np.zeros((4, 2)), np.zeros(4), np.arange(4), "ordinal")


def test_the_constant_baseline_is_the_training_majority_or_mean_by_hand():
    episode = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    classes = np.array([2.0, 2.0, 1.0, 2.0, 1.0, np.nan, 1.0, 0.0])   # training episodes 0-2: 2, 2, 1, 2, 1
    data = pr.ProbeData(np.zeros((8, 1)), classes, episode, episode)
    held = pr.baseline_held_out(data, "categorical", np.array([3]))
    np.testing.assert_array_equal(held.predicted, [2, 2])
    np.testing.assert_array_equal(held.y, [1, 0])
    assert held.probability is None
    binary = pr.baseline_held_out(pr.ProbeData(np.zeros((8, 1)), (classes == 1).astype(float), episode, episode),
                                  "binary", np.array([3]))
    np.testing.assert_array_equal(binary.predicted, [0, 0])             # 2 of 6 training rows are class 1
    np.testing.assert_allclose(binary.probability, [2 / 6, 2 / 6])
    values = np.array([1.0, 3.0, 2.0, 6.0, 0.0, 0.0, 5.0, 7.0])
    mean = pr.baseline_held_out(pr.ProbeData(np.zeros((8, 1)), values, episode, episode), "continuous",
                                np.array([3]))
    np.testing.assert_allclose(mean.predicted, [2.0, 2.0])              # mean of 1, 3, 2, 6, 0, 0


def test_the_table_scores_the_probe_against_the_constant_baseline_on_the_same_draws():
    obs, episode, vehicle_id = vehicle_episodes(episodes=30, steps=6, entities=5, seed=2)
    step_index, row = pr.vehicle_rows(obs)
    features = obs[step_index, row].astype(np.float64)
    fact = (features[:, VX] > 0.5).astype(float)                       # a minority class, linear in vx
    data = pr.ProbeData(features, fact, episode[step_index], vehicle_id[step_index, row])
    test = pr.held_out_episodes(episode, 0.3, seed=0)
    table = pr.probe_table({"site": data}, "binary", test, seed=0, resamples=200).set_index(["task", "metric"])
    y = fact[np.isin(episode[step_index], test)]
    majority = float(np.mean(fact[~np.isin(episode[step_index], test)]) > 0.5)
    assert table.loc[("baseline", "accuracy"), "value"] == pytest.approx(np.mean(y == majority))
    assert table.loc[("baseline", "auc"), "value"] == pytest.approx(0.5)
    assert table.loc[("baseline", "balanced_accuracy"), "value"] == pytest.approx(0.5)
    for metric in ("accuracy", "auc"):
        assert table.loc[("probe_minus_baseline", metric), "value"] == pytest.approx(
            table.loc[("probe", metric), "value"] - table.loc[("baseline", metric), "value"])
    assert table.loc[("probe_minus_baseline", "auc"), "ci_low"] > 0.3


def test_one_held_out_episode_gives_scores_but_no_interval():
    # a tiny run holds out one episode: every draw is that episode, so a zero-width interval would
    # put any nonzero difference "above 0"; the scores stay, the intervals are NaN
    rng = np.random.default_rng(8)
    episode = np.repeat(np.arange(4), 6)
    features = rng.standard_normal((24, 4))
    data = pr.ProbeData(features, (features[:, 0] > 0).astype(float), episode, np.tile(np.arange(6), 4))
    table = pr.probe_table({"site": data}, "binary", np.array([3]), seed=0, resamples=50, **FAST)
    assert table["value"].notna().any()
    assert table["ci_low"].isna().all() and table["ci_high"].isna().all()
