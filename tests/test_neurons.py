"""Neuron statistics, fact correlations, the semantic dictionary and feature visualisation on
hand-made activations and tiny hand-set networks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.patches import Rectangle

from egolens.analysis.reading.feature_visualisation import (
    Objective,
    advantage,
    advantage_objective,
    attention_objective,
    neuron_objective,
    neurons_to_visualise,
    optimise_observation,
    scene_pair,
    scene_picture,
    typical_step,
)
from egolens.analysis.reading.lens import lens_summary, logit_lens
from egolens.analysis.reading.neuron_dictionary import FIRES_FOR, semantic_dictionary, significant, top_activations
from egolens.analysis.reading.neuron_facts import step_facts_frame, vehicle_facts_frame, vehicle_rows
from egolens.analysis.reading.neuron_stats import (
    activation_stats,
    activations_over_time,
    neuron_fact_correlations,
    summarize,
)
from egolens.artifacts import json_text
from egolens.config import EnvConfig
from egolens.hooks import run_with_cache
from egolens.model import EgoAttentionNetwork
from egolens.scene import scene_facts
from tests.conftest import random_obs, tiny_net

CFG = EnvConfig()


# ------------------------------------------------------------------------------- statistics


def test_activation_stats_reports_means_spread_sparsity_and_the_dead_neuron():
    acts = np.array([[0.0, 1.0, 2.0, 0.0],
                     [0.0, 0.0, 4.0, 3.0],
                     [0.0, 3.0, 0.0, 0.0],
                     [0.0, 0.0, 6.0, 1.0]])
    stats = activation_stats(acts, "output_layer.hook_post.0")
    assert stats["layer"].eq("output_layer.hook_post.0").all()
    assert stats["neuron"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(stats["mean"], [0, 1, 3, 1])
    np.testing.assert_allclose(stats["std"], [0, math.sqrt(1.5), math.sqrt(5), math.sqrt(1.5)])
    np.testing.assert_allclose(stats["frac_active"], [0, 0.5, 0.75, 0.5])
    assert stats["dead"].tolist() == [True, False, False, False]
    np.testing.assert_allclose(stats["max"], [0, 3, 6, 3])


def test_vehicle_rows_drop_absent_vehicles_in_vehicles_table_order():
    obs = np.zeros((2, 4, 7))
    obs[:, 0, 0] = 1
    obs[0, [2, 3], 0] = 1           # step 0: rows 2, 3 present
    obs[1, [1], 0] = 1              # step 1: row 1 present
    # acts[n, j - 1, u] encodes (step n, row j, unit u)
    acts = np.array([[[100 * n + 10 * j + u for u in range(2)] for j in range(1, 4)] for n in range(2)], dtype=float)
    flat, step_index, row = vehicle_rows(acts, obs)
    assert step_index.tolist() == [0, 0, 1]
    assert row.tolist() == [2, 3, 1]
    np.testing.assert_array_equal(flat, [[20, 21], [30, 31], [110, 111]])


def test_activations_over_time_keeps_the_most_variable_neurons_of_the_episode():
    episode = np.array([0, 0, 1, 1, 1])
    step = np.array([0, 1, 2, 0, 1])               # episode 1 recorded out of step order
    acts = np.array([[9.0, -9.0, 0.0, 5.0],        # episode 0: neuron 1 would win here
                     [0.0, 9.0, 0.0, 5.0],
                     [3.0, 0.0, 1.0, 7.0],         # episode 1, step 2
                     [1.0, 0.0, 1.0, 1.0],         # step 0
                     [2.0, 0.0, 1.0, 4.0]])        # step 1
    table = activations_over_time(acts, episode, step, which_episode=1, top_k=2)
    assert set(table["neuron"]) == {0, 3}          # std over steps: 0.82, 0, 0, 2.45
    neuron3 = table[table["neuron"] == 3]
    assert neuron3["step"].tolist() == [0, 1, 2]
    assert neuron3["activation"].tolist() == [1.0, 4.0, 7.0]
    assert table[table["neuron"] == 0]["activation"].tolist() == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------------------- facts


def hand_vehicle_facts(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ttc = rng.uniform(0.5, 15, n)
    ttc[rng.uniform(size=n) < 0.3] = np.inf
    return pd.DataFrame({
        "distance": rng.uniform(5, 80, n), "ttc": ttc, "closing_speed": rng.normal(0, 3, n),
        "bearing_deg": rng.uniform(-180, 180, n), "crossing": rng.uniform(size=n) < 0.3,
        "ahead": rng.uniform(size=n) < 0.5, "action": rng.choice(["SLOWER", "IDLE", "FASTER"], n).astype(object),
    })


def test_correlations_recover_planted_monotone_neurons_and_not_an_unrelated_one():
    facts = hand_vehicle_facts(2000)
    noise = np.random.default_rng(1).normal(size=2000)
    acts = np.stack([-facts["distance"] ** 3,              # monotone decreasing in distance
                     noise,                                # unrelated
                     -np.minimum(facts["ttc"], 20.0),      # the capped ttc, inf -> 20 s
                     facts["closing_speed"] + 0.5 * noise], axis=1)
    corr = neuron_fact_correlations(acts, facts).set_index(["neuron", "fact"])["spearman"]
    assert corr[(0, "distance")] == pytest.approx(-1.0)
    assert corr[(2, "ttc")] == pytest.approx(-1.0)         # infinite ttc ranks above every finite one
    assert abs(corr[(1, "distance")]) < 0.08 and abs(corr[(1, "crossing")]) < 0.08
    # against a reference Spearman: Pearson correlation of argsort-of-argsort ranks (no ties here)
    ranks = [np.argsort(np.argsort(v)) for v in (acts[:, 3], facts["closing_speed"].to_numpy())]
    assert corr[(3, "closing_speed")] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-12)
    assert "action" not in set(corr.index.get_level_values("fact"))


def test_correlations_leave_out_missing_facts_and_give_nan_for_a_constant_neuron():
    facts = pd.DataFrame({"nearest_distance": [1.0, np.nan, 3.0, 4.0, 2.0]})
    acts = np.array([[1.0, 0.0], [100.0, 0.0], [3.0, 0.0], [4.0, 0.0], [2.0, 0.0]])
    corr = neuron_fact_correlations(acts, facts)
    assert corr["n"].tolist() == [4, 4]
    assert corr["spearman"].iloc[0] == pytest.approx(1.0)
    assert np.isnan(corr["spearman"].iloc[1])


def observation(rows: list[tuple[float, float, float, float, float]], entities: int = 5) -> np.ndarray:
    """rows of (x, y, vx, vy, heading_rad) in m, m/s -> a normalised obs [E, 7]."""
    obs = np.zeros((entities, 7))
    for i, (x, y, vx, vy, h) in enumerate(rows):
        obs[i] = [1.0, x / 100, y / 100, vx / 20, vy / 20, np.cos(h), np.sin(h)]
    return obs


def test_step_facts_give_ego_speed_action_q_nearest_distance_and_min_ttc():
    obs = np.stack([
        observation([(0, 0, 3, 4, 0), (20, 0, -5, 0, np.pi), (0, 40, 3, 4, 0)]),  # head-on at 20 m, 10 m/s
        observation([(0, 0, 6, 0, 0)]),                                          # alone
    ])
    facts = scene_facts(obs, CFG)
    q = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    table = step_facts_frame(obs, facts, np.array([2, 0]), q, CFG)
    np.testing.assert_allclose(table["ego_speed"], [5, 6])
    assert table["action"].tolist() == ["FASTER", "SLOWER"]
    assert table["action_faster"].tolist() == [True, False] and table["action_slower"].tolist() == [False, True]
    np.testing.assert_allclose(table[["q_slower", "q_idle", "q_faster"]], q)
    assert table["nearest_distance"].iloc[0] == pytest.approx(20) and np.isnan(table["nearest_distance"].iloc[1])
    assert table["min_ttc"].iloc[0] == pytest.approx(facts["ttc"][0, 1]) and np.isinf(table["min_ttc"].iloc[1])
    vehicles = vehicle_facts_frame(obs, facts, np.array([2, 0]))
    assert vehicles["row"].tolist() == [1, 2] and vehicles["action"].tolist() == ["FASTER", "FASTER"]
    np.testing.assert_allclose(vehicles["distance"], [20, 40])


# ------------------------------------------------------------------------------- dictionary


def test_dictionary_of_a_minus_distance_neuron_lists_the_nearest_vehicles_and_names_distance():
    facts = hand_vehicle_facts(300, seed=2)
    rng = np.random.default_rng(3)
    acts = np.stack([-facts["distance"].to_numpy() + 100,                       # planted: −distance
                     rng.normal(size=300),                                     # unrelated
                     facts["crossing"].to_numpy() * (1 + rng.uniform(size=300)),  # fires on crossing vehicles
                     np.zeros(300)], axis=1)                                   # dead
    nearest = np.argsort(facts["distance"].to_numpy())[:10]
    top = top_activations(acts, facts, top_k=10)
    first = top[top["neuron"] == 0]
    assert first["index"].tolist() == nearest.tolist()
    np.testing.assert_allclose(first["distance"], facts["distance"].to_numpy()[nearest])

    entries = semantic_dictionary(acts, facts, top_k=10).set_index("neuron")
    assert entries.loc[0, "median_distance"] == pytest.approx(np.median(facts["distance"].to_numpy()[nearest]))
    described = entries.loc[0, "description"]
    assert described.startswith("fires for distance ≤")
    assert f"{np.quantile(facts['distance'].to_numpy()[nearest], 0.8, method='higher'):.1f} m" in described
    assert "crossing the ego's path (10/10 top" in entries.loc[2, "description"]
    assert entries.loc[2, "frac_crossing"] == 1.0
    assert entries.loc[3, "description"] == "never active"
    assert "distance" not in entries.loc[1, "description"]
    top_actions = facts["action"].to_numpy()[nearest]
    values, counts = np.unique(top_actions, return_counts=True)
    assert entries.loc[0, "dominant_action_frac"] == pytest.approx(counts.max() / 10)
    assert entries.loc[0, "dominant_action"] in values[counts == counts.max()]


# ------------------------------------------------------------------------------- feature visualisation


PRESENCE = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)


def x_neuron_net() -> EgoAttentionNetwork:
    """Unit 0 of the others' embedding output = 2·x + 3 (x of that vehicle, in [−1, 1]): linear with
    a positive weight, so its maximum is at the x = +1 bound."""
    net = tiny_net()
    with torch.no_grad():
        first, second = net.others_embedding.layers
        first.weight[0] = 0.0
        first.weight[0, 1] = 2.0
        first.bias[0] = 3.0
        second.weight[0] = 0.0
        second.weight[0, 0] = 1.0
        second.bias[0] = 0.0
    return net


def test_optimised_neuron_drives_its_vehicle_to_the_x_bound_with_presence_kept():
    net = x_neuron_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    objective = neuron_objective("others_embedding.hook_post.1", (0, 0))     # row 1, unit 0
    obs, values = optimise_observation(net, objective, PRESENCE, n_restarts=3, steps=150, lr=0.1, seed=0)
    assert obs.shape == (3, 15, 7)
    assert (obs[:, :, 1][:, 1] > 0.99).all()
    np.testing.assert_allclose(values, 2 * obs[:, 1, 1] + 3, rtol=1e-6)
    np.testing.assert_array_equal(obs[:, :, 0], np.broadcast_to(PRESENCE, (3, 15)))
    assert (obs[:, PRESENCE == 0] == 0).all()
    np.testing.assert_allclose(obs[..., 5] ** 2 + obs[..., 6] ** 2, np.broadcast_to(PRESENCE, (3, 15)), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_optimisation_is_deterministic_for_a_seed_and_differs_across_seeds():
    net = x_neuron_net()
    objective = neuron_objective("others_embedding.hook_post.1", (0, 0))
    a = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=20, seed=7)
    b = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=20, seed=7)
    c = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=20, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_diversity_keeps_restarts_apart_where_they_would_converge_to_one_optimum():
    target = torch.tensor([0.3, -0.2, 0.1, 0.4, math.cos(0.5), math.sin(0.5)])
    present = torch.as_tensor(PRESENCE)[None, :, None]
    # a unique interior optimum: every present row at `target`
    objective = Objective(lambda q, cache: -(((cache["obs"][..., 1:] - target) ** 2) * present).sum(dim=(1, 2)))
    net = tiny_net()

    def spread(diversity: float) -> float:
        obs, _ = optimise_observation(net, objective, PRESENCE, n_restarts=3, steps=300, lr=0.05,
                                      diversity=diversity, seed=0)
        return float(np.abs(obs - obs.mean(axis=0)).max())

    assert spread(0.0) < 1e-3
    assert spread(2.0) > 0.05


def test_prior_pulls_coordinates_the_objective_ignores_to_the_mean_recorded_state():
    net = x_neuron_net()
    prior_obs = np.zeros((2, 15, 7))
    prior_obs[:, 0] = observation([(0, 0, 4, 0, 0)])[0]            # the ego row
    prior_obs[0, 4] = [1, 0.5, 0.2, 0, 0, 1, 0]                     # others (rows do not matter)
    prior_obs[1, 7] = [1, 0.1, 0.6, 0, 0, 0, 1]
    objective = neuron_objective("others_embedding.hook_post.1", (0, 0))
    obs, _ = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=300, lr=0.05,
                                  prior_obs=prior_obs, prior_weight=1.0, seed=0)
    # row 2 and row 5 only feel the prior: the mean other vehicle (x 0.3, y 0.4, speed 0)
    np.testing.assert_allclose(obs[:, [2, 5], 1:5], np.broadcast_to([0.3, 0.4, 0, 0], (2, 2, 4)), atol=2e-2)
    np.testing.assert_allclose(obs[:, 0, 1:5], np.broadcast_to([0, 0, 0.2, 0], (2, 4)), atol=2e-2)
    assert (obs[:, 1, 1] > 0.9).all()                                # the objective still wins on row 1's x


def test_advantage_and_attention_objectives_rise_and_equal_the_nets_own_outputs():
    net = tiny_net(seed=3)
    mask = torch.as_tensor(PRESENCE == 0)[None].expand(2, 15)
    for objective, read in (
        (advantage_objective(0), lambda obs: (lambda q: q[:, 0] - q.mean(dim=1))(net(obs, mask))),
        (attention_objective(1, 2), lambda obs: net.get_attention_matrix(obs, mask)[:, 1, 0, 2]),
    ):
        _, start = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=0, seed=1)
        obs, values = optimise_observation(net, objective, PRESENCE, n_restarts=2, steps=60, lr=0.1, seed=1)
        with torch.no_grad():
            np.testing.assert_allclose(values, read(torch.as_tensor(obs)).numpy(), rtol=1e-5, atol=1e-6)
        assert values.mean() > start.mean()


def test_scene_picture_draws_each_present_vehicle_at_its_position_and_heading():
    obs = observation([(0, 0, 5, 0, 0), (20, 10, 0, 5, np.pi / 2), (-30, 0, 0, 0, np.pi)], entities=5)
    fig = scene_picture(obs, CFG.features_range, title="hand scene")
    ax = fig.axes[0]
    cars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(cars) == 3
    np.testing.assert_allclose([c.get_center() for c in cars], [[0, 0], [20, 10], [-30, 0]], atol=1e-9)
    np.testing.assert_allclose([c.get_angle() for c in cars], [0, 90, 180], atol=1e-9)
    assert cars[0].get_label() == "ego" and cars[0].get_facecolor() != cars[1].get_facecolor()
    assert ax.get_ylim()[0] > ax.get_ylim()[1]                 # y points down, as on screen
    assert ax.get_title() == "hand scene"


def test_scene_pair_draws_both_scenes_on_shared_limits_with_a_legend():
    near = observation([(0, 0, 5, 0, 0), (10, 0, 0, 0, 0)], entities=5)
    far = observation([(0, 0, 0, 5, np.pi / 2), (-60, 40, 0, 0, np.pi)], entities=5)
    fig = scene_pair(near, far, CFG.features_range, "optimised", "recorded", "a neuron")
    left, right = fig.axes
    assert [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in (left, right)] == [2, 2]
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    assert left.get_xlim()[0] <= -60 - 2.5 and right.get_xlim()[1] >= 10 + 2.5     # both scenes fit
    assert left.get_ylim()[0] > left.get_ylim()[1]                                  # y still down the screen
    assert np.ptp(left.get_xlim()) == pytest.approx(np.ptp(left.get_ylim()))            # square
    assert left.get_ylim()[0] >= 40 + 2.5 and left.get_ylim()[1] <= 0 - 2.5
    assert (left.get_title(), right.get_title()) == ("optimised", "recorded")
    assert fig.get_suptitle() == "a neuron" and len(fig.legends) == 1
    alone = scene_picture(near, CFG.features_range, "alone")
    np.testing.assert_allclose([c.get_center() for c in left.patches if isinstance(c, Rectangle)],
                               [c.get_center() for c in alone.axes[0].patches if isinstance(c, Rectangle)])


# ------------------------------------------------------------------------------- choosing what to show


def test_significant_marks_descriptions_with_a_kept_statement():
    facts = hand_vehicle_facts(300, seed=2)
    acts = np.stack([100 - facts["distance"].to_numpy(), np.zeros(300)], axis=1)
    entries = semantic_dictionary(acts, facts, top_k=10)
    assert significant(entries["description"]).tolist() == [True, False]
    assert significant([FIRES_FOR + "x", "never active", "no scene fact distinguishes its top rows", None]).tolist() \
        == [True, False, False, False]


def test_typical_step_has_the_median_number_of_present_vehicles():
    obs = np.zeros((5, 6, 7))
    obs[:, 0, 0] = 1
    for n, count in enumerate([5, 1, 3, 2, 3]):          # present others per step; median 3 (steps 2 and 4)
        obs[n, 1:1 + count, 0] = 1
    assert typical_step(obs) == 2
    assert typical_step(obs[:4]) == 3                     # counts 5, 1, 3, 2: lower median 2


def test_advantage_matches_the_advantage_objective():
    q = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(advantage(q), [[-2, -1, 3], [-1, -1, 2]])
    objective = advantage_objective(2)
    np.testing.assert_allclose(objective(torch.as_tensor(q), {}).numpy(), advantage(q)[:, 2])


def test_neurons_to_visualise_alternate_most_active_and_most_correlated_without_dead_or_repeats():
    acts = np.array([[5.0, 0.0, 1.0, 0.5, 0.2],
                     [4.0, 0.0, 2.0, 0.4, 0.1],
                     [6.0, 0.0, 3.0, 0.6, 0.3]])            # neuron 1 never fires
    correlations = pd.DataFrame({
        "neuron": [0, 1, 2, 3, 4] * 2,
        "fact": ["speed"] * 5 + ["gap"] * 5,
        "spearman": [0.1, 1.0, 0.2, np.nan, -0.9,           # dead neuron 1 correlates best: skipped
                     0.3, np.nan, -0.95, 0.0, 0.5],
    })
    chosen = neurons_to_visualise(acts, correlations, 4)
    assert chosen["neuron"].tolist() == [0, 2, 3, 4]       # active 0; corr 2 (0.95); active 3 (2 taken); corr 4
    assert chosen["reason"].tolist() == ["most active", "most correlated", "most active", "most correlated"]
    assert chosen["fact"].tolist() == ["gap", "gap", "gap", "speed"]
    np.testing.assert_allclose(chosen["spearman"], [0.3, -0.95, 0.0, -0.9])
    np.testing.assert_allclose(chosen["mean_activation"], acts[:, [0, 2, 3, 4]].mean(axis=0))
    assert neurons_to_visualise(acts, correlations, 10)["neuron"].tolist() == [0, 2, 3, 4]
    assert neurons_to_visualise(acts, correlations.iloc[:0], 2)["neuron"].tolist() == [0, 2]



# ------------------------------------------------------------------------------- summary


def summary_tables(net: EgoAttentionNetwork, obs: torch.Tensor) -> dict[str, pd.DataFrame]:
    """The four tables `summarize` reads, for two models: hand-made activations, descriptions and
    tuned-lens rows, and the logit lens of `net` on obs (both models)."""
    acts = {"trained": np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
            "untrained": np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])}
    stats = pd.concat([activation_stats(a, layer).assign(model=model) for model, a in acts.items()
                       for layer in ("output_layer.hook_post.0", "ego_embedding.hook_post.1")], ignore_index=True)
    descriptions = {"trained": [FIRES_FOR + "distance ≤ 4 m", "never active", FIRES_FOR + "ahead"],
                    "untrained": ["no scene fact distinguishes its top rows", FIRES_FOR + "x", "never active"]}
    dictionary = pd.concat([pd.DataFrame({"model": model, "layer": layer, "neuron": range(3), "description": d,
                                          "significant": significant(d)})
                            for model, d in descriptions.items()
                            for layer in ("output_layer.hook_post.0", "ego_embedding.hook_post.1")], ignore_index=True)
    lens = pd.concat([lens_summary(logit_lens(net, obs)).assign(model=model) for model in acts], ignore_index=True)
    tuned = pd.DataFrame({
        "model": ["trained"] * 4 + ["untrained"] * 2,
        "site": ["ego", "ego", "added", "full", "ego", "full"],
        "k": pd.array([None, None, 1, None, None, None], dtype="Int64"),
        "split": ["train", "held_out", "held_out", "held_out", "held_out", "held_out"],
        "agreement": [0.9, 0.61234567, 0.3, 1.0, 0.25, 0.5],
    })
    return {"stats": stats, "dictionary": dictionary, "lens_summary": lens, "tuned_lens": tuned}


def test_summarize_gives_dead_fraction_sparsity_described_neurons_and_lens_agreement_per_model():
    net, obs = tiny_net(heads=2), random_obs(40, seed=11)
    summary = summarize(summary_tables(net, obs))
    # the lens agreements, independently: U(½e) and U(h_in) against the final action
    q, cache = run_with_cache(net, obs, ["ego_embedding.hook_post.1", "attention_layer.hook_resid"])
    with torch.no_grad():
        ego = (net.output_layer(0.5 * cache["ego_embedding.hook_post.1"][:, 0]).argmax(dim=1) == q.argmax(dim=1))
    ego_agreement = float(f"{ego.double().mean().item():.6g}")
    assert list(summary) == ["trained", "untrained"]
    trained, untrained = summary["trained"], summary["untrained"]
    assert trained["layers"] == {
        "output_layer_hook_post_0": {"dead_fraction": 0.333333, "mean_sparsity": 0.666667, "described_neurons": 2},
        "ego_embedding_hook_post_1": {"dead_fraction": 0.333333, "mean_sparsity": 0.666667, "described_neurons": 2}}
    # untrained: neuron 0 always on, neuron 1 on 3 of 4 rows, neuron 2 dead -> mean active (1 + .75 + 0) / 3
    assert untrained["layers"]["output_layer_hook_post_0"] == {"dead_fraction": 0.333333, "mean_sparsity": 0.416667,
                                                               "described_neurons": 1}
    assert (trained["described_neurons"], untrained["described_neurons"]) == (4, 2)
    assert list(trained["logit_lens_agreement"]) == ["ego", "head0", "head1", "full"]       # sites without k
    assert trained["logit_lens_agreement"]["ego"] == ego_agreement
    assert trained["logit_lens_agreement"]["full"] == 1.0
    assert trained["tuned_lens_held_out_agreement"] == {"ego": 0.612346, "full": 1.0}
    assert untrained["tuned_lens_held_out_agreement"] == {"ego": 0.25, "full": 0.5}


def test_summarize_writes_a_nan_as_missing_under_the_number_policy():
    tables = summary_tables(tiny_net(heads=2), random_obs(6, seed=12))
    tables["tuned_lens"].loc[1, "agreement"] = np.nan
    summary = summarize(tables)
    assert summary["trained"]["tuned_lens_held_out_agreement"]["ego"] is None
    assert summary["trained"]["tuned_lens_held_out_agreement"]["full"] == 1.0
    assert '"ego": null' in json_text(summary)


def test_summarize_nests_the_lens_controls_per_model_and_lens():
    tables = summary_tables(tiny_net(heads=2), random_obs(6, seed=12))
    quantities = ["majority_rate", "ego_minus_majority", "full_minus_ego", "full_minus_majority"]
    tables["lens_controls"] = pd.DataFrame({
        "model": ["trained"] * 4 + ["untrained"] * 4, "lens": ["tuned"] * 8, "quantity": quantities * 2,
        "value": [0.5, 0.25, 0.125, 0.375, 0.75, 0.0, 0.0, 0.0], "ci_low": [0.25, 0.1, -0.1, 0.2, 0.5, 0, 0, 0],
        "ci_high": [0.75, 0.4, 0.3, 0.5, 1.0, 0, 0, 0], "n_steps": 8, "n_episodes": 2})
    summary = summarize(tables)
    assert summary["trained"]["lens_controls"] == {"tuned": {
        "n_steps": 8, "n_episodes": 2, "majority_rate": 0.5,
        "ego_minus_majority": {"diff": 0.25, "ci_low": 0.1, "ci_high": 0.4},
        "full_minus_ego": {"diff": 0.125, "ci_low": -0.1, "ci_high": 0.3},
        "full_minus_majority": {"diff": 0.375, "ci_low": 0.2, "ci_high": 0.5}}}
    assert summary["untrained"]["lens_controls"]["tuned"]["majority_rate"] == 0.75
